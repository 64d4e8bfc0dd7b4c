"""Workers: claim a unit with a lease, decode it, apply it, repeat.

A worker holds a lease on one unit at a time. Applying a unit and marking it
done is one transaction, so a worker killed at any moment leaves the unit
either untouched (its lease expires and another worker takes it) or done.
A unit that raises is given back and retried with a growing delay; its batch
reports ``stuck`` if nothing progresses for ``stuck_after_seconds``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid

from profilebase import batchfile
from profilebase.config import Settings, client_limits
from profilebase.decoder import decode_unit
from profilebase.models import DAY_MS, Counts, now_ms
from profilebase.storage.base import Store, UnitClaim

log = logging.getLogger("profilebase.worker")
PURGE_EVERY_MS = 3_600_000


class Worker:
    """Applies units from ``store`` until told to stop (or, for tests, until idle)."""

    def __init__(self, store: Store, settings: Settings | None = None, name: str = "") -> None:
        self.store = store
        self.settings = settings or Settings()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.applied = Counts()
        self._last_purge = 0

    def run_once(self) -> bool:
        """Claim and apply one unit; return False if there was nothing to do."""
        now = now_ms()
        claim = self.store.claim_unit(self.name, now, int(self.settings.lease_seconds * 1000))
        if claim is None:
            return False
        self.process(claim)
        return True

    def process(self, claim: UnitClaim) -> None:
        try:
            header = batchfile.Header(claim.key_kind, claim.names)
            now = now_ms()
            rows, failures = decode_unit(
                claim.body, claim.first_line, header, claim.batch_seq, now
            )
            limits = client_limits(self.settings, claim.client_limits)
            counts = self.store.apply_unit(
                claim,
                rows,
                failures,
                now,
                limits.max_profile_bytes,
                expire_before_ms=limits.expire_before_ms(now),
            )
        except Exception as exc:  # a bug or a database outage: retry later, never drop
            attempt_delay = min(60_000, 1000 * 2 ** min(claim.attempts, 6))
            log.error(
                "unit %s/%s failed, retrying in %d ms: %s\n%s",
                claim.batch_seq,
                claim.unit_no,
                attempt_delay,
                exc,
                traceback.format_exc(),
            )
            try:
                self.store.release_unit(claim, repr(exc), now_ms() + attempt_delay)
            except Exception:  # the lease expires on its own
                log.exception("could not release unit %s/%s", claim.batch_seq, claim.unit_no)
            return
        if counts is not None:
            self.applied = self.applied + counts

    def run(self, until_idle: bool = False, stop: threading.Event | None = None) -> None:
        """Work until ``stop`` is set; with ``until_idle``, return once no unit is claimable."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("worker %s could not claim work", self.name)
                busy = False
            if not busy:
                if until_idle:
                    return
                self.housekeeping()
                stop.wait(self.settings.poll_interval)

    def housekeeping(self) -> None:
        """Purge statuses past their retention and expired profiles, at most once an hour."""
        now = now_ms()
        if now - self._last_purge < PURGE_EVERY_MS:
            return
        self._last_purge = now
        retention_ms = int(self.settings.status_retention_days * DAY_MS)
        try:
            self.store.purge(now - retention_ms)
        except Exception:
            log.exception("purging old batch statuses failed")
        try:
            self.expire_profiles(now)
        except Exception:
            log.exception("deleting expired profiles failed")

    def expire_profiles(self, now: int) -> int:
        """Delete the profiles of every client with expiry on that were inactive too long."""
        deleted = 0
        for client in self.store.list_clients():
            before = client_limits(self.settings, client.limits).expire_before_ms(now)
            if before:
                deleted += self.store.expire_profiles(client.id, before)
        return deleted


class WorkerPool:
    """N worker threads inside the server process."""

    def __init__(self, store: Store, settings: Settings, count: int) -> None:
        self.stop = threading.Event()
        self.workers = [Worker(store, settings) for _ in range(count)]
        self.threads = [
            threading.Thread(target=w.run, kwargs={"stop": self.stop}, name=f"worker-{i}", daemon=True)
            for i, w in enumerate(self.workers)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
