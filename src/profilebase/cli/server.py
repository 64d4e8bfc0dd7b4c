"""Commands that run the server: serve, worker, migrate, and secret rotate."""

from __future__ import annotations

import click

from profilebase.cli.failures import explain
from profilebase.cli.flags import database_option, setting_options
from profilebase.cli.options import log_level_option
from profilebase.cli.stores import load_settings, opened, redact
from profilebase.errors import ProfilebaseError


def configure_logging(level: str, form: str = "text") -> None:
    from profilebase.server import logs

    logs.configure(level, form)


@click.command()
@setting_options("serve")
@log_level_option
def serve(log_level: str, **given: object) -> None:
    """Start the HTTP server, with batch workers inside it, and the dashboard at /ui."""
    settings = load_settings(**given)
    from profilebase.server.settings import http_processes
    from profilebase.server.web import create_app, server

    configure_logging(log_level, settings.log_format)
    processes = http_processes(settings)
    where = f"http://{settings.host}:{settings.port} on {redact(settings.database)}"
    try:
        if processes > 1:
            click.echo(
                f"profilebase serving {where} with {processes} HTTP processes and "
                f"{settings.workers} worker process(es)",
                err=True,
            )
            server.serve_processes(settings, log_level)
            return
        app = create_app(settings, freeze=True, writer_apart=True)
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None
    click.echo(f"profilebase serving {where} with {settings.workers} worker(s)", err=True)
    server.serve(app, settings, log_level)


@click.command()
@setting_options("worker")
@log_level_option
def worker(log_level: str, **given: object) -> None:
    """Apply accepted batches, without serving HTTP: run as many as the database takes.

    Stops after finishing its current unit on SIGTERM or Ctrl-C.
    """
    settings = load_settings(**given)
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
