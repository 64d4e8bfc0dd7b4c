"""Commands that talk to a server over HTTP through the SDK: push, status, get, update.

They import nothing of the server, so the SDK's own install runs them.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from profilebase.cli.failures import (
    EXIT_OK,
    EXIT_ROWS_FAILED,
    EXIT_UNAVAILABLE,
    Refused,
    failure,
)
from profilebase.cli.options import open_client, remote_options
from profilebase.errors import ProfilebaseError


def parse_delimiter(value: str | None) -> str | None:
    names = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t"}
    return None if value is None else names.get(value.lower(), value)


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
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


COMMANDS = [push, status, get, update]
