"""Commands over a client's data and whole databases.

export, import, delete and batches work on a server (--url, through the SDK) or directly on
a database (--database; PROFILEBASE_DATABASE is not read for this choice: on a server
machine the variable is often set, and the command must not silently bypass the server).
copy and backup work on databases.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import click

from profilebase.cli.failures import (
    EXIT_ROWS_FAILED,
    EXIT_UNAVAILABLE,
    Refused,
    Unavailable,
    failure,
    require_server,
)
from profilebase.cli.flags import database_option
from profilebase.cli.options import (
    direct_database,
    direct_option,
    json_option,
    open_client,
    remote_options,
)
from profilebase.cli.stores import direct_store, opened, redact
from profilebase.errors import ProfilebaseError
from profilebase.models import KeyKind


def operator() -> str:
    """Who runs this command, for the record a cancel keeps: user@host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command("export")
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
        click.echo("warning: " + unkeyed_warning(unkeyed, key_kind), err=True)


def unkeyed_warning(count: int, key_kind: KeyKind) -> str:
    """What to tell a person whose batch export left ``count`` profiles out."""
    if key_kind is KeyKind.PC_ID:
        why = (
            "have no tntId (pcId): thirdPartyId batches created them and no page call "
            "linked a visitor to them"
        )
        other = "--key thirdPartyId"
    else:
        why = "have no thirdPartyId: they are anonymous visitors' profiles"
        other = "--key pcId"
    return (
        f"{count:,} profile(s) {why}, so this batch file has no row for them. Export with "
        f"{other} for those, or with --format jsonl for every profile with all its ids."
    )


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


@click.command("delete")
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


@click.group()
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


@click.command("copy")
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

    require_server()
    from profilebase.server.settings import Settings
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


@click.command("backup")
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


@click.command("import")
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


COMMANDS = [export_command, import_command, delete_command, batches, copy_command, backup_command]
