"""What the client commands show a person: a progress bar while rows are applied, summaries.

The bar (rich, on stderr) counts rows applied out of rows sent, with the rate
and the time left; it is drawn only on a terminal, so logs and pipes get the
summary alone. Summaries go to stdout.
"""

from __future__ import annotations

import json
from datetime import datetime

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from profilebase.client.push import PushProgress, PushResult
from profilebase.client.replies import BatchStatus, RemoteProfile


class RateColumn(ProgressColumn):
    """Rows per second, as rich measures it over the last updates."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


class ProgressBar:
    """A rich progress bar fed by ``PushProgress`` or ``BatchStatus`` updates."""

    def __init__(self, description: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.task: TaskID = self.progress.add_task(description, total=None)

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def push(self, event: PushProgress) -> None:
        if event.phase == "uploading":
            description = f"uploading part {event.parts_sent}/{event.parts_total}"
        else:
            description = "applying" if event.phase == "applying" else "done"
        self.progress.update(
            self.task,
            description=description,
            total=event.rows_total,
            completed=event.rows_applied,
        )

    def rows(self, description: str, completed: int, total: int) -> None:
        """Any other work counted in rows (``profilebase copy``)."""
        self.progress.update(self.task, description=description, total=total, completed=completed)

    def status(self, status: BatchStatus) -> None:
        self.progress.update(
            self.task,
            description=status.state or status.status,
            total=status.batch_size,
            completed=status.applied,
        )


def push_summary(result: PushResult, source: str, seconds: float, errors_out: str | None) -> None:
    """Print what a push did: rows read, sent, applied, failed, and where the failures are."""
    echo = click.echo
    ignored = f"; not pushed: {', '.join(result.ignored_columns)}" if result.ignored_columns else ""
    echo(f"read {result.rows_read:,} rows from {source} (id column {result.id_column!r}{ignored})")
    refused = result.refused
    if result.dry_run:
        would_fail = len(result.failures)
        echo(
            f"dry run: {result.rows_read - would_fail:,} rows would be applied, "
            f"{would_fail:,} would fail; nothing was applied"
        )
    else:
        batches = ", ".join(p.batch_id for p in result.parts) or "none"
        echo(f"sent {result.rows_sent:,} rows in {len(result.parts)} batch(es): {batches}")
        if result.waited:
            echo(
                f"applied {result.applied:,} · not found {result.not_found:,} · "
                f"failed {result.failed:,} · refused before sending {refused:,}"
            )
            for part in result.stuck:
                reason = part.status.reason if part.status is not None else None
                echo(f"batch {part.batch_id} is stuck" + (f": {reason}" if reason else ""))
            if not result.finished:
                echo("not every batch finished in time; see `profilebase status BATCH_ID`")
        else:
            echo(f"not waited for; refused before sending {refused:,}")
    if result.not_found:
        echo(
            f"{result.not_found:,} rows name profiles that do not exist; v1 does not create "
            "them (push without --v1 to create them)"
        )
    rate = result.rows_sent / seconds if seconds > 0 and not result.dry_run else 0
    echo(f"took {seconds:.1f} s" + (f" ({rate:,.0f} rows/s)" if rate else ""))
    if errors_out is not None:
        echo(f"{len(result.failures):,} failed rows written to {errors_out}")
    elif result.failures:
        first = result.failures[0]
        echo(
            f"first failure: line {first.line} (id {first.id!r}): {first.reason}; "
            "use --errors-out PATH to get every failed row"
        )


def status_summary(status: BatchStatus) -> None:
    """Print a batch status, field by field."""
    fields = {
        "batchId": status.batch_id,
        "status": status.status,
        "state": status.state,
        "reason": status.reason,
        "throttledUntil": status.throttled_until,
        "batchSize": status.batch_size,
        "consumedCount": status.consumed,
        "successfulUpdates": status.successful,
        "profilesNotFound": status.not_found,
        "failedUpdates": status.failed,
        "acceptedAt": status.accepted_at,
        "startedAt": status.started_at,
        "finishedAt": status.finished_at,
        "rowsPerSecond": status.rows_per_second,
        "cancelledAt": status.cancelled_at,
        "cancelledBy": status.cancelled_by,
    }
    for name, value in fields.items():
        if isinstance(value, datetime):
            value = timestamp(value)
        if value is not None:
            click.echo(f"{name}: {value}")
    for identifier in status.failed_ids:
        click.echo(f"failed: {identifier}")


def status_dict(status: BatchStatus) -> dict[str, object]:
    """A batch status as JSON-ready fields, named as the server's JSON status names them."""
    return {
        "batchId": status.batch_id,
        "status": status.status,
        "state": None if status.state is None else str(status.state),
        "reason": status.reason,
        "batchSize": status.batch_size,
        "consumedCount": status.consumed,
        "successfulUpdates": status.successful,
        "profilesNotFound": status.not_found,
        "failedUpdates": status.failed,
        "acceptedAt": timestamp(status.accepted_at),
        "startedAt": timestamp(status.started_at),
        "finishedAt": timestamp(status.finished_at),
        "cancelled": None
        if status.cancelled_at is None
        else {"at": timestamp(status.cancelled_at), "by": status.cancelled_by},
    }


def batch_table(statuses: list[BatchStatus]) -> None:
    """One line per batch: id, state, rows, applied, not found, failed, accepted."""
    click.echo(
        f"{'BATCH ID':<36} {'STATE':<10} {'ROWS':>9} {'APPLIED':>9} {'NOT FOUND':>9} "
        f"{'FAILED':>9}  ACCEPTED"
    )
    for s in statuses:
        state = "cancelled" if s.cancelled_at is not None else str(s.state or s.status)
        click.echo(
            f"{s.batch_id:<36} {state:<10} {s.batch_size or 0:>9,} {s.successful or 0:>9,} "
            f"{s.not_found or 0:>9,} {s.failed or 0:>9,}  {timestamp(s.accepted_at) or '-'}"
        )


def profile_json(profile: RemoteProfile) -> str:
    """A fetched profile as Target's fetch JSON, indented."""
    return json.dumps(
        {
            "client": profile.client,
            "visitorId": profile.visitor_id,
            "modifiedAt": timestamp(profile.modified_at),
            "profileAttributes": {
                name: {"value": a.value, "modifiedAt": timestamp(a.modified_at)}
                for name, a in sorted(profile.attributes.items())
            },
        },
        ensure_ascii=False,
        indent=2,
    )


def timestamp(moment: datetime | None) -> str | None:
    """ISO-8601 with milliseconds, as Target prints timestamps."""
    return None if moment is None else moment.isoformat(timespec="milliseconds")
