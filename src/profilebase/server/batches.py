"""The states of a batch and what moves it between them: one model, pure (no I/O).

A batch is stored with times, not with a state; its stored state follows from them
(``storage.records.batch_from_row``):

- ``queued``: accepted and on disk, no unit claimed yet (no ``started_at``);
- ``processing``: a worker claimed its first unit (``started_at`` set);
- ``complete``: its last unit is done, or it was cancelled (``finished_at`` set).

So a stored batch only moves forward: queued → processing → complete (queued →
complete for a cancel before any unit ran, or a batch without units). What a reply
shows is derived from that, as of now, by ``standing``; the first rule that holds wins:

1. **complete** stays complete.
2. **throttled** (paced): its client's ``ingest_rows_per_second`` applies now (within
   ``business_hours``) and the client's next unit may not start before the batch's
   ``throttled_until``. Waiting for that is not being stuck: the idle time below counts
   from the later of the last progress and the end of the pause.
3. **stuck**: nothing progressed for ``stuck_after_seconds`` (Target's rule); workers
   keep retrying, and the reason is the last error, or that no worker ran.
4. **throttled** (waiting to retry): a unit failed and waits for its retry time while
   none runs. Only the units (``Units``) tell this; without them (Target's batchStatus,
   the dashboard's lists) such a batch shows its stored state.
5. Otherwise the stored state: **queued** (with the units of earlier batches still
   ahead of it, when known) or **processing**.

As time passes, a shown state may move back and forth between these (a pause ends, a
worker makes progress again), but ``complete`` is for good. Target's batchStatus words
are ``BatchState.target_status``: complete, stuck, or incomplete for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from profilebase.models import Batch, BatchState, Limits, from_ms, iso_ms_of


class Units(Protocol):
    """Where the work units of one batch stand (the store's ``UnitsSummary``)."""

    @property
    def running(self) -> int: ...

    @property
    def retrying(self) -> int:
        """Units waiting for a retry time still in the future."""

    @property
    def retry_at_ms(self) -> int | None:
        """The earliest of those retry times."""

    @property
    def last_error(self) -> str | None:
        """The error of the latest failed attempt on a unit not yet done."""

    @property
    def units_ahead(self) -> int:
        """Units of batches accepted earlier that are not done yet."""


@dataclass(frozen=True)
class Standing:
    """A batch's state as of a moment, the reason where one helps, and, for a throttled
    batch, when it may go on (ms since the epoch)."""

    state: BatchState
    reason: str | None = None
    until: int | None = None


def standing(
    batch: Batch, units: Units | None, now: int, stuck_after_seconds: float, limits: Limits
) -> Standing:
    """Where ``batch`` stands at ``now`` (ms), judged with its client's ``limits``; the
    rules are the module's. ``units`` may be None when they are not read."""
    if batch.state is BatchState.COMPLETE:
        return Standing(BatchState.COMPLETE)
    last = int(batch.last_progress_at.timestamp() * 1000)
    if batch.throttled_until is not None:
        until = int(batch.throttled_until.timestamp() * 1000)
        rate = limits.ingest_rate(from_ms(now)) if until > now else 0
        if rate:
            return Standing(
                BatchState.THROTTLED,
                f"client {batch.client_code!r} is paced to {rate:,} rows per second "
                f"(ingest_rows_per_second) during {limits.business_hours!r} "
                f"(business_hours); its next unit may start at {iso_ms_of(until)}",
                until,
            )
        last = max(last, until)
    if now - last > stuck_after_seconds * 1000:
        return Standing(BatchState.STUCK, stuck_reason(units, stuck_after_seconds))
    if units is not None and units.retrying and not units.running:
        # The worker stores a sentence for users (docs/design.md#when-applying-a-unit-fails).
        retry_at = (
            "" if units.retry_at_ms is None else f"; next attempt at {iso_ms_of(units.retry_at_ms)}"
        )
        return Standing(
            BatchState.THROTTLED,
            f"waiting: {units.last_error or 'an attempt failed'}{retry_at}",
            units.retry_at_ms,
        )
    if batch.state is BatchState.QUEUED:
        if units is not None and units.units_ahead:
            return Standing(
                BatchState.QUEUED,
                f"{units.units_ahead} unit(s) of earlier batches are ahead of this one",
            )
        return Standing(BatchState.QUEUED)
    return Standing(BatchState.PROCESSING)


def state_of(batch: Batch, now: int, stuck_after_seconds: float, limits: Limits) -> BatchState:
    """The state ``standing`` gives without the units (rules 1, 2, 3 and 5)."""
    return standing(batch, None, now, stuck_after_seconds, limits).state


def stuck_reason(units: Units | None, stuck_after_seconds: float) -> str | None:
    if units is None:
        return None
    if units.last_error:
        return (
            f"no progress for over {stuck_after_seconds:g} s; "
            f"the last attempt failed: {units.last_error}"
        )
    return (
        f"no progress for over {stuck_after_seconds:g} s and no error recorded: is a "
        "worker running (profilebase serve --workers 1 or more)?"
    )


def rows_per_second(batch: Batch, now: int) -> float | None:
    """Rows consumed per second since the first unit was claimed (to the finish, if any)."""
    if batch.started_at is None or not batch.counts.consumed:
        return None
    end = batch.finished_at.timestamp() if batch.finished_at else now / 1000
    elapsed = end - batch.started_at.timestamp()
    if elapsed <= 0:
        return None
    return round(batch.counts.consumed / elapsed, 1)
