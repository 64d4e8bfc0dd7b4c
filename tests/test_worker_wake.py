"""An idle worker starts on a new batch at once, not after its poll interval."""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx
from helpers import batch_id_of, status, submit

from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.worker import Worker


def test_an_idle_worker_wakes_for_a_new_batch(http: httpx.Client, store: Store, settings: Settings):
    """With a poll interval of an hour, batches accepted while the worker waits are applied:
    it watches for new batches between its claims."""
    worker = Worker(store, dataclasses.replace(settings, poll_interval=3600))
    idle = threading.Event()
    claim = worker.run_once

    def run_once() -> bool:
        busy = claim()
        if not busy:
            idle.set()
        return busy

    worker.run_once = run_once  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        for n in range(2):
            assert idle.wait(60), "the worker never found itself idle"
            idle.clear()
            batch_id = batch_id_of(submit(http, f"batch=thirdPartyId,n\nw{n},{n}\n".encode()))
            deadline = time.monotonic() + 60  # a bound for a failing test, not a measurement
            while status(http, batch_id)["status"] != "complete":
                assert time.monotonic() < deadline, "the batch waited for the poll interval"
                time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
