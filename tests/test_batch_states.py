"""The batch state machine (server/batches.py): every state, every rule that leads to one,
and which rule wins when several hold."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from profilebase.models import Batch, BatchState, Counts, KeyKind, Limits, from_ms
from profilebase.server.batches import Standing, rows_per_second, standing, state_of
from profilebase.server.storage.base import UnitsSummary

#: Wednesday 2025-01-15 10:00 UTC (within mon-fri 09:00-18:00), and the Saturday after.
WEDNESDAY_10 = int(datetime(2025, 1, 15, 10, 0, tzinfo=UTC).timestamp() * 1000)
SATURDAY_10 = int(datetime(2025, 1, 18, 10, 0, tzinfo=UTC).timestamp() * 1000)
STUCK_AFTER = 900.0
PACED = Limits(ingest_rows_per_second=100, business_hours="mon-fri 09:00-18:00 UTC")
UNPACED = Limits()


def batch(
    state: BatchState = BatchState.QUEUED,
    progress: int = WEDNESDAY_10,
    throttled_until: int | None = None,
    started: int | None = None,
    finished: int | None = None,
    consumed: int = 0,
) -> Batch:
    return Batch(
        seq=7,
        batch_id="acme-1-7",
        client_id=1,
        client_code="acme",
        version=2,
        key_kind=KeyKind.THIRD_PARTY_ID,
        batch_size=10,
        state=state,
        counts=Counts(consumed, consumed, 0, 0),
        accepted_at=from_ms(WEDNESDAY_10 - 60_000),
        started_at=None if started is None else from_ms(started),
        finished_at=None if finished is None else from_ms(finished),
        last_progress_at=from_ms(progress),
        units_total=2,
        units_done=0,
        throttled_until=None if throttled_until is None else from_ms(throttled_until),
    )


def units(
    running: int = 0,
    retrying: int = 0,
    retry_at_ms: int | None = None,
    last_error: str | None = None,
    units_ahead: int = 0,
) -> UnitsSummary:
    return UnitsSummary(
        pending=2 - running,
        running=running,
        done=0,
        retrying=retrying,
        retry_at_ms=retry_at_ms,
        last_error=last_error,
        units_ahead=units_ahead,
    )


def test_a_new_batch_is_queued():
    """Rule 5: accepted, nothing claimed, nothing wrong: queued, without a reason."""
    assert standing(batch(), units(), WEDNESDAY_10 + 1000, STUCK_AFTER, UNPACED) == Standing(
        BatchState.QUEUED
    )


def test_a_queued_batch_says_how_much_work_is_ahead_of_it():
    """Rule 5: the units of earlier batches not done yet are the reason it waits."""
    found = standing(batch(), units(units_ahead=3), WEDNESDAY_10, STUCK_AFTER, UNPACED)
    assert found == Standing(
        BatchState.QUEUED, "3 unit(s) of earlier batches are ahead of this one"
    )


def test_a_started_batch_is_processing():
    """Rule 5: once a unit was claimed the stored state is processing, and so is the shown one."""
    started = batch(BatchState.PROCESSING, started=WEDNESDAY_10)
    assert standing(started, units(running=1), WEDNESDAY_10, STUCK_AFTER, UNPACED) == Standing(
        BatchState.PROCESSING
    )
    assert state_of(started, WEDNESDAY_10, STUCK_AFTER, UNPACED) is BatchState.PROCESSING


@pytest.mark.parametrize("stored", [BatchState.QUEUED, BatchState.PROCESSING])
def test_complete_is_for_good(stored: BatchState):
    """Rule 1: a finished batch is complete whatever else holds: old progress, a pause
    ahead, units that failed."""
    done = replace(
        batch(stored, progress=WEDNESDAY_10, throttled_until=WEDNESDAY_10 + 10**6),
        state=BatchState.COMPLETE,
        finished_at=from_ms(WEDNESDAY_10),
    )
    later = WEDNESDAY_10 + 10**9
    failing = units(retrying=1, last_error="boom")
    assert standing(done, failing, later, STUCK_AFTER, PACED) == Standing(BatchState.COMPLETE)
    assert state_of(done, later, STUCK_AFTER, PACED) is BatchState.COMPLETE
    assert BatchState.COMPLETE.target_status == "complete"


def test_paced_batch_is_throttled_until_its_clients_next_unit_may_start():
    """Rule 2: within business hours, a pause ahead throttles the batch, with the limit in
    the reason and the end of the pause."""
    paced = batch(throttled_until=WEDNESDAY_10 + 5000)
    found = standing(paced, units(), WEDNESDAY_10, STUCK_AFTER, PACED)
    assert found.state is BatchState.THROTTLED
    assert found.until == WEDNESDAY_10 + 5000
    assert found.reason == (
        "client 'acme' is paced to 100 rows per second (ingest_rows_per_second) during "
        "'mon-fri 09:00-18:00 UTC' (business_hours); its next unit may start at "
        "2025-01-15T10:00:05.000+00:00"
    )
    assert state_of(paced, WEDNESDAY_10, STUCK_AFTER, PACED) is BatchState.THROTTLED
    assert BatchState.THROTTLED.target_status == "incomplete"


def test_pacing_wins_over_stuck():
    """Rule 2 before rule 3: however long ago the last progress, a pause ahead is waiting."""
    paced = batch(progress=WEDNESDAY_10 - 10**7, throttled_until=WEDNESDAY_10 + 5000)
    assert state_of(paced, WEDNESDAY_10, STUCK_AFTER, PACED) is BatchState.THROTTLED


@pytest.mark.parametrize(
    ("now", "limits"),
    [
        (SATURDAY_10, PACED),  # outside business hours
        (WEDNESDAY_10, UNPACED),  # pacing switched off since
    ],
)
def test_a_pause_that_does_not_apply_now_throttles_nothing_and_stalls_nothing(
    now: int, limits: Limits
):
    """Rule 2 needs the rate to apply now; a pause still ahead then is not idle time either."""
    paced = batch(progress=now - 10**7, throttled_until=now + 5000)
    assert standing(paced, units(), now, STUCK_AFTER, limits) == Standing(BatchState.QUEUED)


def test_a_pause_that_ended_counts_as_progress():
    """Rule 3 counts the idle time from the later of the last progress and the end of the
    pause: stuck only ``stuck_after_seconds`` after the pause ended."""
    until = WEDNESDAY_10 + 5000
    paced = batch(progress=WEDNESDAY_10 - 10**7, throttled_until=until)
    limit = int(STUCK_AFTER * 1000)
    assert state_of(paced, until + limit, STUCK_AFTER, PACED) is BatchState.QUEUED
    assert state_of(paced, until + limit + 1, STUCK_AFTER, PACED) is BatchState.STUCK


def test_stuck_after_the_configured_time_without_progress():
    """Rule 3: stuck strictly after ``stuck_after_seconds`` without progress."""
    limit = int(STUCK_AFTER * 1000)
    assert state_of(batch(), WEDNESDAY_10 + limit, STUCK_AFTER, UNPACED) is BatchState.QUEUED
    assert state_of(batch(), WEDNESDAY_10 + limit + 1, STUCK_AFTER, UNPACED) is BatchState.STUCK
    assert BatchState.STUCK.target_status == "stuck"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            "database is locked",
            "no progress for over 900 s; the last attempt failed: database is locked",
        ),
        (
            None,
            "no progress for over 900 s and no error recorded: is a worker running "
            "(profilebase serve --workers 1 or more)?",
        ),
    ],
)
def test_a_stuck_batch_says_why(error: str | None, reason: str):
    """Rule 3: the reason is the last error, or the question whether a worker runs; rule 3
    comes before a retry that waits (rule 4)."""
    started = batch(BatchState.PROCESSING, started=WEDNESDAY_10)
    later = WEDNESDAY_10 + 901_000
    found = standing(started, units(retrying=1, last_error=error), later, STUCK_AFTER, UNPACED)
    assert found == Standing(BatchState.STUCK, reason)


def test_without_units_a_stuck_batch_has_no_reason():
    """Target's batchStatus and the dashboard's lists do not read units: state only."""
    found = standing(batch(), None, WEDNESDAY_10 + 901_000, STUCK_AFTER, UNPACED)
    assert found == Standing(BatchState.STUCK)


@pytest.mark.parametrize(
    ("retry_at", "error", "reason"),
    [
        (WEDNESDAY_10 + 30_000, "database is locked",
         "waiting: database is locked; next attempt at 2025-01-15T10:00:30.000+00:00"),
        (None, None, "waiting: an attempt failed"),
    ],
)  # fmt: skip
def test_a_unit_waiting_for_its_retry_throttles_the_batch(
    retry_at: int | None, error: str | None, reason: str
):
    """Rule 4: a unit that failed waits for its retry while none runs: throttled, until the
    retry, with the error."""
    started = batch(BatchState.PROCESSING, started=WEDNESDAY_10)
    waiting = units(retrying=1, retry_at_ms=retry_at, last_error=error)
    found = standing(started, waiting, WEDNESDAY_10 + 1000, STUCK_AFTER, UNPACED)
    assert found == Standing(BatchState.THROTTLED, reason, retry_at)


def test_a_retry_waiting_beside_a_running_unit_is_processing():
    """Rule 4 holds only while no unit runs: work goes on, so the batch is processing."""
    started = batch(BatchState.PROCESSING, started=WEDNESDAY_10)
    both = units(running=1, retrying=1, last_error="boom")
    found = standing(started, both, WEDNESDAY_10 + 1000, STUCK_AFTER, UNPACED)
    assert found == Standing(BatchState.PROCESSING)


def test_without_units_a_retry_that_waits_shows_the_stored_state():
    """Rule 4 needs the units: without them the batch shows its stored state."""
    started = batch(BatchState.PROCESSING, started=WEDNESDAY_10)
    assert state_of(started, WEDNESDAY_10 + 1000, STUCK_AFTER, UNPACED) is BatchState.PROCESSING
    assert state_of(batch(), WEDNESDAY_10 + 1000, STUCK_AFTER, UNPACED) is BatchState.QUEUED


def test_a_batch_moves_back_and_forth_as_time_passes():
    """One batch over time: throttled by a pause, queued once it ends, stuck when nothing
    follows, and complete for good once finished."""
    until = WEDNESDAY_10 + 5000
    paced = batch(throttled_until=until)
    seen = [
        state_of(paced, moment, STUCK_AFTER, PACED)
        for moment in (WEDNESDAY_10, until + 1, until + 900_001)
    ]
    assert seen == [BatchState.THROTTLED, BatchState.QUEUED, BatchState.STUCK]
    moving = replace(paced, state=BatchState.PROCESSING, last_progress_at=from_ms(until + 900_001))
    assert state_of(moving, until + 900_001, STUCK_AFTER, PACED) is BatchState.PROCESSING
    done = replace(moving, state=BatchState.COMPLETE, finished_at=from_ms(until + 900_002))
    assert state_of(done, until + 10**9, STUCK_AFTER, PACED) is BatchState.COMPLETE


@pytest.mark.parametrize(
    ("started", "finished", "consumed", "now", "rate"),
    [
        (None, None, 0, WEDNESDAY_10, None),  # not started
        (WEDNESDAY_10, None, 0, WEDNESDAY_10 + 1000, None),  # nothing consumed yet
        (WEDNESDAY_10, None, 10, WEDNESDAY_10, None),  # no time elapsed
        (WEDNESDAY_10, None, 10, WEDNESDAY_10 + 4000, 2.5),  # running: up to now
        (WEDNESDAY_10, WEDNESDAY_10 + 2000, 10, WEDNESDAY_10 + 10**6, 5.0),  # to the finish
    ],
)
def test_rows_per_second(
    started: int | None, finished: int | None, consumed: int, now: int, rate: float | None
):
    """Rows consumed per second since the first claim, to the finish or to now."""
    state = BatchState.QUEUED if started is None else BatchState.PROCESSING
    subject = batch(state, started=started, finished=finished, consumed=consumed)
    assert rows_per_second(subject, now) == rate
