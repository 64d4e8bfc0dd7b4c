"""The server's memory stays bounded: a single 40 MB line, and batch after batch with headers
never seen before, keep a real ``profilebase serve`` process under 400 MB and from growing.

Limits asserted on the server process's resident memory (``/proc/PID/status``), never times.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
import pytest
from helpers import batch_id_of, process_tree, status, submit
from test_crash import ServerProcess, wait_until
from test_store_contract import accept

from profilebase import batchfile
from profilebase.models import KeyKind
from profilebase.server.settings import Settings
from profilebase.server.storage import open_store, sqlite_path
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

pytestmark = pytest.mark.slow

#: The goal: peak resident memory of the server while ingesting any body the limits accept.
PEAK_LIMIT_MB = 400
#: What many batches may add to the server's memory once it has warmed up.
GROWTH_LIMIT_MB = 25

LINE = 40_000_000
#: One-line bodies of 40 MB, each a different way of being large.
SHAPES = {
    "one long value": b"id1," + b"x" * LINE,
    "percent-encoded": b"id1," + b"%C3%A9" * (LINE // 6),
    "twenty million cells": b"id1," + b"1," * (LINE // 2),
    "whitespace around a value": b"id1," + b" " * LINE + b",v",
}


def memory_mb(pid: int) -> dict[str, int]:
    """The server's memory in MB: resident now (VmRSS, summed over its processes) and the
    highest peak of any one of them (VmHWM)."""
    rss = peak = 0
    for each in process_tree(pid):
        try:
            text = Path(f"/proc/{each}/status").read_text()
        except OSError:  # it exited meanwhile
            continue
        kb = {key: int(re.search(rf"{key}:\s+(\d+) kB", text)[1]) for key in ("VmRSS", "VmHWM")}  # type: ignore[index]
        rss, peak = rss + kb["VmRSS"], max(peak, kb["VmHWM"])
    return {"VmRSS": rss // 1024, "VmHWM": peak // 1024}


@pytest.fixture
def server(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    process = ServerProcess(
        database_url, tmp_path / "server.log", unit_rows="25000", lease_seconds="30"
    )
    yield process
    process.kill()


def wait_complete(http: httpx.Client, batch_id: str) -> dict[str, str]:
    return wait_until(lambda: (f := status(http, batch_id))["status"] == "complete" and f)


def test_a_40_mb_line_stays_under_400_mb(server: ServerProcess):
    """Each 40 MB one-line body is accepted and completes (its row fails or applies), and the
    server's peak memory stays under the goal."""
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for shape, line in SHAPES.items():
            response = submit(http, b"batch=thirdPartyId,a,b\n" + line)
            assert response.status_code == 200, (shape, response.text)
            fields = wait_complete(http, batch_id_of(response))
            assert fields["batchSize"] == fields["consumedCount"] == "1", (shape, fields)
            peak = memory_mb(server.process.pid)["VmHWM"]
            print(f"{shape}: peak {peak} MB")
            assert peak <= PEAK_LIMIT_MB, shape


def test_many_new_headers_do_not_grow_memory(server: ServerProcess):
    """200 batches, each with a header of its own (900 long attribute names), leave the
    server's memory where 20 such batches left it."""

    def body(number: int) -> bytes:
        names = [f"batch{number}-attribute{i}-" + "n" * 200 for i in range(900)]
        rows = [[f"crm-{number}-1", *(["v"] * 900)], [f"crm-{number}-2", "w"]]
        return batchfile.encode(KeyKind.THIRD_PARTY_ID, names, rows)

    with httpx.Client(base_url=server.url, timeout=120) as http:

        def run(numbers: range) -> None:
            batch_ids = []
            for number in numbers:
                response = submit(http, body(number))
                assert response.status_code == 200, response.text
                batch_ids.append(batch_id_of(response))
            for batch_id in batch_ids:
                assert wait_complete(http, batch_id)["successfulUpdates"] == "2"

        run(range(20))
        before = memory_mb(server.process.pid)
        run(range(20, 220))
        after = memory_mb(server.process.pid)
    print(f"resident memory: {before['VmRSS']} MB after 20 headers, {after['VmRSS']} MB after 220")
    assert after["VmRSS"] - before["VmRSS"] <= GROWTH_LIMIT_MB
    assert after["VmHWM"] <= PEAK_LIMIT_MB


def test_units_accepted_before_the_upgrade_keep_their_lines(tmp_path: Path):
    """SQLite: migration 0005 moves the lines of units not yet applied out of their rows;
    such a unit is claimed and applied whole after the upgrade."""
    url = f"sqlite:///{tmp_path}/old.db"
    store = open_store(url)
    prepare(store, Settings(database=url))
    _, batch_id = accept(
        store,
        batchfile.encode(KeyKind.THIRD_PARTY_ID, ["a"], [["x", "1"], ["y", "2"]]),
        unit_rows=100,
    )
    with sqlite3.connect(sqlite_path(url)) as db:  # back to the layout before 0005
        db.executescript(
            "UPDATE batch_units SET body = (SELECT body FROM unit_bodies u"
            " WHERE u.batch_seq = batch_units.batch_seq AND u.unit_no = batch_units.unit_no);"
            "DROP TABLE unit_bodies; ALTER TABLE batch_units DROP COLUMN applied_through;"
            "DELETE FROM schema_migrations WHERE version = 5;"
        )
    assert store.migrate() == ["0005_unit_progress"]
    Worker(store, Settings(database=url)).run(until_idle=True)
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.finished_at is not None
    assert (batch.counts.consumed, batch.counts.successful) == (2, 2)
    store.close()
