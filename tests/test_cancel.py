"""Cancelling a batch: rows not yet applied fail with reason "cancelled", exact counts,
nothing applied undone, a unit being applied either wins or loses whole, who cancelled."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from click.testing import CliRunner
from helpers import apply_claim, batch_id_of, submit

from profilebase import batchfile
from profilebase.cli import main
from profilebase.errors import BatchFinished
from profilebase.models import BatchState, Limits, now_ms
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.worker import Worker

LEASE = 60_000
#: Five units: the first of 25 rows (half the test settings' unit_rows), then four of 50.
ROWS = 225


def body(rows: int = ROWS, prefix: str = "c") -> bytes:
    return batchfile.encode(
        "thirdPartyId", ["n"], [[f"{prefix}{i:04d}", str(i)] for i in range(rows)]
    )


def accept(store: Store, data: bytes, version: int = 2) -> tuple[int, str]:
    client = store.get_client("demo")
    assert client is not None
    limits = Limits(
        max_batch_bytes=10**9, max_batch_rows=10**6, rows_per_day=10**9, max_profile_bytes=10**6
    )
    intake = Intake(limits, 50)
    intake.feed(data)
    return store_batch(store, client, version, intake.finish(), limits, now_ms())


def stored_ids(store: Store, prefix: str = "c") -> set[str]:
    found = set()
    for i in range(ROWS):
        if store.get_profile(1, f"t:{prefix}{i:04d}") is not None:
            found.add(f"{prefix}{i:04d}")
    return found


def all_failures(store: Store, seq: int) -> list:
    return store.failed_rows(seq, 0, 10_000)


def test_cancel_mid_batch_counts_every_row_exactly(store: Store):
    """Two units applied (75 rows), one leased, two pending: the three not applied fail as cancelled;
    the leased unit's apply then writes nothing; the batch is complete."""
    seq, batch_id = accept(store, body())
    for _ in range(2):
        claim = store.claim_unit("w1", now_ms(), LEASE)
        assert claim is not None and apply_claim(store, claim) is not None
    leased = store.claim_unit("w2", now_ms(), LEASE)
    assert leased is not None and leased.unit_no == 2

    outcome = store.cancel_batch(1, batch_id, "alice", now_ms())
    assert outcome is not None and outcome.rows_cancelled == 150 and not outcome.already
    assert outcome.cancellation.by == "alice"

    assert apply_claim(store, leased) is None  # lost to the cancel: nothing written
    assert store.claim_unit("w3", now_ms(), LEASE) is None
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.state is BatchState.COMPLETE
    counts = batch.counts
    assert (counts.consumed, counts.successful, counts.not_found, counts.failed) == (
        225,
        75,
        0,
        150,
    )
    failures = all_failures(store, seq)
    assert [f.line for f in failures] == list(range(77, 227))  # lines 2..76 were applied
    assert {f.reason for f in failures} == {"cancelled"}
    assert failures[0].id == "c0075" and failures[0].raw == "c0075,75"
    assert stored_ids(store) == {f"c{i:04d}" for i in range(75)}
    cancellation = store.batch_cancellation(seq)
    assert cancellation is not None and cancellation.by == "alice"


def test_a_unit_applied_before_the_cancel_stays_applied(store: Store):
    """The race's other outcome: the unit committed first, so it counts as applied."""
    _, batch_id = accept(store, body())
    claim = store.claim_unit("w1", now_ms(), LEASE)
    assert claim is not None
    assert apply_claim(store, claim) is not None
    outcome = store.cancel_batch(1, batch_id, "bob", now_ms())
    assert outcome is not None and outcome.rows_cancelled == 200
    batch = store.get_batch(1, batch_id)
    assert batch is not None and (batch.counts.successful, batch.counts.failed) == (25, 200)


def test_cancel_again_changes_nothing_and_a_completed_batch_cannot_be_cancelled(
    store: Store, drain
):
    _, cancelled = accept(store, body())
    store.cancel_batch(1, cancelled, "alice", now_ms())
    again = store.cancel_batch(1, cancelled, "bob", now_ms())
    assert again is not None and again.already and again.rows_cancelled == 0
    assert again.cancellation.by == "alice"
    _, done = accept(store, body(prefix="d"))
    drain()
    with pytest.raises(BatchFinished, match="already completed"):
        store.cancel_batch(1, done, "alice", now_ms())
    assert store.cancel_batch(1, "demo-0-0", "alice", now_ms()) is None


def test_a_v1_batch_waiting_behind_a_cancelled_one_runs(store: Store, drain):
    """v1 units wait for every earlier batch of their client; a cancelled one is done."""
    _, first = accept(store, body())
    _, second = accept(store, body(prefix="c"), version=1)
    assert store.claim_unit("w", now_ms(), LEASE).batch_seq  # type: ignore[union-attr]
    store.cancel_batch(1, first, "alice", now_ms() + 1)
    drain()
    batch = store.get_batch(1, second)
    assert batch is not None and batch.state is BatchState.COMPLETE
    # the first unit of the first batch was leased, never applied: its rows were cancelled,
    # so v1 rows find no profile.
    assert batch.counts.not_found == ROWS


def test_cancel_while_workers_apply_accounts_for_every_row(store: Store, settings: Settings):
    """Workers apply units while the batch is cancelled: whatever the interleaving, each row
    is either applied (its profile exists) or failed as cancelled, never both, never lost.
    Should the workers finish a batch before the cancel comes (a busy machine may hold this
    thread back that long), the test tries again with another."""
    stop = threading.Event()
    workers = [Worker(store, settings, name=f"w{i}") for i in range(2)]
    threads = [threading.Thread(target=w.run, kwargs={"stop": stop}) for w in workers]
    for thread in threads:
        thread.start()
    outcome = None
    try:
        for attempt in range(5):
            prefix = f"c{attempt}-"
            seq, batch_id = accept(store, body(1000, prefix))
            for _ in range(1_000_000):  # until a unit is applied (bounded, should a worker die)
                if store.get_batch(1, batch_id).counts.consumed:  # type: ignore[union-attr]
                    break
            try:
                outcome = store.cancel_batch(1, batch_id, "alice", now_ms())
                break
            except BatchFinished:
                continue
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert outcome is not None
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.state is BatchState.COMPLETE
    counts = batch.counts
    assert counts.consumed == 1000 and counts.successful + counts.failed == 1000
    assert counts.failed == outcome.rows_cancelled
    failed_lines = {f.line for f in store.failed_rows(seq, 0, 10_000)}
    assert len(failed_lines) == counts.failed
    present = {
        line
        for line in range(2, 1002)
        if store.get_profile(1, f"t:{prefix}{line - 2:04d}") is not None
    }
    assert len(present) == counts.successful and not present & failed_lines


# -- over HTTP and from the command line -------------------------------------------------


def test_cancel_endpoint_records_who_and_reports_exact_counts(http: httpx.Client, store: Store):
    batch_id = batch_id_of(submit(http, body()))
    claim = store.claim_unit("w1", now_ms(), LEASE)
    assert claim is not None and apply_claim(store, claim) is not None
    path = f"/profilebase/v1/clients/demo/batches/{batch_id}"
    response = http.post(path + "/cancel", json={"by": "alice"})
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["rowsCancelled"] == 200 and status["alreadyCancelled"] is False
    assert status["status"] == "complete" and status["state"] == "complete"
    assert (status["consumedCount"], status["successfulUpdates"], status["failedUpdates"]) == (
        225,
        25,
        200,
    )
    assert status["cancelled"]["by"].startswith("alice (API from 127.0.0.1")
    shown = http.get(path).json()
    assert shown["cancelled"] == status["cancelled"]
    failures = http.get(path + "/failures", params={"limit": 1}).json()
    assert failures["failures"][0]["reason"] == "cancelled" and failures["failedUpdates"] == 200
    again = http.post(path + "/cancel")
    assert again.status_code == 200 and again.json()["alreadyCancelled"] is True


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"not json", "must be JSON"),
        (b"[1]", "must be a JSON object"),
        (json.dumps({"by": "x" * 201}).encode(), "at most 200 characters"),
        (json.dumps({"by": "a\nb"}).encode(), "printable"),
    ],
)
def test_cancel_bodies_that_make_no_sense_are_400(
    http: httpx.Client, content: bytes, fragment: str
):
    batch_id = batch_id_of(submit(http, body()))
    response = http.post(f"/profilebase/v1/clients/demo/batches/{batch_id}/cancel", content=content)
    assert response.status_code == 400 and fragment in response.json()["message"]
    assert http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()["cancelled"] is None


def test_completed_or_unknown_batches_are_refused(http: httpx.Client, drain):
    batch_id = batch_id_of(submit(http, body()))
    drain()
    response = http.post(f"/profilebase/v1/clients/demo/batches/{batch_id}/cancel")
    assert response.status_code == 409 and "nothing left to cancel" in response.json()["message"]
    missing = http.post("/profilebase/v1/clients/demo/batches/demo-1-1/cancel")
    assert missing.status_code == 404


def test_batch_list_shows_newest_first_and_filters_unfinished(http: httpx.Client, drain):
    done = batch_id_of(submit(http, body()))
    drain()
    queued = batch_id_of(submit(http, body(prefix="q")))
    listed = http.get("/profilebase/v1/clients/demo/batches").json()["batches"]
    assert [b["batchId"] for b in listed] == [queued, done]
    unfinished = http.get("/profilebase/v1/clients/demo/batches", params={"unfinished": "true"})
    assert [b["batchId"] for b in unfinished.json()["batches"]] == [queued]
    bad = http.get("/profilebase/v1/clients/demo/batches", params={"limit": "0"})
    assert bad.status_code == 400 and "between 1 and 1000" in bad.json()["message"]


@pytest.fixture
def remote(live_server, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PROFILEBASE_URL", live_server.url)
    monkeypatch.setenv("PROFILEBASE_CLIENT", "demo")

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args))

    return invoke


@pytest.mark.parametrize("direct", [False, True], ids=["url", "database"])
def test_batches_commands_list_show_and_cancel(
    remote, http: httpx.Client, settings: Settings, direct: bool
):  # type: ignore[no-untyped-def]
    """The same commands against the server and directly on its database."""
    where = ["--database", settings.database] if direct else []
    batch_id = batch_id_of(submit(http, body()))
    listed = remote("batches", "list", "--unfinished", *where)
    assert listed.exit_code == 0, listed.output
    assert batch_id in listed.stdout and "queued" in listed.stdout
    cancelled = remote("batches", "cancel", batch_id, "--by", "carol", *where)
    assert cancelled.exit_code == 0, cancelled.output
    assert "225 row(s) not yet applied now count as failed" in cancelled.stdout
    assert "failedUpdates: 225" in cancelled.stdout and "cancelledBy: carol" in cancelled.stdout
    shown = remote("batches", "show", batch_id, "--json", *where)
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert status["status"] == "complete" and status["failedUpdates"] == 225
    assert status["cancelled"]["by"].startswith("carol")
    assert remote("batches", "list", "--unfinished", *where).stdout.count("\n") == 1  # header only
    again = remote("batches", "cancel", batch_id, *where)
    assert again.exit_code == 0 and "already been cancelled" in again.stdout
    unknown = remote("batches", "show", "demo-1-1", *where)
    assert unknown.exit_code == 3 and "No batch 'demo-1-1'" in unknown.output


def test_database_and_url_together_are_a_usage_error(remote, settings: Settings):  # type: ignore[no-untyped-def]
    result = remote(
        "batches", "list", "--url", "http://127.0.0.1:1", "--database", settings.database
    )
    assert result.exit_code == 2 and "not both" in result.output
