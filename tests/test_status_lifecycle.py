"""Batch status over time: stuck when nothing progresses, retention and purge."""

from __future__ import annotations

from datetime import timedelta

import httpx

from helpers import batch_id_of, status, submit
from profilebase.models import BatchState, now_ms
from profilebase.storage import Store
from profilebase.web.bulk import effective_state


def test_stuck_only_after_the_configured_time_without_progress(http: httpx.Client, store: Store, drain):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\n"))
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.state is BatchState.QUEUED
    accepted = int(batch.last_progress_at.timestamp() * 1000)
    assert effective_state(batch, accepted + 899_000, 900) is BatchState.QUEUED
    assert effective_state(batch, accepted + 901_000, 900) is BatchState.STUCK
    assert BatchState.STUCK.target_status == "stuck"
    drain()
    done = store.get_batch(1, batch_id)
    assert done is not None
    assert effective_state(done, accepted + 10**9, 900) is BatchState.COMPLETE
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
