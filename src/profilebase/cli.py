"""The ``profilebase`` command: a thin click layer over the library.

Every option can also come from the environment as ``PROFILEBASE_<OPTION>``;
a flag given on the command line wins over the environment. ``serve`` and
``migrate`` run the server; ``clients`` and ``tokens`` manage its tenants in the
database; ``push``, ``status``, ``get`` and ``update`` are clients over
``profilebase.Client``, configured by ``--url``/``--client``/``--token`` or
``PROFILEBASE_URL``/``PROFILEBASE_CLIENT``/``PROFILEBASE_TOKEN`` (or, on profilebase,
``--key-id``/``--secret``, which get a token first).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

import click

from profilebase.errors import BatchStuck, ProfilebaseError, RemoteUnavailable
from profilebase.server.settings import Settings
from profilebase.server.storage import redact

if TYPE_CHECKING:
    from profilebase.server.storage import Store


def explain(exc: ProfilebaseError) -> str:
    """The error's sentence, and for a database failure what the database said: the
    operator at the command line may see what an HTTP client may not."""
    detail = getattr(exc, "detail", "")
    return f"{exc.message} ({detail})" if detail else exc.message


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None


@contextmanager
def opened(database: str | None) -> Iterator[tuple[Settings, Store]]:
    """Settings and the migrated store for a command; errors become one clear line."""
    from profilebase.server.storage import open_store

    settings = load_settings(database=database)
    try:
        store = open_store(settings.database, sqlite_synchronous=settings.sqlite_synchronous)
        try:
            store.migrate()
            yield settings, store
        finally:
            store.close()
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None


database_option = click.option(
    "--database",
    default=None,
    help="Database URL [env PROFILEBASE_DATABASE; default "
    "sqlite:///./profilebase-data/profilebase.db].",
)


log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="How much the process logs.",
)


log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines for people or for machines [env PROFILEBASE_LOG_FORMAT; default text].",
)


def configure_logging(level: str, form: str = "text") -> None:
    from profilebase.server import logs

    logs.configure(level, form)


@click.group()
@click.version_option(package_name="profilebase")
def main() -> None:
    """profilebase: a visitor-profile store that speaks Adobe Target's profile APIs."""


@main.command()
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
    from profilebase.server.web import create_app, server

    settings = load_settings(
        host=host, port=port, database=database, workers=workers, demo=demo, log_format=log_format
    )
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


@main.command()
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
    from profilebase.server.worker import run_processes

    settings = load_settings(
        database=database,
        concurrency=concurrency,
        metrics_port=metrics_port,
        log_format=log_format,
    )
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


@main.command()
@database_option
def migrate(database: str | None) -> None:
    """Apply pending schema migrations (serve and worker also do this at start-up)."""
    from profilebase.server.storage import open_settings_store

    settings = load_settings(database=database)
    try:
        store = open_settings_store(settings)
        applied = store.migrate()
        store.close()
    except ProfilebaseError as exc:
        raise click.ClickException(explain(exc)) from None
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


# -- administration: clients and tokens ------------------------------------------------

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
code_argument = click.argument("code")


@main.group()
def clients() -> None:
    """Manage clients (tenants): credentials, authorization, limits.

    A running server sees every change at its next request (workers within seconds).
    """


@clients.command("create")
@code_argument
@click.option(
    "--require-auth", is_flag=True, help="Require an authorization token on profile API calls."
)
@json_option
@database_option
def clients_create(code: str, require_auth: bool, as_json: bool, database: str | None) -> None:
    """Create client CODE and print its API key and secret (shown this once only)."""
    from profilebase.models import now_ms
    from profilebase.server import clients as library

    with opened(database) as (_, store):
        client, credentials = library.create(store, code, require_auth, now_ms())
    if as_json:
        body = {
            "client": client.code,
            "apiKey": credentials.api_key,
            "secret": credentials.secret,
            "requireAuth": client.require_auth,
        }
        click.echo(json.dumps(body))
        return
    auth = "required" if client.require_auth else "not required"
    click.echo(f"Created client {client.code} (authorization {auth}).")
    print_credentials(credentials.api_key, credentials.secret)


@clients.command("new-secret")
@code_argument
@json_option
@database_option
def clients_new_secret(code: str, as_json: bool, database: str | None) -> None:
    """Give client CODE a new API key and secret; the old ones stop working at once."""
    from profilebase.server import clients as library

    with opened(database) as (_, store):
        client, credentials = library.new_secret(store, code)
    if as_json:
        body = {"client": client.code, "apiKey": credentials.api_key, "secret": credentials.secret}
        click.echo(json.dumps(body))
        return
    print_credentials(credentials.api_key, credentials.secret)


def print_credentials(api_key: str, secret: str) -> None:
    click.echo(f"API key: {api_key}")
    click.echo(f"Secret:  {secret}")
    click.echo("The secret is shown this once; only a hash of it is kept. Store it now.")


@clients.command("list")
@json_option
@database_option
def clients_list(as_json: bool, database: str | None) -> None:
    """List every client with its authorization, state and limit overrides."""
    with opened(database) as (_, store):
        found = store.list_clients()
    if as_json:
        click.echo(json.dumps([client_summary(c) for c in found]))
        return
    click.echo(f"{'CLIENT':<24} {'AUTH':<9} {'STATE':<9} {'API KEY':<33} LIMITS")
    for c in found:
        limits = " ".join(f"{k}={v}" for k, v in sorted(c.limits.items())) or "-"
        auth = "required" if c.require_auth else "off"
        state = "disabled" if c.disabled else "enabled"
        click.echo(f"{c.code:<24} {auth:<9} {state:<9} {c.api_key or '-':<33} {limits}")


@clients.command("show")
@code_argument
@json_option
@database_option
def clients_show(code: str, as_json: bool, database: str | None) -> None:
    """Show client CODE: authorization, its limits in force, usage and active token."""
    from profilebase.models import iso_ms, now_ms
    from profilebase.server import clients as library
    from profilebase.server.quota import DAY_MS
    from profilebase.server.settings import client_limits
    from profilebase.server.tokens import PROFILE_API

    now = now_ms()
    with opened(database) as (settings, store):
        client = library.get(store, code)
        token = store.active_token(client.id, PROFILE_API, now)
        rows = sum(size for _, size in store.recent_batches(client.id, now - DAY_MS))
    limits = client_limits(settings, client.limits)
    body = client_summary(client) | {
        "limits": {
            name: {"value": value, "override": name in client.limits}
            for name, value in vars(limits).items()
        },
        "rowsLast24h": rows,
        "activeToken": None
        if token is None
        else {
            "last4": token.last4,
            "createdAt": iso_ms(token.created_at),
            "expiresAt": iso_ms(token.expires_at),
        },
    }
    if as_json:
        click.echo(json.dumps(body))
        return
    click.echo(f"client:        {client.code}")
    click.echo(f"authorization: {'required' if client.require_auth else 'off'}")
    click.echo(f"state:         {'disabled' if client.disabled else 'enabled'}")
    click.echo(f"API key:       {client.api_key or '- (none: clients new-secret ' + code + ')'}")
    click.echo(f"organization:  {client.org_id or '-'}")
    if token is None:
        click.echo("token:         none active")
    else:
        click.echo(f"token:         ...{token.last4}, expires {iso_ms(token.expires_at)}")
    click.echo(f"rows, last 24 hours: {rows:,}")
    click.echo("limits:")
    for name, value in vars(limits).items():
        mark = " (client's own)" if name in client.limits else ""
        click.echo(f"  {name} = {value}{mark}")


def client_summary(client: Any) -> dict[str, Any]:
    return {
        "client": client.code,
        "requireAuth": client.require_auth,
        "disabled": client.disabled,
        "apiKey": client.api_key,
        "orgId": client.org_id,
        "limitOverrides": client.limits,
    }


@clients.command("set")
@code_argument
@click.option(
    "--require-auth/--no-require-auth",
    default=None,
    help="Require (or stop requiring) an authorization token on profile API calls.",
)
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a limit for this client (repeatable); an empty VALUE restores the default.",
)
@click.option(
    "--org-id",
    default=None,
    metavar="ID@AdobeOrg",
    help="The client's Adobe organization id: a request naming no client but carrying this "
    "imsOrgId is for this client. An empty value removes it.",
)
@database_option
def clients_set(
    code: str,
    require_auth: bool | None,
    limits: tuple[str, ...],
    org_id: str | None,
    database: str | None,
) -> None:
    """Change client CODE's authorization requirement, limits and organization id."""
    from profilebase.server import clients as library

    pairs = {}
    for item in limits:
        name, equals, value = item.partition("=")
        if not equals:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE.", param_hint="--limit")
        pairs[name.strip()] = value
    with opened(database) as (_, store):
        client = library.change(store, code, require_auth=require_auth, limits=pairs, org_id=org_id)
    overrides = " ".join(f"{k}={v}" for k, v in sorted(client.limits.items())) or "none"
    auth = "required" if client.require_auth else "off"
    click.echo(
        f"Client {client.code}: authorization {auth}; limit overrides: {overrides}; "
        f"organization id: {client.org_id or 'none'}."
    )


@clients.command("disable")
@code_argument
@database_option
def clients_disable(code: str, database: str | None) -> None:
    """Disable client CODE: every call for it gets 403 (accepted batches still complete)."""
    set_disabled(code, database, True)


@clients.command("enable")
@code_argument
@database_option
def clients_enable(code: str, database: str | None) -> None:
    """Enable client CODE again after `clients disable`."""
    set_disabled(code, database, False)


def set_disabled(code: str, database: str | None, disabled: bool) -> None:
    from profilebase.server import clients as library

    with opened(database) as (_, store):
        library.change(store, code, disabled=disabled)
    click.echo(f"Client {code} is {'disabled' if disabled else 'enabled'}.")


@main.group()
def tokens() -> None:
    """Manage the profile API tokens of clients."""


@tokens.command("create")
@code_argument
@json_option
@database_option
def tokens_create(code: str, as_json: bool, database: str | None) -> None:
    """Create a profile API token for CODE, as the token endpoint does, and print it once."""
    from profilebase.models import iso_ms, now_ms
    from profilebase.server import clients as library
    from profilebase.server import secret as server_secret
    from profilebase.server import tokens as library_tokens
    from profilebase.server.settings import client_limits

    with opened(database) as (settings, store):
        client = library.get(store, code)
        ttl = client_limits(settings, client.limits).token_ttl_seconds
        secret = server_secret.open_secret(settings, store, now_ms())
        grace = settings.token_grace_seconds
        issued = library_tokens.issue(store, client, secret, ttl, grace, now_ms())
    if as_json:
        body = {
            "accessToken": issued.value,
            "tokenType": "bearer",
            "scope": issued.token.scope,
            "expiresIn": ttl,
        }
        click.echo(json.dumps(body))
        return
    click.echo(f"Token: {issued.value}")
    click.echo(
        f"Expires {iso_ms(issued.token.expires_at)}; GET on the token endpoint shows it again."
    )


@tokens.command("revoke")
@code_argument
@database_option
def tokens_revoke(code: str, database: str | None) -> None:
    """Revoke every token of client CODE at once."""
    from profilebase.models import now_ms
    from profilebase.server import clients as library
    from profilebase.server import tokens as library_tokens

    with opened(database) as (_, store):
        count = library_tokens.revoke(store, library.get(store, code), now_ms())
    click.echo(f"Revoked {count} token(s) of client {code}.")


@main.group()
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
    """--url, --client, --token (or --key-id and --secret), also read from the environment."""
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
            "--key-id",
            envvar="PROFILEBASE_KEY_ID",
            default=None,
            show_envvar=True,
            help="The client's API key: with --secret, get a token from profilebase's "
            "token endpoint instead of giving --token (not for Target).",
        ),
        click.option(
            "--secret",
            envvar="PROFILEBASE_SECRET",
            default=None,
            show_envvar=True,
            help="The secret of the --key-id API key.",
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
    from profilebase.client.retry import RetryPolicy

    try:
        return Client(
            remote["url"],
            remote["client_code"],
            remote["token"],
            key_id=remote["key_id"],
            secret=remote["secret"],
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
@click.option(
    "--id-column",
    default=None,
    help="Column holding the id [default: the column "
    "named like --key (also mbox3rdPartyId, mboxPC, tntId), else the first].",
)
@click.option(
    "--key",
    type=click.Choice(["thirdPartyId", "pcId"]),
    default="thirdPartyId",
    show_default=True,
    help="Which id the id column holds.",
)
@click.option("--v1", is_flag=True, help="Use Bulk API v1: update existing profiles only.")
@click.option(
    "--columns",
    default=None,
    help="Comma-separated attribute columns to push, in this order [default: every other column].",
)
@click.option(
    "--delimiter",
    default=None,
    help="comma, semicolon, tab, or one character [default: found from the header line].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check every row (on profilebase also on the server) and apply nothing.",
)
@click.option("--no-wait", is_flag=True, help="Return once every part is accepted.")
@click.option(
    "--errors-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write each failed row here: the input's columns plus `reason`.",
)
@click.option(
    "--idempotency-key",
    default=None,
    help="Send part N with the key KEY-N; "
    "reuse the key to resume a push without applying any part twice.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop waiting after this many seconds (exit 5).",
)
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

    from profilebase.client.console import ProgressBar, push_summary

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
@click.option(
    "--watch",
    is_flag=True,
    help="Follow the batch until it finishes, with a "
    "progress bar; exit 4 if rows failed, 5 if it is stuck.",
)
def status(
    batch_id: str,
    watch: bool,
    **remote: Any,
) -> None:
    """Show a batch's status (BATCH_ID may also be the batchStatus URL)."""
    from profilebase.client.console import ProgressBar, status_summary

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
    from profilebase.client.console import profile_json

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


# -- operations on a client's data: export, import, delete, batches ---------------------
#
# Each works against a server (--url, as push does) or, given --database, directly on
# a database. PROFILEBASE_DATABASE is not read for this choice: on a server machine the
# variable is often set, and the command must not silently bypass the server.

direct_option = click.option(
    "--database",
    default=None,
    help="Work directly on this database URL instead of a server; without it the command "
    "talks to --url (PROFILEBASE_DATABASE is not read here).",
)


def direct_database(database: str | None) -> str | None:
    """The database of a direct run, after checking --url was not given too."""
    if database is None:
        return None
    source = click.get_current_context().get_parameter_source("url")
    if source is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("Give either --url (a server) or --database, not both.")
    return database


@contextmanager
def direct_store(database: str) -> Iterator[tuple[Settings, Store]]:
    """Settings and the migrated store of a direct run; a failure is one sentence, exit 3
    (a bad URL, an unknown client) or 5 (the database is unreachable or failed)."""
    from profilebase.errors import StorageError
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


def operator() -> str:
    """Who runs this command, for the record a cancel keeps: user@host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@main.command("export")
@remote_options
@direct_option
@click.option(
    "--format",
    "form",
    type=click.Choice(["jsonl", "batch"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one profile per line with all its ids (what `import` reads); "
    "batch: a v2 batch file that posts back as is.",
)
@click.option(
    "--key",
    type=click.Choice(["pcId", "thirdPartyId"]),
    default=None,
    help="--format batch only: one row per tntId (pcId, the default) or per thirdPartyId.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to this file (complete or not at all) instead of standard output.",
)
def export_command(
    form: str, key: str | None, output: str | None, database: str | None, **remote: Any
) -> None:
    """Export every profile of a client, from a server (--url) or a database (--database).

    A batch file has no row for a profile without an id of its key; the command then
    warns with the count and the key or format that covers them.
    """
    import os
    from pathlib import Path

    from profilebase.models import KeyKind

    if key is not None and form != "batch":
        raise click.UsageError("--key applies to --format batch only.")
    key_kind = KeyKind(key or KeyKind.PC_ID)
    database = direct_database(database)
    target = output + ".part" if output else None
    out: IO[bytes]
    if target:
        out = Path(target).open("wb")
    else:
        out = sys.stdout.buffer
    try:
        unkeyed = export_to(out, form, key_kind, database, remote)
    except BaseException:
        if target:
            out.close()
            os.unlink(target)
        raise
    if target:
        out.close()
        os.replace(target, str(output))
    if unkeyed:
        from profilebase.server.export import unkeyed_warning

        click.echo("warning: " + unkeyed_warning(unkeyed, key_kind), err=True)


def export_to(
    out: Any, form: str, key_kind: Any, database: str | None, remote: dict[str, Any]
) -> int:
    """Write the export to ``out``; return the profiles a batch file has no row for."""
    if database is not None:
        from profilebase.models import now_ms
        from profilebase.server import direct

        with direct_store(database) as (settings, store):
            try:
                plan = direct.export_profiles(
                    store, settings, remote["client_code"], out, form, key_kind, now_ms()
                )
            except ProfilebaseError as exc:
                raise failure(exc) from None
        return plan.unkeyed if plan is not None else 0
    with open_client(remote) as client:
        try:
            key = key_kind if form == "batch" else None
            return int(client.export_profiles(out, format=form, key=key).unkeyed)
        except ProfilebaseError as exc:
            raise failure(exc) from None


@main.command("delete")
@remote_options
@direct_option
@click.option("--third-party-id", default=None, help="Delete the profile with this thirdPartyId.")
@click.option("--pc-id", default=None, help="Delete the profile with this pcId (tntId).")
def delete_command(
    third_party_id: str | None, pc_id: str | None, database: str | None, **remote: Any
) -> None:
    """Delete one profile with all its ids (its thirdPartyId and every linked tntId), on a
    server (--url) or a database (--database). Exit 3 if there is no such profile."""
    from profilebase.models import KeyKind, now_ms

    if (third_party_id is None) == (pc_id is None):
        raise click.UsageError("Give exactly one of --third-party-id and --pc-id.")
    kind = KeyKind.THIRD_PARTY_ID if third_party_id is not None else KeyKind.PC_ID
    identifier = str(third_party_id if third_party_id is not None else pc_id)
    code = remote["client_code"]
    database = direct_database(database)
    if database is not None:
        from profilebase.server import direct

        with direct_store(database) as (settings, store):
            try:
                deleted = direct.delete_profile(
                    store, settings, code, kind.key(identifier), now_ms()
                )
            except ProfilebaseError as exc:
                raise failure(exc) from None
    else:
        with open_client(remote) as client:
            try:
                deleted = client.delete_profile(identifier, key=kind)
            except ProfilebaseError as exc:
                raise failure(exc) from None
    if not deleted:
        raise Refused(f"No profile with {kind} {identifier!r} for client {code!r}.")
    click.echo(
        f"Deleted the profile with {kind} {identifier!r} of client {code!r}, with all its ids."
    )


@main.group()
def batches() -> None:
    """List a client's batches, show one, or cancel one (--url or --database)."""


@batches.command("list")
@remote_options
@direct_option
@click.option("--unfinished", is_flag=True, help="Only batches not complete yet.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=50,
    show_default=True,
    help="At most this many, newest first.",
)
@json_option
def batches_list(
    unfinished: bool, limit: int, as_json: bool, database: str | None, **remote: Any
) -> None:
    """List the client's batches, newest first: state, rows, applied, failed, accepted."""
    from profilebase.client.console import batch_table, status_dict

    database = direct_database(database)
    if database is not None:
        from profilebase.models import now_ms
        from profilebase.server import direct

        with direct_store(database) as (settings, store):
            try:
                found = direct.list_batches(
                    store, settings, remote["client_code"], unfinished, limit, now_ms()
                )
            except ProfilebaseError as exc:
                raise failure(exc) from None
    else:
        with open_client(remote) as client:
            try:
                found = client.list_batches(unfinished=unfinished, limit=limit)
            except ProfilebaseError as exc:
                raise failure(exc) from None
    if as_json:
        click.echo(json.dumps([status_dict(s) for s in found]))
        return
    batch_table(found)


@batches.command("show")
@click.argument("batch_id")
@remote_options
@direct_option
@json_option
def batches_show(batch_id: str, as_json: bool, database: str | None, **remote: Any) -> None:
    """Show one batch: state, counts, times, and who cancelled it if anyone did."""
    from profilebase.client.console import status_dict, status_summary

    database = direct_database(database)
    if database is not None:
        from profilebase.models import now_ms
        from profilebase.server import direct

        with direct_store(database) as (settings, store):
            try:
                status = direct.batch_status(
                    store, settings, remote["client_code"], batch_id, now_ms()
                )
            except ProfilebaseError as exc:
                raise failure(exc) from None
    else:
        with open_client(remote) as client:
            try:
                status = client.batch_status(batch_id)
            except ProfilebaseError as exc:
                raise failure(exc) from None
    if as_json:
        click.echo(json.dumps(status_dict(status)))
        return
    status_summary(status)


@batches.command("cancel")
@click.argument("batch_id")
@remote_options
@direct_option
@click.option("--by", default=None, help="Who cancels, for the record [default: your user@host].")
@json_option
def batches_cancel(
    batch_id: str, by: str | None, as_json: bool, database: str | None, **remote: Any
) -> None:
    """Cancel a queued or running batch: rows not yet applied fail with reason `cancelled`
    and the batch completes. Rows already applied stay applied (nothing is undone)."""
    from profilebase.client.console import status_dict, status_summary

    who = by if by is not None else operator()
    database = direct_database(database)
    if database is not None:
        from profilebase.models import now_ms
        from profilebase.server import direct

        with direct_store(database) as (settings, store):
            try:
                outcome, status = direct.cancel_batch(
                    store,
                    settings,
                    remote["client_code"],
                    batch_id,
                    f"{who} (profilebase batches cancel --database)",
                    now_ms(),
                )
            except ProfilebaseError as exc:
                raise failure(exc) from None
        rows, already = outcome.rows_cancelled, outcome.already
    else:
        with open_client(remote) as client:
            try:
                cancelled = client.cancel_batch(batch_id, by=who)
            except ProfilebaseError as exc:
                raise failure(exc) from None
        status, rows, already = cancelled.status, cancelled.rows_cancelled, cancelled.already
    if as_json:
        click.echo(json.dumps(status_dict(status) | {"rowsCancelled": rows, "already": already}))
        return
    if already:
        click.echo(f"Batch {batch_id} had already been cancelled; nothing changed.")
    else:
        click.echo(
            f"Cancelled batch {batch_id}: {rows:,} row(s) not yet applied now count as failed "
            "(reason `cancelled`); rows applied before stay applied."
        )
    status_summary(status)


# -- whole databases: copy and backup ------------------------------------------------------


@main.command("copy")
@click.option("--from", "source", required=True, help="Database URL to copy from.")
@click.option("--to", "target", required=True, help="Database URL to copy into.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Delete every row of the target first (its data is lost); without it the target "
    "must be empty, or hold an interrupted copy from the same source.",
)
@click.option(
    "--replace-nul",
    is_flag=True,
    help="Store U+FFFD where a value holds U+0000, which PostgreSQL cannot store "
    "[default: stop and name the row].",
)
@click.option(
    "--page-rows",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Rows written per transaction (a page ends sooner once it holds about 8 MB).",
)
def copy_command(
    source: str, target: str, overwrite: bool, replace_nul: bool, page_rows: int
) -> None:
    """Copy everything a server holds to another database, SQLite or PostgreSQL: clients,
    credentials, tokens, profiles, links, batch statuses and queued batches.

    The source may keep serving reads. Run the same command again after an interruption:
    it goes on where it stopped. The target's row counts are checked at the end.
    """
    import time

    from profilebase.client.console import ProgressBar
    from profilebase.server.storage import open_store
    from profilebase.server.transfer import Copy

    if source == target:
        raise click.UsageError("--from and --to name the same database.")
    start = time.monotonic()
    try:
        settings = Settings.from_env()
        stores = []
        for url in (source, target):
            stores.append(open_store(url, sqlite_synchronous=settings.sqlite_synchronous))
        try:
            for store in stores:
                store.migrate()
            with ProgressBar("copying") as bar:
                report = Copy(
                    stores[0],
                    stores[1],
                    redact(source),
                    overwrite=overwrite,
                    page_rows=page_rows,
                    replace_nul=replace_nul,
                    on_progress=lambda table, done, total: bar.rows(
                        f"copying {table}" if table else "copying", done, total
                    ),
                ).run()
        finally:
            for store in stores:
                store.close()
    except ProfilebaseError as exc:
        raise Refused(exc.message) from None
    except KeyboardInterrupt:
        raise Unavailable(
            "Interrupted. Run the same command again: the copy goes on where it stopped."
        ) from None
    seconds = time.monotonic() - start
    resumed = " (resumed)" if report.resumed else ""
    click.echo(
        f"Copied {report.total:,} rows in {len(report.rows)} tables{resumed} in {seconds:.1f} s; "
        "every table's row count matches the source."
    )
    for name, rows in sorted(report.rows.items()):
        click.echo(f"  {name}: {rows:,}")
    if report.replaced_nul:
        click.echo(f"{report.replaced_nul:,} value(s) had U+0000 replaced by U+FFFD.")
    click.echo(
        "Tokens and client secrets travel as stored hashes and keep working. A server secret "
        "kept in a file outside the database must be copied to the new server too "
        "(docs/deployment.md, moving from SQLite to PostgreSQL, step 5)."
    )


@main.command("backup")
@database_option
@click.argument("path", type=click.Path(dir_okay=False))
def backup_command(database: str | None, path: str) -> None:
    """Write a consistent copy of a live SQLite database to the new file PATH (SQLite's online
    backup API), while the server goes on; for PostgreSQL it says which pg_dump to run."""
    import os

    from profilebase.server.storage.tables import TableAccess

    with opened(database) as (settings, store):
        if not isinstance(store, TableAccess):
            raise Refused("This database's backend has no backup.")
        try:
            store.backup(path)
        except ProfilebaseError as exc:
            raise Refused(exc.message) from None
    size = os.path.getsize(path)
    click.echo(
        f"Backed up {redact(settings.database)} to {path} ({size:,} bytes). Restore: stop the "
        "server, put the file in the database's place (deleting its -wal and -shm files), "
        "start the server."
    )


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@remote_options
@direct_option
@click.option(
    "--idempotency-key",
    default=None,
    help="Send part N with the key KEY-N; run again with the same key to finish an "
    "interrupted import without importing any part twice.",
)
@click.option("--no-wait", is_flag=True, help="Return once every part is accepted.")
def import_command(
    file: str, idempotency_key: str | None, no_wait: bool, database: str | None, **remote: Any
) -> None:
    """Import profiles from JSON lines (what `export` writes): every id and link, values and
    modified times, into a server (--url) or a database (--database).

    Exit codes: 0 every line imported; 3 refused; 4 some lines failed; 5 server failure.
    """
    import time

    from profilebase.client.console import ProgressBar
    from profilebase.client.imports import ImportResult

    start = time.monotonic()
    database = direct_database(database)
    result: ImportResult
    with ProgressBar("importing") as bar:

        def progress(done: int, total: int) -> None:
            bar.rows("importing", done, total)

        if database is not None:
            from profilebase.server import direct

            with direct_store(database) as (settings, store):
                try:
                    result = direct.import_file(
                        store,
                        settings,
                        remote["client_code"],
                        file,
                        idempotency_key,
                        not no_wait,
                        progress,
                    )
                except ProfilebaseError as exc:
                    raise failure(exc) from None
        else:
            with open_client(remote) as client:
                try:
                    result = client.import_profiles(
                        file,
                        wait=not no_wait,
                        idempotency_key=idempotency_key,
                        on_progress=progress,
                    )
                except ProfilebaseError as exc:
                    raise failure(exc) from None
    seconds = time.monotonic() - start
    batches = ", ".join(result.batch_ids) or "none"
    click.echo(f"sent {result.rows:,} profiles in {len(result.batch_ids)} import(s): {batches}")
    if no_wait:
        return
    rate = result.rows / seconds if seconds > 0 else 0
    click.echo(
        f"imported {result.applied:,} · failed {result.failed:,} · took {seconds:.1f} s "
        f"({rate:,.0f} profiles/s)"
    )
    for item in result.failures[:20]:
        click.echo(f"line {item.line} ({item.id!r}): {item.reason}", err=True)
    if result.failed > 20:
        click.echo(
            f"... {result.failed - 20:,} more: `profilebase batches show` and the failures "
            "endpoint list them all",
            err=True,
        )
    if not result.finished:
        sys.exit(EXIT_UNAVAILABLE)
    if result.failed:
        sys.exit(EXIT_ROWS_FAILED)
