"""Durability: SIGKILL the server after success=true, at any moment; the batch still completes exactly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from helpers import batch_id_of, status, submit

from profilebase import batchfile
from profilebase.server.storage import sqlite_path

ROWS = 60_000
NAMES = ["a", "b", "c"]

pytestmark = pytest.mark.slow


class ServerProcess:
    """`python -m profilebase serve` as a real process on a loopback port."""

    def __init__(self, database: str | None, log: Path, port: int = 0, **settings: str) -> None:
        """``settings`` override the test defaults by name, e.g. ``workers="0"``."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            **({"PROFILEBASE_DATABASE": database} if database else {}),
            "PROFILEBASE_UNIT_ROWS": "1000",
            "PROFILEBASE_LEASE_SECONDS": "1",
            "PROFILEBASE_WORKERS": "2",
            **{f"PROFILEBASE_{name.upper()}": value for name, value in settings.items()},
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "profilebase", "serve", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise RuntimeError("server did not start; see " + str(log))
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def worker_process(database: str, log: Path) -> subprocess.Popen[bytes]:
    """`python -m profilebase worker` with ``ServerProcess``'s settings, in a process group
    of its own (SIGKILL it with ``os.killpg``)."""
    env = {
        **os.environ,
        "PROFILEBASE_DATABASE": database,
        "PROFILEBASE_UNIT_ROWS": "1000",
        "PROFILEBASE_LEASE_SECONDS": "1",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "profilebase", "worker", "--concurrency", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def test_sigkill_during_a_large_batch(database_url: str, tmp_path: Path):
    """Kill right after the reply and again mid-way; restarted servers finish with exact counts."""
    database = database_url
    log = tmp_path / "server.log"
    rows = [[f"c{i}", f"a{i}", "" if i % 3 else f"b{i}", "ü 東京,%+"] for i in range(ROWS)]
    rows += [[f"c{i}", "", f"b-late{i}", ""] for i in range(0, ROWS, 7)]  # duplicates: later wins
    body = batchfile.encode("thirdPartyId", NAMES, rows)

    server = ServerProcess(database, log)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            batch_id = batch_id_of(submit(http, body))
        server.kill()  # 1. right after success=true: nothing applied yet, maybe
        # 2. in the middle of applying units. The workers run as a process of their own,
        # started once the server answers: a server's own workers may finish the batch
        # before its HTTP process first answers (seen on a fast machine).
        server = ServerProcess(database, log, workers="0")
        worker = worker_process(database, log)
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                consumed = wait_until(
                    lambda: int(status(http, batch_id)["consumedCount"]), interval=0.005
                )
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        server.kill()
        server = ServerProcess(database, log)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            final = wait_until(lambda: (s := status(http, batch_id))["status"] == "complete" and s)
    finally:
        server.kill()

    total = len(rows)
    assert 0 < consumed < total  # the second kill did land mid-batch
    assert final == {
        "batchId": batch_id,
        "status": "complete",
        "batchSize": str(total),
        "consumedCount": str(total),
        "successfulUpdates": str(total),
        "profilesNotFound": "0",
        "failedUpdates": "0",
    }
    expected: dict[str, dict[str, str]] = {}
    for row in rows:
        expected.setdefault("t:" + row[0], {}).update(
            {n: v for n, v in zip(NAMES, row[1:], strict=False) if v}
        )
    stored = {
        pkey: {name: entry[0] for name, entry in json.loads(attrs).items()}
        for pkey, attrs in stored_profiles(database)
    }
    assert stored == expected


def stored_profiles(database: str) -> list[tuple[str, str]]:
    """(profile key, attributes as JSON text) of every stored profile, read from the tables."""
    query = "SELECT pkey, attrs FROM profiles"
    if database.startswith("sqlite"):
        db = sqlite3.connect(sqlite_path(database))
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()
    import psycopg

    with psycopg.connect(database) as pg:
        return pg.execute("SELECT pkey, attrs::text FROM profiles").fetchall()
