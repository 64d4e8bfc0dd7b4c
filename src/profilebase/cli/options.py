"""Options shared by several commands, and the SDK client the remote options describe."""

from __future__ import annotations

from typing import Any

import click

from profilebase.cli.failures import failure
from profilebase.errors import ProfilebaseError

log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="How much the process logs.",
)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
code_argument = click.argument("code")


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


#: The data commands (export, import, delete, batches) talk to a server (--url, as push
#: does) or, given --database, work directly on a database. PROFILEBASE_DATABASE is not read
#: for this choice: on a server machine the variable is often set, and the command must not
#: silently bypass the server.
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
