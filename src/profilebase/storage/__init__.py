"""Storage backends behind one ``Store`` protocol; ``open_store`` picks one from a URL."""

from __future__ import annotations

import urllib.parse

from profilebase.errors import ConfigError
from profilebase.storage.base import Store

__all__ = ["Store", "open_store", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(
            f"Invalid SQLite URL {url!r}: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db."
        )
    path = urllib.parse.unquote(rest[1:])
    return path or ":memory:"


def open_store(url: str, *, sqlite_synchronous: str = "NORMAL") -> Store:
    """Open the store a database URL names. This is the one place that knows the backends."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from profilebase.storage.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), synchronous=sqlite_synchronous)
    if scheme in {"postgresql", "postgres"}:
        from profilebase.storage.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(
        f"Unsupported database URL {url!r}: use sqlite:///path.db or postgresql://user@host/db."
    )
