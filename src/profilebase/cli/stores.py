"""Settings and the migrated store that the server, admin and direct data commands open.

Every server import happens inside these functions, after ``require_server``: a command
that needs them where only the SDK is installed says what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from profilebase.cli.failures import Refused, Unavailable, explain, failure, require_server
from profilebase.errors import ProfilebaseError, StorageError

if TYPE_CHECKING:
    from profilebase.server.settings import Settings
    from profilebase.server.storage import Store


def load_settings(**overrides: Any) -> Settings:
    """The server's settings from the environment and the flags given; one sentence if bad."""
    require_server()
    from profilebase.server.settings import Settings

    try:
        return Settings.from_env(**overrides)
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None


@contextmanager
def opened(database: str | None) -> Iterator[tuple[Settings, Store]]:
    """Settings and the migrated store for a command; errors become one clear line."""
    settings = load_settings(database=database)
    from profilebase.server.storage import open_store

    try:
        store = open_store(settings.database, sqlite_synchronous=settings.sqlite_synchronous)
        try:
            store.migrate()
            yield settings, store
        finally:
            store.close()
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None


@contextmanager
def direct_store(database: str) -> Iterator[tuple[Settings, Store]]:
    """Settings and the migrated store of a direct run; a failure is one sentence, exit 3
    (a bad URL, an unknown client) or 5 (the database is unreachable or failed)."""
    require_server()
    from profilebase.server.settings import Settings
    from profilebase.server.storage import open_store

    try:
        settings = Settings.from_env(database=database)
        store = open_store(database, sqlite_synchronous=settings.sqlite_synchronous)
    except ProfilebaseError as exc:
        raise Refused(exc.message) from None
    try:
        store.migrate()
        yield settings, store
    except StorageError as exc:
        raise Unavailable(exc.message) from None
    except ProfilebaseError as exc:
        raise failure(exc) from None
    finally:
        store.close()


def redact(url: str) -> str:
    """The database URL without its password, to print."""
    from profilebase.server.storage import redact as without_password

    return without_password(url)
