"""Many nodes on one PostgreSQL: 2 API servers and 3 worker processes, with faults.

Batches go in concurrently through both servers while single profile updates
run, one worker is SIGKILLed holding a lease and one server is restarted; every
batch still completes with exact counts and every profile equals the one-by-one
model in acceptance order, with the updates' last values on top.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import PostgresServer
from helpers import attributes, batch_id_of, status, submit
from test_crash import ServerProcess, wait_until
from test_ordering import NAMES, check_counts, model, random_batches

from profilebase import batchfile

pytestmark = pytest.mark.slow

#: Profiles that exist before the faults begin; single updates set their attribute ``s``,
#: which no batch writes, while batches write the others.
SEED = [[f"id{n}", "", "", "", ""] for n in range(10)]
UPDATE_ROUNDS = 200

#: Small units and short leases, so that a batch spans many units and a dead
#: worker's unit is taken over within a second.
NODE_SETTINGS = {
    "unit_rows": "8",
    "lease_seconds": "1",
    "poll_interval": "0.05",
    "postgres_pool_size": "4",
}


class WorkerProcess:
    """`python -m profilebase worker` as a real process."""

    def __init__(self, database: str, log: Path) -> None:
        env = {
            **os.environ,
            "PROFILEBASE_DATABASE": database,
            **{f"PROFILEBASE_{name.upper()}": value for name, value in NODE_SETTINGS.items()},
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "profilebase", "worker", "--concurrency", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.clone()
    yield postgres.with_database(name)
    postgres.drop(name)


def held_unit(database: str, pid: int) -> tuple[int, int] | None:
    """The unit the worker with this pid holds a lease on, if any (its name has the pid)."""
    import psycopg

    with psycopg.connect(database, autocommit=True) as db:
        row = db.execute(
            "SELECT batch_seq, unit_no FROM batch_units "
            "WHERE state = 'running' AND lease_owner LIKE %s",
            (f"%:{pid}:%",),
        ).fetchone()
    return None if row is None else (row[0], row[1])


def kill_holding_a_lease(worker: WorkerProcess, database: str) -> tuple[int, int]:
    """SIGKILL ``worker`` at a moment it holds a lease: freeze it, look, kill or thaw."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        os.kill(worker.pid, signal.SIGSTOP)
        unit = held_unit(database, worker.pid)
        if unit is not None:
            worker.kill()
            return unit
        os.kill(worker.pid, signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError("the worker never held a lease")


def test_two_servers_three_workers_with_a_killed_worker_and_a_restart(
    database: str, tmp_path: Path
):
    """Every batch completes exactly and every profile equals the acceptance-order model."""
    log = tmp_path / "nodes.log"
    batches = random_batches(random.Random(11), 20, most_rows=120, ids=60)
    bodies = [batchfile.encode("thirdPartyId", NAMES, rows) for _, rows in batches]
    servers: list[ServerProcess] = []
    workers: list[WorkerProcess] = []
    try:
        servers = [ServerProcess(database, log, workers="0", **NODE_SETTINGS) for _ in range(2)]
        workers = [WorkerProcess(database, log) for _ in range(3)]
        # Every worker polls before any batch arrives, so each takes part from the start.
        wait_until(lambda: all(f":{w.pid}:" in log.read_text() for w in workers))
        accepted: dict[int, str] = {}  # batch number -> batch id
        with httpx.Client(base_url=servers[1].url, timeout=60) as http:
            seed_id = batch_id_of(submit(http, batchfile.encode("thirdPartyId", NAMES, SEED)))
            wait_until(lambda: status(http, seed_id, details=False)["status"] == "complete")
        stop_updates = threading.Event()
        last: dict[str, str] = {}  # profile id -> the value its last single update set

        def send(number: int) -> None:
            server = servers[number % 2]
            with httpx.Client(base_url=server.url, timeout=60) as http:
                response = submit(http, bodies[number], v2=batches[number][0])
            assert response.status_code == 200, response.text
            accepted[number] = batch_id_of(response)

        def update(ids: list[str]) -> None:
            """Single updates of attribute ``s`` through the server that stays up, in rounds."""
            with httpx.Client(base_url=servers[1].url, timeout=60) as http:
                for round_no in range(UPDATE_ROUNDS):
                    if stop_updates.is_set():
                        return
                    for identifier in ids:
                        form = {"mbox3rdPartyId": identifier, "profile.s": f"r{round_no}"}
                        response = http.post("/m2/demo/profile/update", data=form)
                        assert response.status_code == 200, response.text
                        last[identifier] = f"r{round_no}"

        victim, survivors = workers[0], workers[1:]
        with ThreadPoolExecutor(2) as updaters:
            updating = [updaters.submit(update, [row[0] for row in SEED[k::2]]) for k in (0, 1)]
            # The survivors sleep while the first batches arrive, so the victim surely holds
            # a lease when it is killed, however fast or loaded the machine is.
            for worker in survivors:
                os.kill(worker.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(10) as pool:
                    list(pool.map(send, range(10)))
                unit = kill_holding_a_lease(victim, database)
            finally:
                for worker in survivors:
                    os.kill(worker.pid, signal.SIGCONT)
            port = servers[0].port
            servers[0].kill()
            servers[0] = ServerProcess(database, log, port=port, workers="0", **NODE_SETTINGS)
            with ThreadPoolExecutor(10) as pool:
                list(pool.map(send, range(10, 20)))
            stop_updates.set()
            for future in updating:
                future.result()
        assert last, "no single update ran"

        with httpx.Client(base_url=servers[1].url, timeout=60) as http:
            for batch_id in accepted.values():
                wait_until(
                    lambda b=batch_id: status(http, b, details=False)["status"] == "complete"
                )
            order = sorted(accepted, key=lambda number: int(accepted[number].rsplit("-", 1)[1]))
            in_order = [(True, SEED)] + [batches[n] for n in order]
            check_counts(http, in_order, [seed_id] + [accepted[n] for n in order])
            expected, _ = model(in_order)
            for identifier in {row[0] for _, rows in in_order for row in rows}:
                values = expected.get(identifier)
                if identifier in last:
                    values = {**(values or {}), "s": last[identifier]}
                assert attributes(http, identifier) == values, identifier
        state, tries, owner = unit_record(database, unit)  # another worker took it over
        assert state == "done" and tries >= 2 and f":{victim.pid}:" not in owner

        for worker in survivors:
            worker.process.send_signal(signal.SIGTERM)
        assert [worker.process.wait(30) for worker in survivors] == [0, 0]
    finally:
        for process in [*servers, *workers]:
            process.kill()


def unit_record(database: str, unit: tuple[int, int]) -> tuple[str, int, str]:
    """(state, attempts, lease owner) of one unit."""
    import psycopg

    with psycopg.connect(database, autocommit=True) as db:
        row = db.execute(
            "SELECT state, attempts, lease_owner FROM batch_units "
            "WHERE batch_seq = %s AND unit_no = %s",
            unit,
        ).fetchone()
    assert row is not None
    return row[0], int(row[1]), row[2]
