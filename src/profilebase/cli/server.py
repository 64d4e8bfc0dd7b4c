"""Commands that run the server: serve, worker, migrate, and secret rotate."""

from __future__ import annotations

import click

from profilebase.cli.failures import explain
from profilebase.cli.options import database_option, log_format_option, log_level_option
from profilebase.cli.stores import load_settings, opened, redact
from profilebase.errors import ProfilebaseError


def configure_logging(level: str, form: str = "text") -> None:
    from profilebase.server import logs

    logs.configure(level, form)


@click.command()
@click.option(
    "--host", default=None, help="Listen address [env PROFILEBASE_HOST; default 127.0.0.1]."
)
@click.option(
    "--port", type=int, default=None, help="Listen port [env PROFILEBASE_PORT; default 8080]."
)
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
@log_level_option
@log_format_option
def serve(
    host: str | None,
    port: int | None,
    database: str | None,
    workers: int | None,
    demo: bool | None,
    log_level: str,
    log_format: str | None,
) -> None:
    """Start the HTTP server, with batch workers inside it, and the dashboard at /ui."""
    settings = load_settings(
        host=host, port=port, database=database, workers=workers, demo=demo, log_format=log_format
    )
    from profilebase.server.web import create_app, server

    configure_logging(log_level, settings.log_format)
    try:
        app = create_app(settings)
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None
    click.echo(
        f"profilebase serving http://{settings.host}:{settings.port} "
        f"on {redact(settings.database)} with {settings.workers} worker(s)",
        err=True,
    )
    server.serve(app, settings, log_level)


@click.command()
@database_option
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Worker processes to run [env PROFILEBASE_CONCURRENCY; default 1].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /metrics of every worker process on this port [env PROFILEBASE_METRICS_PORT; "
    "default 0: none].",
)
@log_level_option
@log_format_option
def worker(
    database: str | None,
    concurrency: int | None,
    metrics_port: int | None,
    log_level: str,
    log_format: str | None,
) -> None:
    """Apply accepted batches, without serving HTTP: run as many as the database takes.

    Stops after finishing its current unit on SIGTERM or Ctrl-C.
    """
    settings = load_settings(
        database=database,
        concurrency=concurrency,
        metrics_port=metrics_port,
        log_format=log_format,
    )
    from profilebase.server.worker import run_processes

    configure_logging(log_level, settings.log_format)
    click.echo(
        f"profilebase worker on {redact(settings.database)} "
        f"with {settings.concurrency} process(es)",
        err=True,
    )
    try:
        run_processes(settings, settings.concurrency)
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None


@click.command()
@database_option
def migrate(database: str | None) -> None:
    """Apply pending schema migrations (serve and worker also do this at start-up)."""
    settings = load_settings(database=database)
    from profilebase.server.storage import open_settings_store

    try:
        store = open_settings_store(settings)
        applied = store.migrate()
        store.close()
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


@click.group()
def secret() -> None:
    """Manage the server secret that profile API tokens are derived from."""


@secret.command("rotate")
@database_option
def secret_rotate(database: str | None) -> None:
    """Replace the server secret and revoke every token made with the old one.

    Writes a new random secret to the secret file, or takes the value now in
    PROFILEBASE_SECRET. Restart every server process with the new secret afterwards.
    """
    from profilebase.models import now_ms
    from profilebase.server import secret as server_secret

    with opened(database) as (settings, store):
        new, revoked = server_secret.rotate(settings, store, now_ms())
    click.echo(f"New server secret in {new.source}; revoked {revoked} token(s).")
    click.echo(
        "Restart every server process of this database with the new secret; clients get "
        "new tokens from the token endpoint."
    )


COMMANDS = [serve, worker, migrate, secret]
