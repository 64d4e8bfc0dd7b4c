"""The ``profilebase`` command: a thin click layer over the library.

Every option can also come from the environment as ``PROFILEBASE_<OPTION>``;
a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from profilebase.config import Settings
from profilebase.errors import ProfilebaseError


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except ProfilebaseError as exc:
        raise click.ClickException(exc.message) from None


database_option = click.option(
    "--database",
    default=None,
    help="Database URL [env PROFILEBASE_DATABASE; default "
    "sqlite:///./profilebase-data/profilebase.db].",
)


@click.group()
@click.version_option(package_name="profilebase")
def main() -> None:
    """profilebase: a visitor-profile store that speaks Adobe Target's profile APIs."""


@main.command()
@click.option("--host", default=None, help="Listen address [env PROFILEBASE_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Listen port [env PROFILEBASE_PORT; default 8080].")
@database_option
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Batch worker threads in this process; 0 serves the API only "
    "[env PROFILEBASE_WORKERS; default 2].",
)
@click.option(
    "--demo/--no-demo",
    default=None,
    help="Create the `demo` client if missing [env PROFILEBASE_DEMO; default on].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="How much the server logs.",
)
def serve(
    host: str | None,
    port: int | None,
    database: str | None,
    workers: int | None,
    demo: bool | None,
    log_level: str,
) -> None:
    """Start the HTTP server, with batch workers inside it."""
    import uvicorn

    from profilebase.web import create_app

    settings = load_settings(host=host, port=port, database=database, workers=workers, demo=demo)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except ProfilebaseError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(
        f"profilebase serving http://{settings.host}:{settings.port} "
        f"on {settings.database} with {settings.workers} worker(s)",
        err=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False)


@main.command()
@database_option
def migrate(database: str | None) -> None:
    """Apply pending schema migrations (serve also does this at start-up)."""
    from profilebase.storage import open_store

    settings = load_settings(database=database)
    try:
        store = open_store(settings.database, sqlite_synchronous=settings.sqlite_synchronous)
        applied = store.migrate()
        store.close()
    except ProfilebaseError as exc:
        raise click.ClickException(exc.message) from None
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")
