"""Batch status over time: stuck when nothing progresses, retention and purge."""

from __future__ import annotations

from datetime import timedelta

import httpx
from helpers import apply_claim, batch_id_of, status, submit

from profilebase.models import BatchState, Limits, now_ms
from profilebase.server.batches import state_of
from profilebase.server.storage import Store


def test_stuck_only_after_the_configured_time_without_progress(
    http: httpx.Client, store: Store, drain
):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\n"))
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.state is BatchState.QUEUED
    accepted = int(batch.last_progress_at.timestamp() * 1000)
    assert state_of(batch, accepted + 899_000, 900, Limits()) is BatchState.QUEUED
    assert state_of(batch, accepted + 901_000, 900, Limits()) is BatchState.STUCK
    assert BatchState.STUCK.target_status == "stuck"
    drain()
    done = store.get_batch(1, batch_id)
    assert done is not None
    assert state_of(done, accepted + 10**9, 900, Limits()) is BatchState.COMPLETE
    assert status(http, batch_id)["status"] == "complete"


def test_purge_drops_finished_batches_past_retention_only(http: httpx.Client, store: Store, drain):
    old = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\n,bad\n"))
    drain()
    pending = batch_id_of(submit(http, b"batch=thirdPartyId,a\ny,1\n"))
    finished = store.get_batch(1, old)
    assert finished is not None and store.failed_rows(finished.seq)
    cutoff = int((finished.accepted_at + timedelta(milliseconds=1)).timestamp() * 1000)
    assert store.purge(cutoff) == 1
    assert store.get_batch(1, old) is None
    assert store.failed_rows(finished.seq) == []
    assert store.get_batch(1, pending) is not None  # not finished: kept whatever its age
    assert store.purge(now_ms() + 10**9) == 0
    response = http.get("/m2/demo/profile/batchStatus", params={"batchId": old})
    assert response.status_code == 404


def test_a_batch_waiting_behind_moving_work_is_not_stuck(http: httpx.Client, store: Store, drain):
    """Progress of an earlier batch counts: the later one is waiting, not stuck."""
    first = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\n"))
    second = batch_id_of(submit(http, b"batch=thirdPartyId,a\ny,1\n", v2=False))
    claim = store.claim_unit("w", now_ms(), 60_000)
    assert claim is not None
    store.release_unit(claim, "boom", now_ms() + 10**9)  # the first batch cannot proceed
    drain()
    before = store.get_batch(1, second)
    assert before is not None and before.state is BatchState.QUEUED
    claim = store.claim_unit("w", now_ms() + 10**9, 60_000)
    assert claim is not None and claim.batch_seq == store.get_batch(1, first).seq
    assert apply_claim(store, claim) is not None
    after = store.get_batch(1, second)
    assert after is not None and after.last_progress_at > before.last_progress_at
