"""Workers: claim a unit with a lease, decode it, apply it, repeat.

A worker holds a lease on one unit at a time. A unit is applied in parts (one
for most units), each part and the unit's progress in one transaction, so a
worker killed at any moment leaves the unit at a part boundary: its lease
expires and another worker goes on from there. When applying raises, the
narrowing rule (``narrowing.py``) decides: a transient error gives the unit
back to be retried after a growing delay, any other error is narrowed down to
the rows that cause it, which fail alone.

A unit's per-client limits (``max_profile_bytes``, profile expiry) come with
its claim. Pacing needs them before the claim: each worker keeps a copy of the
clients' limits, re-read every few seconds, and hands the clients whose
``ingest_rows_per_second`` applies now (during their ``business_hours``) to
``Store.claim_unit``, so that the store paces their units
(docs/design.md#quotas-and-throttled-ingestion).

Workers run as threads inside ``serve`` (``WorkerPool``) or as processes of
their own, on any machine that reaches the database (``run_processes``, the
``profilebase worker`` command).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from profilebase import batchfile
from profilebase.models import DAY_MS, Counts, Limits, from_ms, now_ms
from profilebase.server import logs, profile_import
from profilebase.server.decoder import UnitDecoder
from profilebase.server.metrics import Metrics, serve_worker_metrics
from profilebase.server.narrowing import (
    GiveBack,
    UnitApplication,
    decoded_parts,
    new_error_id,
    retry_delay_ms,
)
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import open_settings_store
from profilebase.server.storage.base import Store, UnitClaim
from profilebase.server.supervisor import Child, Supervisor, stop_on_signals

log = logging.getLogger("profilebase.server.worker")
PURGE_EVERY_MS = 3_600_000
#: How often a worker re-reads the clients' limits; changes apply within this time.
CLIENTS_REFRESH_MS = 2_000
#: How often an idle worker looks whether a new batch was accepted (seconds).
WAKE_CHECK = 0.02


class Worker:
    """Applies units from ``store`` until told to stop (or, for tests, until idle)."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        name: str = "",
        clock: Callable[[], int] = now_ms,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.metrics = metrics or Metrics()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.applied = Counts()
        self._last_purge = 0
        self._limits: dict[int, Limits] = {}
        self._limits_read_at: int | None = None

    def run_once(self) -> bool:
        """Claim and apply one unit; return False if there was nothing to do."""
        now = self.clock()
        claim = self.store.claim_unit(
            self.name, now, int(self.settings.lease_seconds * 1000), self.paced(now)
        )
        if claim is None:
            return False
        self.process(claim)
        return True

    def all_limits(self) -> dict[int, Limits]:
        """Every client's limits by client id, from a copy at most ``CLIENTS_REFRESH_MS`` old."""
        now = self.clock()
        if self._limits_read_at is None or now - self._limits_read_at >= CLIENTS_REFRESH_MS:
            self._limits = {
                client.id: client_limits(self.settings, client.limits)
                for client in self.store.list_clients()
            }
            self._limits_read_at = now
        return self._limits

    def paced(self, now: int) -> dict[int, int]:
        """Clients whose ingestion is limited right now, with their rows per second."""
        moment = from_ms(now)
        rates = {cid: limits.ingest_rate(moment) for cid, limits in self.all_limits().items()}
        return {cid: rate for cid, rate in rates.items() if rate}

    def process(self, claim: UnitClaim) -> None:
        """Decode and apply a unit part by part; give it back to be retried when the
        narrowing rule says so (``narrowing``: transient errors wait, others fail the
        rows that cause them)."""
        now = self.clock()
        limits = client_limits(self.settings, claim.client_limits)
        if claim.version == profile_import.IMPORT_VERSION:
            self.process_import(claim, now, limits)
            return
        header = batchfile.Header(claim.key_kind, claim.names)
        decoder = UnitDecoder(header, claim.batch_seq, now, limits.max_profile_bytes)
        application = UnitApplication(
            self.store, claim, now, limits.max_profile_bytes, limits.expire_before_ms(now)
        )
        try:
            for _, part in decoded_parts(claim.body, claim.first_line, decoder):
                if not application.apply(part):
                    return  # the lease was lost: the unit's new owner goes on from here
        except GiveBack as give_back:
            self.metrics.unit_failed(give_back.__context__ or give_back)
            self.give_back(claim, give_back.reason)
            return
        except Exception as exc:  # raised outside the parts, which narrow their own errors: a bug
            error_id = new_error_id()
            log.exception(
                "unit %s/%s failed (error id %s)", claim.batch_seq, claim.unit_no, error_id
            )
            self.metrics.unit_failed(exc)
            self.give_back(claim, f"the server could not apply this unit (error id {error_id})")
            return
        self.applied = self.applied + application.counts
        self.metrics.unit_done(self.store, claim.batch_seq, application.counts, now)

    def process_import(self, claim: UnitClaim, now: int, limits: Limits) -> None:
        """Apply a unit of a profile import (batch version 3) in one transaction; on an
        error, give it back with the reason (transient or not) and the error id."""
        try:
            counts = profile_import.apply_claim(
                self.store, claim, now, limits.max_profile_bytes, limits.expire_before_ms(now)
            )
        except Exception as exc:
            error_id = new_error_id()
            log.exception(
                "import unit %s/%s failed (error id %s)", claim.batch_seq, claim.unit_no, error_id
            )
            self.metrics.unit_failed(exc)
            reason = self.store.transient_reason(exc) or "the server could not apply this unit"
            self.give_back(claim, f"{reason} (error id {error_id})")
            return
        if counts is not None:
            self.applied = self.applied + counts
        self.metrics.unit_done(self.store, claim.batch_seq, counts, now)

    def give_back(self, claim: UnitClaim, reason: str) -> None:
        """Release the unit to be retried later; the batch status shows ``reason``."""
        retry_at = self.clock() + retry_delay_ms(claim.attempts)
        try:
            self.store.release_unit(claim, reason, retry_at)
        except Exception:  # the lease expires on its own
            log.exception("could not release unit %s/%s", claim.batch_seq, claim.unit_no)

    def run(self, until_idle: bool = False, stop: threading.Event | None = None) -> None:
        """Work until ``stop`` is set; with ``until_idle``, return once no unit is claimable.

        An idle worker looks for work again after ``poll_interval``, or as soon as a new
        batch is accepted: it reads the seq of the latest batch before each claim and,
        when the claim finds nothing, reads it again every ``WAKE_CHECK`` seconds (a
        cheap read, where a claim is a write)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            latest: int | None = None
            try:
                latest = self.store.latest_batch()
                busy = self.run_once()
            except Exception:
                log.exception("worker %s could not claim work", self.name)
                busy = False
            if not busy:
                if until_idle:
                    return
                self.housekeeping()
                if latest is None:
                    stop.wait(self.settings.poll_interval)
                else:
                    self._wait_for_batch(stop, latest)

    def _wait_for_batch(self, stop: threading.Event, latest: int) -> None:
        """Wait ``poll_interval``, or less if a batch after ``latest`` is accepted."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not stop.wait(min(WAKE_CHECK, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            try:
                if self.store.latest_batch() != latest:
                    return
            except Exception:  # the claim that follows says what is wrong
                return

    def housekeeping(self) -> None:
        """Purge statuses past their retention and expired profiles, at most once an hour."""
        now = self.clock()
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

    def __init__(
        self,
        store: Store,
        settings: Settings,
        count: int,
        clock: Callable[[], int] = now_ms,
        metrics: Metrics | None = None,
    ) -> None:
        self.stop = threading.Event()
        metrics = metrics or Metrics()
        self.workers = [Worker(store, settings, clock=clock, metrics=metrics) for _ in range(count)]
        self.threads = [
            threading.Thread(
                target=w.run, kwargs={"stop": self.stop}, name=f"worker-{i}", daemon=True
            )
            for i, w in enumerate(self.workers)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)


def run_process(settings: Settings, log_level: int = logging.INFO) -> None:
    """One worker process: apply units until SIGTERM or SIGINT."""
    logs.configure(log_level, settings.log_format)  # a spawned child starts bare
    stop = stop_on_signals()
    store = open_settings_store(settings)
    try:
        worker = Worker(store, settings, metrics=Metrics())
        log.info("worker %s started", worker.name)
        worker.run(stop=stop)
    finally:
        store.close()


def run_processes(settings: Settings, count: int) -> None:
    """Run ``count`` worker processes until SIGTERM or SIGINT; restart any that dies.

    1. Migrate the schema once, before any worker starts.
    2. With one process, work in this one; otherwise a ``Supervisor`` runs ``count``
       children, replaces any that exits, and on a signal asks every child to stop and
       waits for it to finish its unit.
    """
    store = open_settings_store(settings)
    try:
        store.migrate()
    finally:
        store.close()
    serve_worker_metrics(settings)
    if count == 1:
        run_process(settings)
        return
    children = [
        Child(
            "profilebase-worker", run_process, (settings, logging.getLogger().getEffectiveLevel())
        )
        for _ in range(count)
    ]
    Supervisor(children, stop_timeout=settings.lease_seconds + 10).run()
