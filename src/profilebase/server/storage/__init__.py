"""Storage backends behind one ``Store`` protocol; ``open_store`` picks one from a URL."""

from __future__ import annotations

import urllib.parse

from profilebase.errors import ConfigError
from profilebase.server.settings import Settings
from profilebase.server.storage.base import Store

__all__ = ["Store", "open_settings_store", "open_store", "redact", "sqlite_path"]


def redact(url: str) -> str:
    """The URL with its password, if any, replaced by ``***``: for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return url
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


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


def open_store(
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    postgres_pool_size: int = 10,
    database_timeout: float = 5.0,
) -> Store:
    """Open the store a database URL names. This is the one place that knows the backends.

    ``database_timeout`` bounds how long an operation waits for the database (SQLite's
    busy timeout; PostgreSQL's pool and connection timeouts) before it raises
    ``DatabaseUnavailable``.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from profilebase.server.storage.sqlite import SQLiteStore

        return SQLiteStore(
            sqlite_path(url), synchronous=sqlite_synchronous, timeout=database_timeout
        )
    if scheme in {"postgresql", "postgres"}:
        try:
            from profilebase.server.storage.postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name not in {"psycopg", "psycopg_pool"}:
                raise
            raise ConfigError(
                f"The database URL names PostgreSQL but {exc.name} is not installed: "
                "pip install 'profilebase[postgres]'."
            ) from None

        return PostgresStore(url, pool_size=postgres_pool_size, timeout=database_timeout)
    raise ConfigError(
        f"Unsupported database URL {url!r}: use sqlite:///path.db or postgresql://user@host/db."
    )


def open_settings_store(settings: Settings) -> Store:
    """Open ``settings.database`` with the backend options the settings give."""
    return open_store(
        settings.database,
        sqlite_synchronous=settings.sqlite_synchronous,
        postgres_pool_size=settings.postgres_pool_size,
        database_timeout=settings.database_timeout,
    )
