"""A request line plus headers longer than 64 KB is answered 431 however it arrives: in
one read, a read at a time, pipelined behind another request, or as one long path;
against a real `profilebase serve` over real sockets."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_crash import ServerProcess

from profilebase.server.web.server import MAX_HEAD_BYTES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("heads") / "server.log"


@pytest.fixture(scope="module")
def server(log: Path) -> Iterator[ServerProcess]:
    database = f"sqlite:///{log.parent}/heads.db"
    process = ServerProcess(database, log, workers="0", processes="1", client_timeout="5")
    yield process
    process.kill()


def head_of(size: int, target: str = "/healthz") -> bytes:
    """A GET of ``target`` whose request line and headers are exactly ``size`` bytes,
    padded with one header."""
    start = f"GET {target} HTTP/1.1\r\nHost: test\r\nX-Pad: "
    end = "\r\n\r\n"
    pad = size - len(start) - len(end)
    assert pad >= 0
    return (start + "p" * pad + end).encode()


def exchange(server: ServerProcess, *chunks: bytes, pause: float = 0.0) -> bytes:
    """Send ``chunks`` (``pause`` seconds apart) on one connection; everything the server
    sends until it closes the connection or goes quiet for 2 s."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(pause)
        sock.settimeout(2)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return data
            except ConnectionResetError:  # closed while we still sent: what came is kept
                return data
            if not chunk:
                return data
            data += chunk
    finally:
        sock.close()


def status_lines(reply: bytes) -> list[bytes]:
    """The status lines of the replies in ``reply`` (a body need not end in CRLF)."""
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", reply)


def test_a_head_of_exactly_the_limit_is_served(server: ServerProcess) -> None:
    reply = exchange(server, head_of(MAX_HEAD_BYTES))
    assert status_lines(reply) == [b"HTTP/1.1 200 OK"], reply[:300]


@pytest.mark.parametrize("size", [MAX_HEAD_BYTES + 1, 70_000, 1_000_000])
def test_a_head_past_the_limit_sent_at_once_is_answered_431(
    server: ServerProcess, log: Path, size: int
) -> None:
    reply = exchange(server, head_of(size))
    assert status_lines(reply) == [b"HTTP/1.1 431 Request Header Fields Too Large"], reply[:300]
    assert b"longer than 65,536 bytes; send long data in the body" in reply
    assert b"connection: close" in reply
    assert "bytes of request line and headers; answered 431" in log.read_text()


def test_a_head_past_the_limit_sent_a_piece_at_a_time_is_answered_431(
    server: ServerProcess,
) -> None:
    request = head_of(MAX_HEAD_BYTES + 10_000)
    pieces = [request[i : i + 8192] for i in range(0, len(request), 8192)]
    reply = exchange(server, *pieces, pause=0.02)
    assert status_lines(reply) == [b"HTTP/1.1 431 Request Header Fields Too Large"], reply[:300]


def test_a_long_head_pipelined_behind_a_short_request_is_answered_431_after_it(
    server: ServerProcess,
) -> None:
    reply = exchange(server, head_of(200) + head_of(MAX_HEAD_BYTES + 100))
    assert status_lines(reply) == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 431 Request Header Fields Too Large",
    ], reply[:600]


def test_a_path_past_the_limit_is_answered_431_not_400(server: ServerProcess) -> None:
    """A path of 65,536 bytes or more is more than the parser's URL reader takes."""
    request = b"GET /healthz?pad=" + b"q" * 65_536 + b" HTTP/1.1\r\nHost: test\r\n\r\n"
    reply = exchange(server, request)
    assert status_lines(reply) == [b"HTTP/1.1 431 Request Header Fields Too Large"], reply[:300]


def test_a_long_path_within_the_limit_is_served(server: ServerProcess) -> None:
    target = "/healthz?pad=" + "q" * 60_000
    reply = exchange(server, head_of(MAX_HEAD_BYTES, target))
    assert status_lines(reply) == [b"HTTP/1.1 200 OK"], reply[:300]


def test_the_server_serves_on_after_refusing_long_heads(server: ServerProcess, log: Path) -> None:
    for size in (MAX_HEAD_BYTES + 1, 300_000):
        exchange(server, head_of(size))
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    assert "Traceback" not in log.read_text()


def test_an_unreadable_request_pipelined_behind_a_short_one_is_answered_400_after_it(
    server: ServerProcess,
) -> None:
    unreadable = b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad\x01Name: x\r\n\r\n"
    reply = exchange(server, head_of(200) + unreadable)
    assert status_lines(reply) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"], reply[:600]
