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
    padded with one header; written as tightly as HTTP allows (no space after a colon)."""
    start = f"GET {target} HTTP/1.1\r\nHost:test\r\nX-Pad:"
    end = "\r\n\r\n"
    pad = size - len(start) - len(end)
    assert pad >= 0
    return (start + "p" * pad + end).encode()


def exchange(server: ServerProcess, *chunks: bytes, pause: float = 0.0) -> bytes:
    """Send ``chunks`` (``pause`` seconds apart) on one connection; everything the server
    sends until it closes the connection or, once it began, goes quiet for 2 s (a busy
    machine may take longer than that to begin)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):  # refused: read what came
                break
            time.sleep(pause)
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
            sock.settimeout(2)
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


def many_headers(size: int) -> bytes:
    """A GET of /healthz whose head is exactly ``size`` bytes, of many 3-byte headers."""
    start = "GET /healthz HTTP/1.1\r\nHost:test\r\n"
    count, pad = divmod(size - len(start) - 6, 5)  # then "x:<pad>" CRLF CRLF
    return (start + "a:b\r\n" * count + "x:" + "p" * pad + "\r\n\r\n").encode()


@pytest.mark.parametrize("size", [60_000, MAX_HEAD_BYTES])
def test_many_short_headers_within_the_limit_are_served(server: ServerProcess, size: int) -> None:
    request = many_headers(size)
    assert len(request) == size
    assert status_lines(exchange(server, request)) == [b"HTTP/1.1 200 OK"]


def test_many_short_headers_past_the_limit_are_answered_431(server: ServerProcess) -> None:
    request = many_headers(MAX_HEAD_BYTES + 5)
    assert len(request) == MAX_HEAD_BYTES + 5
    reply = exchange(server, request)
    assert status_lines(reply) == [b"HTTP/1.1 431 Request Header Fields Too Large"], reply[:300]


def test_a_refusal_behind_slow_replies_waits_for_them_however_long(
    server: ServerProcess, log: Path
) -> None:
    """Requests whose replies the client reads slowly, longer than client_timeout (5 s),
    then a long head: every reply ahead arrives whole, then the 431."""
    ahead = 60  # 4 MB of replies: more than the socket buffers take
    request = b"GET /openapi.json HTTP/1.1\r\nHost: test\r\n\r\n" * ahead
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # before connecting: the window
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(request + head_of(MAX_HEAD_BYTES + 100))
        data = b""
        started = time.monotonic()
        sock.settimeout(10)
        while chunk := sock.recv(4096):
            data += chunk
            if time.monotonic() - started < 6:
                time.sleep(0.025)  # about 160 KB/s for the first 6 s
    finally:
        sock.close()
    statuses = status_lines(data)
    assert statuses == [b"HTTP/1.1 200 OK"] * ahead + [
        b"HTTP/1.1 431 Request Header Fields Too Large"
    ], (len(statuses), statuses[-3:])
    assert time.monotonic() - started > 5  # slower than client_timeout
    assert "Traceback" not in log.read_text()


def chunked_post(*pieces: bytes) -> bytes:
    """A batch sent with a chunked body (the batch route reads its body to the end)."""
    return (
        b"POST /m2/demo/v2/profile/batchUpdate HTTP/1.1\r\nHost: test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(pieces)
    )


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"X-T:" + b"t" * 100 + b"\r\n", id="many trailers"),
        pytest.param(b"0" * 100, id="a chunk size of endless zeros"),
    ],
)
def test_endless_trailers_or_chunk_framing_are_answered_431(
    server: ServerProcess, log: Path, tail: bytes
) -> None:
    """Trailers (after the last chunk) and chunk framing carry no content, and httptools
    keeps them until they end: past 64 KB of them in a row, 431 and closed."""
    chunk = b"19\r\nbatch=thirdPartyId,a\nx,1\n\r\n"
    start = chunk + b"0\r\n" if tail.startswith(b"X-T") else chunk
    pieces = [chunked_post(start)] + [tail * 100] * 20  # about 200 KB
    reply = exchange(server, *pieces, pause=0.01)
    assert b"HTTP/1.1 431 " in reply, reply[:300]
    assert "chunk sizes, extensions or trailers" in log.read_text()


BATCH_CHUNK = b"19\r\nbatch=thirdPartyId,a\nx,1\n\r\n"


def test_a_chunked_body_that_cannot_be_read_is_answered_400_at_once(server: ServerProcess) -> None:
    """Its handler waits for the body: the refusal must not wait for that handler's reply."""
    started = time.monotonic()
    reply = exchange(server, chunked_post(BATCH_CHUNK), b"ZZ\r\n", pause=0.05)
    assert status_lines(reply) == [b"HTTP/1.1 400 Bad Request"], reply[:300]
    assert time.monotonic() - started < 3  # not client_timeout (5 s) later


def test_a_chunked_body_that_cannot_be_read_behind_a_request_gets_its_400_after_it(
    server: ServerProcess,
) -> None:
    reply = exchange(server, head_of(200) + chunked_post(BATCH_CHUNK) + b"ZZ\r\n")
    assert status_lines(reply) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"], reply[:600]


def test_long_trailers_behind_an_accepted_batch_leave_its_reply_whole(
    server: ServerProcess,
) -> None:
    """The batch ahead was accepted: its client must get its 200, or it sends it again."""
    first = chunked_post(BATCH_CHUNK, b"0\r\n\r\n")
    second = chunked_post(BATCH_CHUNK, b"0\r\nX-T:" + b"t" * 70_000 + b"\r\n\r\n")
    reply = exchange(server, first + second)
    assert status_lines(reply) == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 431 Request Header Fields Too Large",
    ], reply[:600]


def test_trailers_under_the_limit_sent_apart_are_served(server: ServerProcess) -> None:
    """40 KB of trailers, each in a read of its own, are counted once."""
    trailers = [b"X-T:" + b"t" * 10_000 + b"\r\n" for _ in range(4)]
    reply = exchange(server, chunked_post(BATCH_CHUNK), b"0\r\n", *trailers, b"\r\n", pause=0.05)
    assert status_lines(reply) == [b"HTTP/1.1 200 OK"], reply[:300]


def test_a_read_that_ends_one_request_and_starts_the_next_is_not_counted_as_trailers(
    server: ServerProcess,
) -> None:
    first = chunked_post(BATCH_CHUNK)
    pad = b"X-Pad:" + b"p" * 60_000 + b"\r\n"
    second_head = chunked_post()[:-2] + pad + b"\r\n"
    reply = exchange(
        server,
        first,
        b"0\r\nX-T:" + b"t" * 10_000 + b"\r\n\r\n" + second_head,
        BATCH_CHUNK + b"0\r\n\r\n",
        pause=0.05,
    )
    assert status_lines(reply) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"], reply[:600]


@pytest.mark.parametrize(
    "bad",
    [b"\x00", b"\r", b"\xff\xfe"],
    ids=["NUL", "bare CR", "invalid UTF-8"],
)
@pytest.mark.parametrize("size", [1_000, MAX_HEAD_BYTES + 1, 200_000])
def test_bad_bytes_in_a_head_of_any_length_are_refused_or_served_never_a_500(
    server: ServerProcess, log: Path, bad: bytes, size: int
) -> None:
    """A bad byte in a header value: the parser refuses NUL and a bare CR (400); invalid
    UTF-8 is only bytes to it (served within the limit). Past the limit, never served."""
    head = head_of(size)
    at = head.index(b"X-Pad:") + 10
    request = head[:at] + bad + head[at + len(bad) :]
    statuses = status_lines(exchange(server, request))
    assert len(statuses) == 1, statuses
    status = statuses[0][9:12]
    if size > MAX_HEAD_BYTES:
        assert status in (b"400", b"431"), statuses
    elif bad == b"\xff\xfe":
        assert status == b"200", statuses
    else:
        assert status == b"400", statuses
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    assert "Traceback" not in log.read_text()
