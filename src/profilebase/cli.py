"""The ``profilebase`` command: a thin click layer over the library.

Every option can also come from the environment as ``PROFILEBASE_<OPTION>``;
a flag given on the command line wins over the environment. ``serve`` and
``migrate`` run the server; ``push``, ``status``, ``get`` and ``update`` are
clients over ``profilebase.Client``, configured by ``--url``/``--client``/
``--token`` or ``PROFILEBASE_URL``/``PROFILEBASE_CLIENT``/``PROFILEBASE_TOKEN``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from profilebase.config import Settings
from profilebase.errors import BatchStuck, ProfilebaseError, RemoteUnavailable


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


# -- the client commands: push, status, get, update ------------------------------------

#: Exit codes of the client commands (docs/client.md lists them too).
EXIT_OK = 0
EXIT_USAGE = 2  # click's own: a bad flag or a missing option
EXIT_REJECTED = 3  # the input or the request was refused: unreadable file, bad header, 4xx
EXIT_ROWS_FAILED = 4  # some rows were not applied (failed, or not found with --v1)
EXIT_UNAVAILABLE = 5  # server or network failure, quota, a stuck or unfinished batch


class Refused(click.ClickException):
    """The file or the request was refused: one sentence, exit code 3."""

    exit_code = EXIT_REJECTED


class Unavailable(click.ClickException):
    """The server or the network failed: one sentence, exit code 5."""

    exit_code = EXIT_UNAVAILABLE


def failure(exc: ProfilebaseError) -> click.ClickException:
    """The CLI's form of a library error: its sentence, with the exit code of its kind."""
    if isinstance(exc, RemoteUnavailable | BatchStuck):
        return Unavailable(exc.message)
    return Refused(exc.message)


def remote_options(command: Any) -> Any:
    """--url, --client and --token, also read from PROFILEBASE_URL/_CLIENT/_TOKEN."""
    options = [
        click.option(
            "--url",
            envvar="PROFILEBASE_URL",
            default="http://127.0.0.1:8080",
            show_default=True,
            show_envvar=True,
            help="Server base URL: profilebase, or https://CODE.tt.omtrdc.net for Target.",
        ),
        click.option(
            "--client",
            "client_code",
            envvar="PROFILEBASE_CLIENT",
            required=True,
            show_envvar=True,
            help="Client code (tenant).",
        ),
        click.option(
            "--token",
            envvar="PROFILEBASE_TOKEN",
            default=None,
            show_envvar=True,
            help="Profile API token, sent as `Authorization: Bearer TOKEN`.",
        ),
        click.option(
            "--poll-interval",
            type=click.FloatRange(min=0),
            default=None,
            help="Seconds between status polls [default 1 for profilebase, 30 for Target].",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=7,
            show_default=True,
            help="Retries of a request after a network error, 429 or 5xx (with backoff).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def open_client(remote: dict[str, Any]) -> Any:
    """The SDK client the remote options describe."""
    from profilebase.client import Client
    from profilebase.retry import RetryPolicy

    try:
        return Client(
            remote["url"],
            remote["client_code"],
            remote["token"],
            poll_interval=remote["poll_interval"],
            retry=RetryPolicy(attempts=remote["retries"] + 1),
        )
    except ProfilebaseError as exc:
        raise failure(exc) from None


def parse_delimiter(value: str | None) -> str | None:
    names = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t"}
    return None if value is None else names.get(value.lower(), value)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@remote_options
@click.option("--id-column", default=None, help="Column holding the id [default: the column "
              "named like --key (also mbox3rdPartyId, mboxPC, tntId), else the first].")
@click.option("--key", type=click.Choice(["thirdPartyId", "pcId"]), default="thirdPartyId",
              show_default=True, help="Which id the id column holds.")
@click.option("--v1", is_flag=True, help="Use Bulk API v1: update existing profiles only.")
@click.option("--columns", default=None, help="Comma-separated attribute columns to push, "
              "in this order [default: every other column].")
@click.option("--delimiter", default=None, help="comma, semicolon, tab, or one character "
              "[default: found from the header line].")
@click.option("--dry-run", is_flag=True, help="Check every row (on profilebase also on the "
              "server) and apply nothing.")
@click.option("--no-wait", is_flag=True, help="Return once every part is accepted.")
@click.option("--errors-out", type=click.Path(dir_okay=False), default=None,
              help="Write each failed row here: the input's columns plus `reason`.")
@click.option("--idempotency-key", default=None, help="Send part N with the key KEY-N; "
              "reuse the key to resume a push without applying any part twice.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop waiting after this many seconds (exit 5).")
def push(
    file: str,
    id_column: str | None,
    key: str,
    v1: bool,
    columns: str | None,
    delimiter: str | None,
    dry_run: bool,
    no_wait: bool,
    errors_out: str | None,
    idempotency_key: str | None,
    timeout: float | None,
    **remote: Any,
) -> None:
    """Push a CSV export (or .gz) into profiles: split, upload, wait, report failed rows.

    Exit codes: 0 every row applied; 3 the file or request was refused; 4 some rows
    failed or were not found; 5 server or network failure, quota, or a stuck batch.
    """
    import time

    from profilebase.console import ProgressBar, push_summary

    start = time.monotonic()
    client = open_client(remote)
    with client, ProgressBar("reading") as bar:
        try:
            result = client.push(
                file,
                key=key,
                id_column=id_column,
                columns=None if columns is None else [c.strip() for c in columns.split(",")],
                delimiter=parse_delimiter(delimiter),
                version=1 if v1 else 2,
                dry_run=dry_run,
                wait=not no_wait,
                timeout=timeout,
                errors_out=errors_out,
                idempotency_key=idempotency_key,
                on_progress=bar.push,
            )
        except ProfilebaseError as exc:
            raise failure(exc) from None
    push_summary(result, file, time.monotonic() - start, errors_out)
    if no_wait:
        sys.exit(EXIT_ROWS_FAILED if result.failures else EXIT_OK)
    if result.stuck or not result.finished:
        sys.exit(EXIT_UNAVAILABLE)
    if not result.ok:
        sys.exit(EXIT_ROWS_FAILED)


@main.command()
@click.argument("batch_id")
@remote_options
@click.option("--watch", is_flag=True, help="Follow the batch until it finishes, with a "
              "progress bar; exit 4 if rows failed, 5 if it is stuck.")
def status(
    batch_id: str,
    watch: bool,
    **remote: Any,
) -> None:
    """Show a batch's status (BATCH_ID may also be the batchStatus URL)."""
    from profilebase.console import ProgressBar, status_summary

    with open_client(remote) as client:
        try:
            if watch:
                with ProgressBar("waiting") as bar:
                    result = client.wait(batch_id, on_status=bar.status)
            else:
                result = client.batch_status(batch_id)
        except ProfilebaseError as exc:
            raise failure(exc) from None
    status_summary(result)
    if watch and (result.failed or result.not_found):
        sys.exit(EXIT_ROWS_FAILED)


@main.command()
@click.argument("identifier", metavar="ID")
@remote_options
@click.option("--third-party", is_flag=True, help="ID is a thirdPartyId [default: a pcId].")
def get(
    identifier: str,
    third_party: bool,
    **remote: Any,
) -> None:
    """Print a profile as JSON (exit 3 if there is none)."""
    from profilebase.console import profile_json

    with open_client(remote) as client:
        try:
            profile = client.get_profile(identifier, key=key_of(third_party))
        except ProfilebaseError as exc:
            raise failure(exc) from None
    if profile is None:
        what = "thirdPartyId" if third_party else "pcId"
        client_code = remote["client_code"]
        raise Refused(f"No profile with {what} {identifier!r} for client {client_code!r}.")
    click.echo(profile_json(profile))


@main.command()
@click.argument("identifier", metavar="ID")
@click.argument("pairs", metavar="NAME=VALUE...", nargs=-1, required=True)
@remote_options
@click.option("--third-party", is_flag=True, help="ID is a thirdPartyId [default: a pcId].")
def update(
    identifier: str,
    pairs: tuple[str, ...],
    third_party: bool,
    **remote: Any,
) -> None:
    """Set attributes of one existing profile through the single update API."""
    attributes = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE.", param_hint="NAME=VALUE")
        attributes[name] = value
    with open_client(remote) as client:
        try:
            result = client.update_profile(identifier, attributes, key=key_of(third_party))
        except ProfilebaseError as exc:
            raise failure(exc) from None
    click.echo(result.message or "updated")


def key_of(third_party: bool) -> str:
    return "thirdPartyId" if third_party else "pcId"
