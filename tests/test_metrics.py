"""GET /metrics: Prometheus text that parses, counters that match the batches, gauges read
from the database, and the sum over several processes (real servers, real sockets)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import FakeClock, LiveServer, free_port
from helpers import batch_id_of, deliver, status, submit, update
from prometheus_client.parser import text_string_to_metric_families

from profilebase.models import now_ms
from profilebase.server import clients
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store
from profilebase.server.worker import Worker

#: Three good rows, two that fail (a bad cell count, an empty id).
BODY = b"batch=thirdPartyId,tier\nm-1,gold\nm-2,silver\nm-3,a,b\n,x\nm-4,bronze\n"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels); the parser checks the format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(http: httpx.Client, **headers: str) -> str:
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def drain_with_app_metrics(live_server: LiveServer, store: Store, settings: Settings) -> None:
    """Apply every unit now, counting into the live server's own metrics."""
    app = live_server.server.config.app
    Worker(store, settings, metrics=app.state.metrics).run(until_idle=True)


def test_row_counters_match_the_batch_counts(
    http: httpx.Client, live_server: LiveServer, store: Store, settings: Settings
):
    batch_id = batch_id_of(submit(http, BODY))
    before = scrape(http)
    assert value(before, "profilebase_rows_received_total", client="demo") == 5
    assert value(before, "profilebase_queue_rows", client="demo") == 5
    assert value(before, "profilebase_queue_units", client="demo") == 1
    drain_with_app_metrics(live_server, store, settings)
    counts = status(http, batch_id)
    text = scrape(http)
    assert value(text, "profilebase_rows_applied_total", client="demo") == int(
        counts["successfulUpdates"]
    )
    assert value(text, "profilebase_rows_failed_total", client="demo") == int(
        counts["failedUpdates"]
    )
    assert int(counts["successfulUpdates"]) == 3 and int(counts["failedUpdates"]) == 2
    assert value(text, "profilebase_rows_not_found_total", client="demo") == 0
    assert value(text, "profilebase_batch_duration_seconds_count") == 1
    assert value(text, "profilebase_queue_rows", client="demo") == 0
    assert value(text, "profilebase_quota_rows_used", client="demo") == 5
    assert value(text, "profilebase_quota_rows_limit", client="demo") == settings.rows_per_day
    assert value(text, "profilebase_database_up") == 1


def test_v1_rows_for_missing_profiles_count_as_not_found(
    http: httpx.Client, live_server: LiveServer, store: Store, settings: Settings
):
    submit(http, b"batch=thirdPartyId,a\nnobody,1\nno-one,2\n", v2=False)
    drain_with_app_metrics(live_server, store, settings)
    assert value(scrape(http), "profilebase_rows_not_found_total", client="demo") == 2


def test_requests_are_counted_by_route_template_never_by_raw_path(http: httpx.Client):
    """A scanner's thousand paths make one series, not a thousand."""
    for i in range(3):
        assert http.get(f"/no/such/path/{i}").status_code == 404
    http.get("/rest/v1/profiles/someone", params={"client": "demo"})
    text = scrape(http)
    assert (
        value(
            text, "profilebase_http_requests_total", method="GET", route="(unmatched)", status="404"
        )
        == 3
    )
    assert (
        value(
            text,
            "profilebase_http_requests_total",
            method="GET",
            route="/rest/v1/profiles/{pc_id}",
            status="404",
        )
        == 1
    )
    assert "/no/such/path" not in text and "someone" not in text
    assert (
        value(
            text,
            "profilebase_http_request_duration_seconds_count",
            method="GET",
            route="/rest/v1/profiles/{pc_id}",
        )
        == 1
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now_ms())


def test_the_oldest_batch_stall_and_workers_busy_come_from_the_database(
    http: httpx.Client, store: Store, settings: Settings, clock: FakeClock
):
    assert value(scrape(http), "profilebase_batch_stall_seconds") == 0
    submit(http, BODY)
    clock.advance(1000)
    assert value(scrape(http), "profilebase_batch_stall_seconds") == 1000
    claim = store.claim_unit("somebody", clock(), 30_000)
    assert claim is not None
    text = scrape(http)
    assert value(text, "profilebase_workers_busy") == 1
    assert value(text, "profilebase_batch_stall_seconds") == 1000


def test_quota_refusals_are_counted_per_client(http: httpx.Client, store: Store):
    clients.change(store, "demo", limits={"rows_per_day": "5"})
    assert submit(http, BODY).status_code == 200
    refused = submit(http, BODY)
    assert refused.status_code == 429
    assert value(scrape(http), "profilebase_quota_refusals_total", client="demo") == 1


def break_database(url: str) -> None:
    """Take the batches table away, for real, behind the server's back."""
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("ALTER TABLE batches RENAME TO batches_gone")
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("ALTER TABLE batches RENAME TO batches_gone")


def test_database_errors_are_counted_and_the_scrape_still_answers(
    http: httpx.Client, live_server: LiveServer, settings: Settings
):
    batch_id = batch_id_of(submit(http, BODY))
    break_database(settings.database)
    # A connection of its own: the server closes it after an unexpected error.
    response = httpx.get(
        f"{live_server.url}/m2/demo/profile/batchStatus", params={"batchId": batch_id}
    )
    assert response.status_code == 500
    text = scrape(http)
    assert value(text, "profilebase_database_up") == 0
    assert value(text, "profilebase_database_errors_total", where="web") >= 2
    assert "profilebase_queue_units" not in text
    assert "no such table" not in text and "UndefinedTable" not in text


@pytest.mark.parametrize(
    "settings", [{"metrics_token": "scrape-me-please-0123"}], indirect=["settings"]
)
def test_a_metrics_token_guards_the_endpoint(http: httpx.Client):
    refused = http.get("/metrics")
    assert refused.status_code == 401
    assert "metrics_token" in refused.json()["message"]
    assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scrape(http, Authorization="Bearer scrape-me-please-0123")


DOCS = Path(__file__).resolve().parent.parent / "docs"
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def exposed_names(text: str) -> set[str]:
    """The metric names an exposition offers: every sample's, and each family's with the
    suffixes of its type (a labelled counter with no child yet has no sample)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in SUFFIXES[1:])
        else:
            names.add(family.name)
    return names


def used_names(expression: str) -> set[str]:
    return set(re.findall(r"\bprofilebase_[a-z_]+", expression))


def test_alert_rules_and_the_grafana_dashboard_use_only_metrics_that_exist(
    http: httpx.Client, live_server: LiveServer, store: Store, settings: Settings
):
    submit(http, BODY)
    drain_with_app_metrics(live_server, store, settings)
    exposed = exposed_names(scrape(http))
    rules = yaml.safe_load((DOCS / "alerts.yml").read_text())["groups"][0]["rules"]
    assert len(rules) >= 3
    for rule in rules:
        assert {"alert", "expr", "for", "annotations"} <= set(rule), rule
        assert used_names(rule["expr"]), rule["alert"]
        assert used_names(rule["expr"]) <= exposed, rule["alert"]
    names = {rule["alert"] for rule in rules}
    assert {
        "ProfilebaseBatchStuck",
        "ProfilebaseFailedRowsRising",
        "ProfilebaseQueueGrowing",
    } <= names
    grafana = json.loads((DOCS / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in grafana["panels"] for t in panel["targets"]]
    assert expressions
    for expression in expressions:
        assert used_names(expression) <= exposed, expression
    operations = (DOCS / "operations.md").read_text()
    for name in exposed - {n + "_created" for n in exposed}:
        base = re.sub(r"_(bucket|count|sum|created)$", "", name)
        assert f"`{base}`" in operations or f"`{base}_total`" in operations, name


# -- several processes --------------------------------------------------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "profilebase", *args]


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process exited early"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def wait_for_lines(process: subprocess.Popen[bytes], *parts: bytes, count: int = 1) -> None:
    """Read the process's stderr until ``count`` lines hold every one of ``parts``; then
    keep draining it in the background, so that the process never blocks on a full pipe."""
    assert process.stderr is not None
    seen = 0
    while seen < count:
        line = process.stderr.readline()
        assert line, "the process closed its stderr"
        seen += all(part in line for part in parts)
    threading.Thread(target=process.stderr.read, daemon=True).start()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def accept(store: Store, settings: Settings, body: bytes) -> None:
    client = store.get_client("demo")
    assert client is not None
    limits = client_limits(settings, client.limits)
    intake = Intake(limits, settings.unit_rows)
    intake.feed(body)
    store_batch(store, client, 2, intake.finish(), limits, now_ms())


def per_process(directory: Path, name: str, tmp_path: Path) -> list[float]:
    """The value of counter ``name`` in each process's file of a multiprocess directory."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    found = []
    for i, file in enumerate(sorted(directory.glob("counter_*.db"))):
        alone = tmp_path / f"alone-{i}"
        alone.mkdir()
        shutil.copy(file, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(alone))
        found.append(sum(s.value for m in registry.collect() for s in m.samples if s.name == name))
    return found


def test_worker_processes_report_their_sum_on_the_metrics_port(
    store: Store, settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
):
    """`worker --concurrency 2 --metrics-port P`: one port, the rows of both processes."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    port = free_port()
    env = os.environ | {
        "PROFILEBASE_DATABASE": settings.database,
        "PROFILEBASE_UNIT_ROWS": "10",
        "PROFILEBASE_POLL_INTERVAL": "0.05",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    worker = subprocess.Popen(
        command("worker", "--concurrency", "2", "--metrics-port", str(port)),
        env=env,
        stderr=subprocess.PIPE,
    )
    processes.append(worker)
    wait_for_port(port, worker)
    wait_for_lines(worker, b"worker ", b" started", count=2)
    # Batches of 41 units until both processes applied some (a busy machine may leave one
    # process asleep while the other applies a whole batch).
    for batches in range(1, 6):
        lines = b"".join(b"w%d-%d,%d\n" % (batches, i, i) for i in range(400))
        accept(store, settings, b"batch=thirdPartyId,n\n" + lines + b"w-bad,1,2\n" * 10)
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            applied = value(text, "profilebase_rows_applied_total", client="demo")
            if (
                applied + value(text, "profilebase_rows_failed_total", client="demo")
                >= 410 * batches
            ):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        by_process = per_process(directory, "profilebase_rows_applied_total", tmp_path)
        if len([a for a in by_process if a]) == 2:
            break
    assert value(text, "profilebase_rows_failed_total", client="demo") == 10 * batches
    assert value(text, "profilebase_rows_applied_total", client="demo") == 400 * batches
    assert value(text, "profilebase_queue_units", client="demo") == 0
    assert sum(by_process) == 400 * batches
    assert len([a for a in by_process if a]) == 2, f"one process did all the work: {by_process}"


def test_serve_processes_sharing_a_directory_report_as_one(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
):
    """Two `serve` processes with one PROMETHEUS_MULTIPROC_DIR: either's /metrics counts the
    requests both answered (SQLite only: the database plays no part in this)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = os.environ | {
        "PROFILEBASE_DATABASE": f"sqlite:///{tmp_path}/shared.db",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    ports = [free_port(), free_port()]
    for port in ports:
        process = subprocess.Popen(
            command("serve", "--port", str(port), "--workers", "0"),
            env=env,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        wait_for_port(port, process)
    first, second = (f"http://127.0.0.1:{port}" for port in ports)
    for _ in range(3):
        assert httpx.get(f"{first}/healthz").status_code == 200
    for _ in range(2):
        assert httpx.get(f"{second}/healthz").status_code == 200
    for url in (first, second):
        text = httpx.get(f"{url}/metrics").text
        healthz = value(
            text, "profilebase_http_requests_total", method="GET", route="/healthz", status="200"
        )
        assert healthz == 5


def test_a_metrics_port_in_use_is_one_clear_line(settings: Settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            command("worker", "--metrics-port", str(port)),
            env=os.environ | {"PROFILEBASE_DATABASE": settings.database},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"Cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_fetches_on_the_event_loop_are_counted_by_where_their_reply_came_from(
    http: httpx.Client,
):
    """A second fetch with nothing written between sends the kept reply; a write makes the
    next one read again (both backends). On PostgreSQL any transaction of the server that
    writes counts as a write (the check is the server's snapshot), a test of the other
    worker's included: the second fetch is tried until one sends the kept reply."""
    deliver(http, {"id": {"thirdPartyId": "crm-m"}, "execute": {"pageLoad": {}}})

    def fetch_counts() -> tuple[float, float]:
        assert http.get("/rest/v1/profiles/thirdPartyId/crm-m?client=demo").status_code == 200
        text = scrape(http)
        return (
            value(text, "profilebase_fetches_on_event_loop_total", reply="kept"),
            value(text, "profilebase_fetches_on_event_loop_total", reply="read"),
        )

    assert fetch_counts() == (0, 1)
    for _ in range(50):
        kept, read = fetch_counts()
        if kept:
            break
    assert kept == 1
    update(http, mbox3rdPartyId="crm-m", profile_a="1")
    assert fetch_counts() == (1, read + 1)
