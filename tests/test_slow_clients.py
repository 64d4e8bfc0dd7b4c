"""Slow and abandoned clients are closed (client_timeout) and connections are capped
(max_connections), against a real `profilebase serve` over real sockets."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import batch_id_of, status, submit, xml_fields
from test_crash import ServerProcess, wait_until

pytestmark = pytest.mark.slow

BATCH = b"batch=thirdPartyId,tier\ncrm-1,gold\ncrm-2,silver\n"
UPDATE = "/m2/demo/v2/profile/batchUpdate"
#: client_timeout of the servers under test, in seconds.
TIMEOUT = 1


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/slow.db"


@pytest.fixture
def server(database: str, tmp_path: Path) -> Iterator[ServerProcess]:
    # One HTTP process: the tests count its sockets, and limits are per process.
    process = ServerProcess(
        database, tmp_path / "server.log", workers="0", processes="1", client_timeout=str(TIMEOUT)
    )
    yield process
    process.kill()


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def head(content_length: int) -> bytes:
    return (
        f"POST {UPDATE} HTTP/1.1\r\nHost: test\r\nContent-Length: {content_length}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    ).encode()


def reply_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def dribble(sockets: list[socket.socket], data: bytes, until_closed: float = 30.0) -> int:
    """Send ``data`` one byte at a time to every socket, a byte every 0.2 s (well inside
    the timeout's silence), until the server has closed them all; return bytes sent each."""
    return dribble_each([(sock, data) for sock in sockets], until_closed)


def dribble_each(pairs: list[tuple[socket.socket, bytes]], until_closed: float = 30.0) -> int:
    """``dribble`` with data of its own for each socket."""
    sent = 0
    deadline = time.monotonic() + until_closed
    open_ = list(pairs)
    while open_ and time.monotonic() < deadline:
        for pair in list(open_):
            sock, data = pair
            try:
                if sent >= len(data):
                    raise OSError("nothing left to send")
                sock.sendall(data[sent : sent + 1])
            except OSError:
                open_.remove(pair)
        sent += 1
        time.sleep(0.2)
    return sent


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_sockets(pid: int) -> int:
    """The process's open sockets: its listener and its connections. (Its other files include
    the SQLite connections its pool keeps for reuse, which grow with concurrency.)"""
    folder = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(folder):
        try:
            count += os.readlink(f"{folder}/{name}").startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


def batches_stored(database: str) -> int:
    with sqlite3.connect(database.removeprefix("sqlite:///")) as db:
        return int(db.execute("SELECT count(*) FROM batches").fetchone()[0])


def test_dribbled_headers_are_answered_408_and_closed(server: ServerProcess, tmp_path: Path):
    """Headers sent a byte every 0.2 s (never silent for the timeout) must still be complete
    within client_timeout of their first byte: 408, connection closed, one log line."""
    sock = connect(server)
    request = head(len(BATCH)) + BATCH
    sent = dribble([sock], request)
    reply = reply_of(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b"request line and headers" in reply
    assert sent < len(request)
    log = (tmp_path / "server.log").read_text()
    assert "(client_timeout): no complete request line and headers within 1 s" in log
    assert "Traceback" not in log


def test_dribbled_body_is_answered_408_and_nothing_is_stored(server: ServerProcess, database: str):
    """A body dribbled a byte every 0.2 s falls under the minimum rate: 408, no batch."""
    sock = connect(server)
    sock.sendall(head(len(BATCH)))
    dribble([sock], BATCH)
    reply = reply_of(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b"bytes/s" in reply
    assert batches_stored(database) == 0


def test_short_body_for_its_content_length_is_answered_408(
    server: ServerProcess, database: str, tmp_path: Path
):
    """A Content-Length longer than the body sent, then silence: 408 after the timeout, one
    warning line saying how much arrived, no traceback, no batch."""
    sock = connect(server)
    sock.sendall(head(1000) + BATCH)
    reply = reply_of(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b"no byte for 1 s" in reply
    assert batches_stored(database) == 0
    log = (tmp_path / "server.log").read_text()
    lines = [line for line in log.splitlines() if "127.0.0.1" in line and "WARNING" in line]
    assert len(lines) == 1, lines
    assert f"{len(BATCH)} of 1000 bytes of the body of POST {UPDATE}" in lines[0]
    assert "Traceback" not in log


def test_a_slow_but_steady_upload_is_accepted(server: ServerProcess):
    """A body that takes longer than client_timeout in all, sent steadily (4 KB/s, above the
    floor), is read whole and accepted."""
    rows = b"".join(b"crm-%05d,gold\n" % i for i in range(400))
    body = b"batch=thirdPartyId,tier\n" + rows
    sock = connect(server)
    sock.sendall(head(len(body)))
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    for piece in pieces:
        sock.sendall(piece)
        time.sleep(0.25)
    sock.settimeout(30)
    reply = sock.recv(65536)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert b"<success>true</success>" in reply
    assert len(pieces) * 0.25 > TIMEOUT  # the upload took longer than the timeout


def test_hundreds_of_idle_and_slow_connections_are_closed_and_their_files_freed(
    database: str, tmp_path: Path
):
    """300 idle connections, 30 dribbling headers and 30 dribbling bodies: a normal request
    is still answered meanwhile, every one of them is closed, and the server's open sockets
    come back to where they started. client_timeout is 5 s here: the 361 connections are
    seen open at once only within a timeout of the first (a busy machine may take more than
    TIMEOUT to open them all); the dribbles (5 bytes/s) complete nothing in 5 s either."""
    server = ServerProcess(
        database, tmp_path / "server.log", workers="0", processes="1", client_timeout="5"
    )
    try:
        closed_and_freed(server)
    finally:
        server.kill()


def closed_and_freed(server: ServerProcess) -> None:
    pid = server.process.pid
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post(UPDATE, content=BATCH).status_code == 200  # warm: database open
        files = open_files(pid)
        start = open_sockets(pid) - 1  # without the connection of `http`
        idle = [connect(server) for _ in range(300)]
        headers = [connect(server) for _ in range(30)]
        bodies = [connect(server) for _ in range(30)]
        for sock in headers:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        for sock in bodies:
            sock.sendall(head(10_000))
        wait_until(lambda: open_sockets(pid) >= start + 361, timeout=30)
        response = http.post(UPDATE, content=BATCH)
        assert response.status_code == 200
        assert xml_fields(response)["success"] == "true"
        dribble_each(
            [(sock, b"X-Slow: " + b"a" * 100) for sock in headers]
            + [(sock, BATCH + b"crm-3," + b"a" * 100) for sock in bodies]
        )
    for sock in idle:
        sock.settimeout(30)
        assert sock.recv(100) == b""  # closed without a word: it never sent a byte
        sock.close()
    for sock in headers + bodies:
        assert reply_of(sock).startswith(b"HTTP/1.1 408 ")
    wait_until(lambda: open_sockets(pid) <= start, timeout=30)
    print(f"open files: {files} at start, {open_files(pid)} after (sockets back to {start})")


def test_connections_past_max_connections_are_answered_503_at_once(database: str, tmp_path: Path):
    """With max_connections=10 the eleventh connection gets 503 with Retry-After before it
    sends anything; once the idle ten time out, requests are served again."""
    server = ServerProcess(
        database,
        tmp_path / "server.log",
        workers="0",
        processes="1",  # max_connections is per HTTP process
        client_timeout="2",
        max_connections="10",
    )
    try:
        idle = [connect(server) for _ in range(10)]
        extra = connect(server)
        reply = reply_of(extra)
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        assert b"retry-after: 1" in reply.lower()
        assert b"max_connections" in reply
        for sock in idle:
            assert reply_of(sock) == b""
        response = httpx.post(server.url + UPDATE, content=BATCH, timeout=30)
        assert response.status_code == 200
    finally:
        server.kill()


#: client_timeout of the servers that send exports: a reader paused by a busy machine for
#: a second is not cut off.
READ_TIMEOUT = 2


def settled_sockets(pid: int) -> int:
    """The process's open sockets once the count holds still (a connection a client just
    closed may take a moment to close on the server's side)."""
    count = open_sockets(pid)
    for _ in range(100):
        time.sleep(0.2)
        now = open_sockets(pid)
        if now == count:
            return count
        count = now
    raise AssertionError("the server's sockets never held still")


@pytest.fixture
def exporting(tmp_path: Path) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    """A server holding 20,000 profiles (an export of about 20 MB), and a client of it
    that keeps no connection alive (the tests count the server's sockets)."""
    server = ServerProcess(
        f"sqlite:///{tmp_path}/unread.db",
        tmp_path / "server.log",
        processes="1",
        client_timeout=str(READ_TIMEOUT),
    )
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    try:
        with httpx.Client(base_url=server.url, timeout=60, limits=no_keep_alive) as http:
            value = "v" * 250
            rows = "".join(f"crm-{n},{value},{value},{value}\n" for n in range(20_000))
            batch_id = batch_id_of(submit(http, f"batch=thirdPartyId,a,b,c\n{rows}".encode()))
            wait_until(lambda: status(http, batch_id)["status"] == "complete")
            yield server, http
    finally:
        server.kill()


def ask_for_export(server: ServerProcess) -> socket.socket:
    """A connection with a 4 KB receive window that asks for the export."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /rest/v1/profiles?client=demo&format=jsonl HTTP/1.1\r\nHost: t\r\n\r\n")
    return sock


def test_a_reply_the_client_does_not_read_is_aborted(exporting, tmp_path: Path):
    """A client asks for the export and reads nothing of it (a small receive window, as a
    stalled reader has). Once the server's send buffers are full it has client_timeout to
    read some, then the connection is reset: its socket is freed, the export's snapshot
    with it, and one line says why; the server answers others meanwhile and after.
    Without the bound, the handler waits to send for ever, holding the connection and
    the snapshot."""
    server, http = exporting
    before = settled_sockets(server.process.pid)
    sock = ask_for_export(server)
    wait_until(lambda: open_sockets(server.process.pid) == before + 1, timeout=10)
    assert http.get("/healthz").status_code == 200  # served while the export waits
    wait_until(lambda: open_sockets(server.process.pid) == before, timeout=30)
    with pytest.raises(OSError):  # reset once what was sent is read
        while sock.recv(1 << 20):
            pass
    sock.close()
    assert http.get("/rest/v1/profiles/thirdPartyId/crm-7?client=demo").status_code == 200
    log = (tmp_path / "server.log").read_text()
    assert re.search(
        r"\(client_timeout\): it read [\d,]+ bytes of the reply to GET /rest/v1/profiles", log
    )
    assert "Traceback" not in log


def test_a_reply_read_slowly_but_steadily_is_not_cut_off(exporting, tmp_path: Path):
    """A client that reads the export at about 20 KB/s, far slower than the server sends
    it, for three timeouts: the buffers stay full all along, and the connection stays."""
    server, _ = exporting
    before = settled_sockets(server.process.pid)
    sock = ask_for_export(server)
    received = 0
    deadline = time.monotonic() + 3 * READ_TIMEOUT
    while time.monotonic() < deadline:
        received += len(sock.recv(4096))
        time.sleep(0.2)
    assert open_sockets(server.process.pid) == before + 1
    assert 50_000 < received < 2_000_000
    sock.close()
    assert "(client_timeout)" not in (tmp_path / "server.log").read_text()
