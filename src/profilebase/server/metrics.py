"""Prometheus metrics: what the processes count, and what the database says at scrape time.

Two kinds of numbers, kept apart:

- **Counted** where they happen, by a ``Metrics`` object, one per process: HTTP
  requests and their latency (``web/observe.py``), rows received (at acceptance),
  rows applied, failed and not found, batch time from acceptance to completion,
  unit retries (at the worker's call sites), quota refusals and database errors.
- **Read from the database** at each scrape by ``DatabaseCollector``: queue depth,
  workers busy, the oldest batch's stall, quota use. Every process that serves
  metrics reports the same values for these (take ``max`` across instances).

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client's
multiprocess mode keeps each process's counters in files there and a scrape adds
them up. ``profilebase worker --metrics-port`` sets this up by itself (a temporary
directory, unless the variable names one); processes of ``serve`` that should report
as one share a directory named by the variable (docs/operations.md).
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from profilebase.errors import ConfigError, StorageError
from profilebase.models import DAY_MS, Counts, now_ms
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store, open_settings_store

log = logging.getLogger("profilebase.batches")
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds from acceptance to completion: from a small batch on an idle server to a day.
BATCH_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
#: The modules whose exceptions are database errors, besides ``StorageError``.
DATABASE_MODULES = ("sqlite3", "psycopg", "psycopg_pool")


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database: a ``StorageError`` or a driver's error."""
    if isinstance(exc, StorageError):
        return True
    return any(kind.__module__.split(".")[0] in DATABASE_MODULES for kind in type(exc).__mro__)


def multiprocess_directory() -> str | None:
    """The directory of prometheus-client's multiprocess mode, if this process uses one."""
    return os.environ.get(MULTIPROCESS_VARIABLE) or None


def use_multiprocess_directory(path: str) -> None:
    """Keep this process's metrics (and those of processes it starts) in ``path``.

    Must run before the first ``Metrics`` of the process is made; processes started
    afterwards inherit the variable and start in multiprocess mode by themselves.
    """
    os.environ[MULTIPROCESS_VARIABLE] = path
    values.ValueClass = values.MultiProcessValue()


class Metrics:
    """The counters of one process. Make one per process: in multiprocess mode two
    would write the same slots of the process's file."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "profilebase_http_requests",
            "HTTP requests answered, by method, route (its path template) and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "profilebase_http_request_duration_seconds",
            "Time from a request's arrival to the end of its reply, by method and route.",
            ["method", "route"],
            registry=r,
        )
        self.rows_received = Counter(
            "profilebase_rows_received",
            "Rows of accepted batches, by client.",
            ["client"],
            registry=r,
        )
        self.rows_applied = Counter(
            "profilebase_rows_applied", "Batch rows applied, by client.", ["client"], registry=r
        )
        self.rows_failed = Counter(
            "profilebase_rows_failed",
            "Batch rows that failed (each with its reason), by client.",
            ["client"],
            registry=r,
        )
        self.rows_not_found = Counter(
            "profilebase_rows_not_found",
            "Rows of v1 batches whose profile does not exist, by client.",
            ["client"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "profilebase_batch_duration_seconds",
            "Seconds from a batch's acceptance to its completion.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.unit_retries = Counter(
            "profilebase_unit_retries",
            "Units given back to be retried after an attempt failed.",
            registry=r,
        )
        self.quota_refusals = Counter(
            "profilebase_quota_refusals",
            "Requests refused with 429 because a client's quota or rate was used up, by client.",
            ["client"],
            registry=r,
        )
        fetches = Counter(
            "profilebase_fetches_on_event_loop",
            "Fetches answered on the event loop, by whether the reply was kept "
            "(fetch_cache_mb, SQLite) or read from the database.",
            ["reply"],
            registry=r,
        )
        self.fetch_kept = fetches.labels("kept")
        self.fetch_read = fetches.labels("read")
        self.database_errors = Counter(
            "profilebase_database_errors",
            "Errors from the database, by where they happened (web or worker).",
            ["where"],
            registry=r,
        )

    # -- counted where it happens ---------------------------------------------------------

    def batch_accepted(self, client_code: str, batch_id: str, rows: int) -> None:
        """A batch was stored: count its rows and log its first state change."""
        self.rows_received.labels(client_code).inc(rows)
        log.info(
            "batch %s queued: %d rows",
            batch_id,
            rows,
            extra={"batch_id": batch_id, "client": client_code, "state": "queued", "rows": rows},
        )

    def unit_done(self, store: Store, batch_seq: int, counts: Counts | None, now: int) -> None:
        """A worker applied a unit at ``now``: count its rows; if it was the batch's first
        unit done, or its last, log the state change (and time the whole batch).

        Never raises: a failure here must not undo or repeat the unit.
        """
        if counts is None:  # the lease was lost: another worker counts the unit
            return
        try:
            event = store.batch_event(batch_seq)
        except Exception as exc:
            self.database_error(exc, "worker")
            log.warning("could not read batch %s for its metrics: %s", batch_seq, exc)
            return
        if event is None:
            return
        code = event.client_code
        self.rows_applied.labels(code).inc(counts.successful)
        self.rows_failed.labels(code).inc(counts.failed)
        self.rows_not_found.labels(code).inc(counts.not_found)
        fields = {"batch_id": event.batch_id, "client": code}
        if event.finished_at == now:
            seconds = max(0, now - event.accepted_at) / 1000
            self.batch_seconds.observe(seconds)
            total = event.counts
            log.info(
                "batch %s complete in %.1f s: %d rows, %d applied, %d failed, %d not found",
                event.batch_id,
                seconds,
                total.consumed,
                total.successful,
                total.failed,
                total.not_found,
                extra=fields | {"state": "complete", "seconds": seconds},
            )
        elif event.first_done_at == now and event.finished_at is None:
            log.info("batch %s processing", event.batch_id, extra=fields | {"state": "processing"})

    def unit_failed(self, exc: BaseException) -> None:
        """A worker's attempt at a unit failed; the unit will be retried."""
        self.unit_retries.inc()
        self.database_error(exc, "worker")

    def database_error(self, exc: BaseException, where: str) -> None:
        """Count ``exc`` if it came from the database."""
        if is_database_error(exc):
            self.database_errors.labels(where).inc()

    # -- the scrape ------------------------------------------------------------------------

    def counted(self) -> Any:
        """What a scrape reports of the counters: this process's, or in multiprocess
        mode those of every process sharing the directory."""
        directory = multiprocess_directory()
        if directory is None:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, directory)
        return registry


class Scrape:
    """Everything one scrape reports: the counters and the database's gauges."""

    def __init__(self, *sources: Any) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()

    def text(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self)


class DatabaseCollector:
    """Gauges read from the database at scrape time (they hold for every process)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """``metrics`` counts the database errors of scrapes (uncounted without one)."""
        self.store, self.settings, self.metrics, self.clock = store, settings, metrics, clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "profilebase_database_up", "1 if the database answered this scrape, else 0."
        )
        try:
            families = list(self.read(self.clock()))
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.database_error(exc, "web")
            logging.getLogger("profilebase.server.metrics").warning(
                "the database did not answer the scrape: %s", exc
            )
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def read(self, now: int) -> Iterable[Metric]:
        store = self.store
        clients = store.list_clients()
        queue = {q.client_code: q for q in store.queue_depth()}
        used = store.rows_accepted_by_client(now - DAY_MS + 1)
        units = GaugeMetricFamily(
            "profilebase_queue_units", "Work units not applied yet, by client.", labels=["client"]
        )
        rows = GaugeMetricFamily(
            "profilebase_queue_rows", "Rows in units not applied yet, by client.", labels=["client"]
        )
        quota = GaugeMetricFamily(
            "profilebase_quota_rows_used",
            "Batch rows accepted in the last 24 hours, by client (rows_per_day counts them).",
            labels=["client"],
        )
        limit = GaugeMetricFamily(
            "profilebase_quota_rows_limit", "The client's rows_per_day.", labels=["client"]
        )
        for client in clients:
            waiting = queue.get(client.code)
            units.add_metric([client.code], waiting.units if waiting else 0)
            rows.add_metric([client.code], waiting.rows if waiting else 0)
            quota.add_metric([client.code], used.get(client.id, 0))
            limits = client_limits(self.settings, client.limits)
            limit.add_metric([client.code], limits.rows_per_day)
        busy = GaugeMetricFamily(
            "profilebase_workers_busy", "Workers applying a unit now, in every process."
        )
        busy.add_metric([], store.workers_busy(now))
        stall = GaugeMetricFamily(
            "profilebase_batch_stall_seconds",
            "Seconds the oldest unfinished batch has gone without progress (0: none waits); "
            "it reports `stuck` past stuck_after_seconds.",
        )
        stall.add_metric([], store.oldest_stall_ms(now) / 1000)
        return [units, rows, busy, stall, quota, limit]


# -- `profilebase worker --metrics-port` ----------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def serve_worker_metrics(settings: Settings) -> None:
    """Serve the metrics of this ``worker`` run on ``settings.metrics_port`` (0: do nothing).

    Every worker process of the run counts into one multiprocess directory (a new
    temporary one, removed at exit, unless ``PROMETHEUS_MULTIPROC_DIR`` names one), so
    the port reports their sum. Call it before any worker process or ``Metrics`` exists.
    """
    if not settings.metrics_port:
        return
    directory = multiprocess_directory()
    if directory is None:
        directory = tempfile.mkdtemp(prefix="profilebase-metrics-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    use_multiprocess_directory(directory)
    store = open_settings_store(settings)
    atexit.register(store.close)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)
    scrape = Scrape(registry, DatabaseCollector(store, settings))
    try:
        server = make_server(
            settings.host,
            settings.metrics_port,
            metrics_app(scrape, settings.metrics_token),
            _Server,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        raise ConfigError(
            f"Cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc.strerror}; "
            "choose another --metrics-port."
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logging.getLogger("profilebase.server.metrics").info(
        "metrics on http://%s:%d/metrics", settings.host, settings.metrics_port
    )


def token_matches(header: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (always, if no token)."""
    if not token:
        return True
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def metrics_app(scrape: Scrape, token: str) -> Callable[..., Any]:
    """A WSGI app answering every GET with the scrape, once the metrics token is right."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if not token_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"Send the metrics token: Authorization: Bearer <metrics_token>.\n"]
        body = scrape.text()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [body]

    return app
