"""The narrowing rule: a poison row fails alone with a reason, transient errors wait and retry,
and every accepted batch completes with exact counts."""

from __future__ import annotations

import random
import re
import sqlite3
import string
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from conftest import FakeClock, free_port
from helpers import attributes, batch_id_of, status, submit
from test_store_contract import LEASE, accept, values

from profilebase import batchfile
from profilebase.errors import DatabaseUnavailable
from profilebase.models import Counts, now_ms
from profilebase.server import narrowing
from profilebase.server.decoder import decode_unit
from profilebase.server.narrowing import NARROW_AFTER_ATTEMPTS
from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.worker import Worker

#: What no reason or status shown to users may contain.
INTERNALS = re.compile(r"\w(Error|Exception)\b|Traceback|psycopg|sqlite3|SELECT |INSERT |boom")


@pytest.fixture
def clock() -> FakeClock:
    """The app's and the workers' clock: retries wait until the test moves it on."""
    return FakeClock(now_ms())


class Poison(RuntimeError):
    """A bug that strikes rows with certain ids."""


def poison(store: Store, ids: set[str], error: type[Exception] = Poison) -> None:
    """Make ``store`` (a real store) raise ``error`` whenever a part holds a row of ``ids``."""
    real = type(store)

    class Poisoned(real):  # type: ignore[misc, valid-type]
        def apply_unit(self, claim, rows, failures, *args, **kwargs):  # type: ignore[no-untyped-def]
            if any(row.id in ids for row in rows):
                raise error("boom: INSERT INTO profiles failed for " + ", ".join(sorted(ids)))
            return super().apply_unit(claim, rows, failures, *args, **kwargs)

    store.__class__ = Poisoned


def cure(store: Store) -> None:
    store.__class__ = type(store).__mro__[1]


def batch_body(count: int, prefix: str = "r") -> bytes:
    lines = ["batch=thirdPartyId,n,tier"] + [f"{prefix}{i},{i},t{i % 3}" for i in range(count)]
    return ("\n".join(lines) + "\n").encode()


def failures_of(http: httpx.Client, batch_id: str) -> list[dict]:
    response = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}/failures")
    assert response.status_code == 200, response.text
    return response.json()["failures"]


def assert_complete(http: httpx.Client, batch_id: str, size: int, failed: int) -> None:
    fields = status(http, batch_id)
    assert fields["status"] == "complete", fields
    assert fields["batchSize"] == fields["consumedCount"] == str(size)
    assert int(fields["successfulUpdates"]) + int(fields["profilesNotFound"]) == size - failed
    assert fields["failedUpdates"] == str(failed)


def test_a_poison_row_fails_alone(http: httpx.Client, drain, store: Store):
    """A row the store fails on is narrowed down to and fails with a sentence quoting an error
    id; every other row of its unit and batch applies."""
    poison(store, {"r57"})
    batch_id = batch_id_of(submit(http, batch_body(120)))  # units of 25, 50, 45 rows
    drain()
    assert_complete(http, batch_id, 120, failed=1)
    [failure] = failures_of(http, batch_id)
    assert failure["line"] == 59 and failure["id"] == "r57"
    assert re.fullmatch(
        r"could not be stored: .*\(error id [0-9a-f]{12}; the server log has the details\)",
        failure["reason"],
    ), failure["reason"]
    assert not INTERNALS.search(failure["reason"])
    assert attributes(http, "r57") is None
    assert attributes(http, "r56") == {"n": "56", "tier": "t2"}
    assert attributes(http, "r58") == {"n": "58", "tier": "t1"}
    assert all(attributes(http, f"r{i}") for i in range(0, 120, 7) if i != 57)


@pytest.mark.parametrize("settings", [{"unit_rows": 100}], indirect=True)  # one unit
def test_a_unit_is_applied_in_parts_of_part_rows(
    http: httpx.Client, drain, store: Store, monkeypatch: pytest.MonkeyPatch
):
    """A unit of more than ``PART_ROWS`` rows is applied in parts, one transaction each, in
    line order, each recording how far the unit got; a poison row still fails alone."""
    monkeypatch.setattr(narrowing, "PART_ROWS", 15)
    applied: list[tuple[int, int | None]] = []  # (rows and failures, through_line) per part
    real = type(store)

    class Recording(real):  # type: ignore[misc, valid-type]
        def apply_unit(self, claim, rows, failures, *args):  # type: ignore[no-untyped-def]
            applied.append((len(rows) + len(failures), args[-1]))
            return super().apply_unit(claim, rows, failures, *args)

    store.__class__ = Recording
    batch_id = batch_id_of(submit(http, batch_body(50)))  # one unit of 50 rows, lines 2-51
    drain()
    assert_complete(http, batch_id, 50, failed=0)
    assert applied == [(15, 16), (15, 31), (15, 46), (5, None)]
    assert all(attributes(http, f"r{i}") == {"n": str(i), "tier": f"t{i % 3}"} for i in range(50))
    applied.clear()
    poison(store, {"x20"})
    batch_id = batch_id_of(submit(http, batch_body(50, prefix="x")))
    drain()
    assert_complete(http, batch_id, 50, failed=1)
    [failure] = failures_of(http, batch_id)
    assert failure["line"] == 22 and failure["id"] == "x20"
    assert all(attributes(http, f"x{i}") for i in range(50) if i != 20)


def test_several_poison_rows_beside_rows_that_fail_anyway(http: httpx.Client, drain, store: Store):
    """Poison rows at a unit's edges and in its middle, and a row the decoder fails, each fail
    alone with their own reason; the counts stay exact. Units: r0-r24, r25-r74, r75-r99."""
    poison(store, {"r25", "r50", "r74", "r99"})
    lines = batch_body(100).decode().splitlines()
    lines[1 + 60] = "r60,%ZZ"
    body = ("\n".join(lines) + "\n").encode()
    batch_id = batch_id_of(submit(http, body))
    drain()
    assert_complete(http, batch_id, 100, failed=5)
    failures = failures_of(http, batch_id)
    assert [f["line"] for f in failures] == [27, 52, 62, 76, 101]
    assert "percent-encoding" in failures[2]["reason"]
    assert all(
        f["reason"].startswith("could not be stored") for i, f in enumerate(failures) if i != 2
    )
    assert attributes(http, "r51") == {"n": "51", "tier": "t0"}
    assert attributes(http, "r98") == {"n": "98", "tier": "t2"}


def test_a_unit_that_cannot_be_applied_at_all_waits_and_says_why(
    http: httpx.Client, drain, store: Store, clock: FakeClock
):
    """When even a part without rows fails, the rows are not to blame: the unit waits, no row
    fails, the status says why in a sentence; once the fault is gone the batch completes."""
    real = type(store)

    class Broken(real):  # type: ignore[misc, valid-type]
        def apply_unit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise Poison("boom: relation batch_units does not exist")

    batch_id = batch_id_of(submit(http, batch_body(20)))
    store.__class__ = Broken
    drain()
    store.__class__ = real
    extended = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()
    assert extended["status"] == "incomplete" and extended["failedUpdates"] == 0
    assert re.fullmatch(
        r"waiting: the server could not apply this unit \(error id [0-9a-f]{12}\); "
        r"next attempt at \S+",
        extended["reason"],
    ), extended["reason"]
    assert not INTERNALS.search(extended["reason"])
    clock.advance(5)
    drain()
    assert_complete(http, batch_id, 20, failed=0)


@pytest.mark.parametrize("settings", [{"unit_rows": 100}], indirect=True)  # one unit
def test_transient_errors_wait_then_a_row_that_keeps_causing_one_fails_alone(
    http: httpx.Client, drain, store: Store, clock: FakeClock
):
    """A transient error gives the unit back, its rows untouched, with a growing delay; a row
    that still causes one after NARROW_AFTER_ATTEMPTS attempts fails alone, the rest apply."""
    poison(store, {"r7"}, DatabaseUnavailable)
    batch_id = batch_id_of(submit(http, batch_body(30)))
    previous = 0
    for _ in range(NARROW_AFTER_ATTEMPTS - 1):
        drain()  # one attempt: the unit is given back
        extended = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()
        assert extended["status"] == "incomplete" and extended["consumedCount"] == 0
        assert extended["reason"].startswith("waiting: the database was unavailable (error id ")
        assert not INTERNALS.search(extended["reason"])
        retry_at = int(datetime.fromisoformat(extended["throttledUntil"]).timestamp() * 1000)
        assert previous <= retry_at - clock() <= 60_000  # a growing delay, capped
        previous = retry_at - clock()
        clock.ms = retry_at
    drain()
    assert_complete(http, batch_id, 30, failed=1)
    [failure] = failures_of(http, batch_id)
    assert failure["id"] == "r7"
    assert failure["reason"].startswith(
        f"could not be stored: the database was unavailable on each of "
        f"{NARROW_AFTER_ATTEMPTS} attempts with this row"
    )
    assert attributes(http, "r8") == {"n": "8", "tier": "t2"}


def test_a_part_is_applied_once_whoever_finishes_the_unit(store: Store):
    """A unit applied in parts keeps its progress: a worker that takes over after a crash goes
    on after the last part, and the first worker's late parts change nothing."""
    _, batch_id = accept(store, batch_body(10), unit_rows=100)
    now = now_ms()
    claim = store.claim_unit("first", now, LEASE)
    assert claim is not None
    header = batchfile.Header(claim.key_kind, claim.names)
    rows, failures = decode_unit(claim.body, claim.first_line, header, claim.batch_seq, now)
    part = store.apply_unit(claim, rows[:4], failures, now, 10**6, through_line=rows[3].line)
    assert part == Counts(4, 4, 0, 0)
    # The first worker dies; another takes the unit over once the lease has expired.
    again = store.claim_unit("second", now + LEASE + 1, LEASE)
    assert again is not None and again.attempts == 2
    assert store.apply_unit(again, rows, failures, now, 10**6) == Counts(6, 6, 0, 0)
    assert store.apply_unit(claim, rows, failures, now, 10**6) is None
    assert values(store, "r9") == {"n": "9", "tier": "t0"}
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.finished_at is not None
    assert (batch.batch_size, batch.counts.consumed, batch.counts.successful) == (10, 10, 10)


def test_transient_errors_are_told_from_the_others(store: Store, database_url: str, tmp_path: Path):
    """Real errors of each backend: a lock held by another writer, a server that is not
    there, are transient; a value the database refuses is not."""
    assert store.transient_reason(ValueError("bug")) is None
    assert store.transient_reason(DatabaseUnavailable()) == "the database was unavailable"
    if database_url.startswith("sqlite"):
        path = tmp_path / "locked.db"
        holder = sqlite3.connect(path, isolation_level=None, timeout=0)
        holder.execute("BEGIN IMMEDIATE")
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        with pytest.raises(sqlite3.OperationalError) as locked:
            other.execute("BEGIN IMMEDIATE")
        holder.close()
        other.close()
        assert store.transient_reason(locked.value) == "the database was locked by another writer"
        with pytest.raises(sqlite3.IntegrityError) as refused:
            sqlite3.connect(":memory:").executescript(
                "CREATE TABLE t (x PRIMARY KEY); INSERT INTO t VALUES (1); INSERT INTO t VALUES (1);"
            )
        assert store.transient_reason(refused.value) is None
        return
    import psycopg

    with pytest.raises(psycopg.OperationalError) as unreachable:
        psycopg.connect(f"postgresql://root@127.0.0.1:{free_port()}/test", connect_timeout=2)
    assert store.transient_reason(unreachable.value) == "the database was unavailable"
    with psycopg.connect(database_url, autocommit=True) as db:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as too_large:
            db.execute("CREATE TEMP TABLE t (x text PRIMARY KEY)")
            db.execute("INSERT INTO t VALUES (%s)", (random_text(8000),))
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
            db.execute("SET statement_timeout = 50")
            db.execute("SELECT pg_sleep(5)")
    assert store.transient_reason(too_large.value) is None
    assert store.transient_reason(cancelled.value) == "a database statement timed out"


def random_text(length: int) -> str:
    """Text no compression shrinks much."""
    rng = random.Random(length)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length))


def postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgres"):
        pytest.skip("a PostgreSQL behaviour")


def test_a_value_postgresql_refuses_fails_alone(http: httpx.Client, drain, database_url: str):
    """A real refusal: an id too long for PostgreSQL's index fails its row alone."""
    postgres_only(database_url)
    long_id = random_text(8000)
    lines = batch_body(40).decode().splitlines()
    lines[20] = f"{long_id},x,y"
    batch_id = batch_id_of(submit(http, ("\n".join(lines) + "\n").encode()))
    drain()
    assert_complete(http, batch_id, 40, failed=1)
    [failure] = failures_of(http, batch_id)
    assert failure["line"] == 21 and failure["reason"] and not INTERNALS.search(failure["reason"])
    assert attributes(http, "r20") == {"n": "20", "tier": "t2"}


@pytest.mark.parametrize("settings", [{"unit_rows": 25_000}], indirect=True)
def test_a_nul_in_an_id_fails_that_row_alone(http: httpx.Client, drain, database_url: str):
    """A row whose id holds %00 fails alone by the id rule, on every backend; on
    PostgreSQL, which cannot store U+0000, a row whose value holds it fails alone too and its
    failure is recorded (NUL shown as U+FFFD). The rest of the 25,000-row unit applies."""
    lines = batch_body(25_000).decode().splitlines()
    lines[1 + 12_345] = "bad%00id,1,2"
    lines[1 + 20_000] = "nul-value,a%00b,2"
    batch_id = batch_id_of(submit(http, ("\n".join(lines) + "\n").encode()))
    drain()
    postgres = database_url.startswith("postgres")
    assert_complete(http, batch_id, 25_000, failed=2 if postgres else 1)
    assert attributes(http, "r12344") == {"n": "12344", "tier": "t2"}
    assert attributes(http, "r24999") == {"n": "24999", "tier": "t0"}
    failures = failures_of(http, batch_id)
    assert (failures[0]["line"], failures[0]["id"]) == (
        12_347,
        "bad\ufffdid" if postgres else "bad\x00id",
    )
    assert "control character (U+0000)" in failures[0]["reason"]
    if postgres:
        assert [(f["line"], f["id"]) for f in failures[1:]] == [(20_002, "nul-value")]
        assert "U+0000" in failures[1]["reason"]
        assert attributes(http, "nul-value") is None


def test_a_nul_in_an_attribute_name_is_refused_with_400_on_postgresql(
    http: httpx.Client, database_url: str
):
    """PostgreSQL cannot store the header: 400 with the reason, not 500; SQLite accepts it."""
    response = submit(http, b"batch=thirdPartyId,a%00b\nx,1\n")
    if database_url.startswith("postgres"):
        assert response.status_code == 400, response.text
        assert "U+0000" in response.text
    else:
        assert response.status_code == 200, response.text


def test_an_outage_in_the_middle_of_a_unit_is_waited_out(
    http: httpx.Client, store: Store, settings: Settings, database_url: str, clock: FakeClock
):
    """PostgreSQL drops the worker's connection while it applies a unit: the unit waits, the
    status says the database was unavailable, and once it is back the batch completes."""
    postgres_only(database_url)
    import psycopg

    batch_id = batch_id_of(submit(http, batch_body(30)))
    worker = Worker(store, settings, clock=clock)
    claim = store.claim_unit(worker.name, clock(), LEASE)
    assert claim is not None
    with psycopg.connect(database_url) as blocker:
        # Hold the unit's row so that the worker's apply waits where we can see it.
        blocker.execute(
            "SELECT 1 FROM batch_units WHERE batch_seq = %s AND unit_no = %s FOR UPDATE",
            (claim.batch_seq, claim.unit_no),
        )
        thread = threading.Thread(target=worker.process, args=(claim,))
        thread.start()
        victim = wait_for_waiting_backend(blocker)
        blocker.execute("SELECT pg_terminate_backend(%s)", (victim,))
        blocker.rollback()
    thread.join(60)
    extended = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()
    assert extended["consumedCount"] == 0
    assert extended["reason"].startswith("waiting: the database was unavailable (error id ")
    assert not INTERNALS.search(extended["reason"])
    clock.advance(60)
    worker.run(until_idle=True)
    assert_complete(http, batch_id, 30, failed=0)


def wait_for_waiting_backend(db, timeout: float = 30.0) -> int:  # type: ignore[no-untyped-def]
    """The pid of the backend of this database that waits for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()
        if found:
            return int(found[0])
        time.sleep(0.02)
    raise AssertionError("no backend waited for the lock")
