"""`serve --processes 2`: several HTTP processes on one port, batch workers beside them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from helpers import batch_id_of, process_tree, status, submit
from test_crash import ServerProcess, wait_until

from profilebase import batchfile

ROWS = 5_000


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (and they started)."""
    return sorted(process_tree(pid)[1:])


def socket_inodes(port: int, state: str) -> set[str]:
    """The inodes of the sockets on local ``port`` (IPv4) in ``state`` (0A listen, 01 open)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def holders(pids: list[int], inodes: set[str]) -> list[int]:
    """Those of ``pids`` that hold one of the socket ``inodes``."""
    found = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            found.append(pid)
    return found


def http_children(server: ServerProcess) -> list[int]:
    """The children of the server that hold a socket listening on its port."""
    return holders(children(server.process.pid), socket_inodes(server.port, "0A"))


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the process table in /proc")
def test_two_processes_answer_apply_a_batch_restart_and_stop(database_url: str, tmp_path: Path):
    """Both HTTP processes answer on one port; a batch completes; every process reads what
    any wrote; a killed HTTP process is replaced; SIGTERM stops the parent and every child."""
    server = ServerProcess(database_url, tmp_path / "server.log", processes="2")
    try:
        serving = wait_until(lambda: len(found := http_children(server)) == 2 and found, 30)
        assert len(children(server.process.pid)) >= 4  # and two worker processes
        rows = [[f"p{i}", f"v{i}"] for i in range(ROWS)]
        with httpx.Client(base_url=server.url, timeout=30) as http:
            batch_id = batch_id_of(submit(http, batchfile.encode("thirdPartyId", ["a"], rows)))
            wait_until(lambda: status(http, batch_id)["status"] == "complete", 120)
            assert status(http, batch_id)["successfulUpdates"] == str(ROWS)
        connections = [httpx.Client(base_url=server.url, timeout=30) for _ in range(16)]
        try:  # kept open: the kernel spreads new connections over the processes
            for n, http in enumerate(connections):
                key = f"p{n * (ROWS // 16)}"
                update = http.get(
                    "/m2/demo/profile/update", params={"mbox3rdPartyId": key, "profile.b": "x"}
                )
                assert update.status_code == 200 and "<success>true</success>" in update.text
            for n, http in enumerate(reversed(connections)):  # read what another may have written
                key = f"p{(15 - n) * (ROWS // 16)}"
                fetched = http.get(
                    f"/rest/v1/profiles/thirdPartyId/{key}", params={"client": "demo"}
                )
                assert fetched.status_code == 200, fetched.text
                stored = fetched.json()["profileAttributes"]
                assert stored["a"]["value"] == "v" + key[1:] and stored["b"]["value"] == "x"
            assert holders(serving, socket_inodes(server.port, "01")) == serving
        finally:
            for http in connections:
                http.close()

        os.kill(serving[0], signal.SIGKILL)
        replaced = wait_until(
            lambda: len(found := http_children(server)) == 2 and serving[0] not in found and found,
            30,
        )
        assert serving[1] in replaced
        for _ in range(10):
            with httpx.Client(base_url=server.url, timeout=30) as http:
                assert http.get("/healthz").status_code == 200
        assert "exited with -9; starting another" in (tmp_path / "server.log").read_text()

        everyone = children(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        deadline = time.monotonic() + 10
        while [pid for pid in everyone if Path(f"/proc/{pid}").exists()]:
            assert time.monotonic() < deadline, "a child outlived its parent"
            time.sleep(0.05)
    finally:
        server.kill()
