"""OneWrite (web/server.py): a reply's writes in one turn of the event loop leave as one
write to the socket, in order; a long reply, a close and an abort do not wait.

The transport below only records what it is asked to write: what the kernel then does is
the test suite's real-socket tests' concern (every test of `profilebase serve` goes through OneWrite)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from test_crash import ServerProcess

from profilebase.server.web.server import ONE_WRITE_BYTES, OneWrite


class Recorded:
    """The calls a transport gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.calls.append(("close", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def run(steps: Any) -> list[tuple[str, Any]]:
    async def main() -> list[tuple[str, Any]]:
        recorded = Recorded()
        wrapped = OneWrite(recorded, asyncio.get_running_loop())  # type: ignore[arg-type]
        await steps(wrapped, recorded)
        await asyncio.sleep(0)
        return recorded.calls

    return asyncio.run(main())


def test_the_writes_of_one_turn_leave_as_one_in_order():
    async def steps(wrapped: OneWrite, recorded: Recorded) -> None:
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.write(b"body")
        assert recorded.calls == []  # held until the turn ends
        assert wrapped.get_write_buffer_size() == 7 + len(b"HTTP/1.1 200 OK\r\n\r\nbody")
        await asyncio.sleep(0)
        wrapped.write(b"next")

    assert run(steps) == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody"), ("write", b"next")]


def test_a_long_reply_leaves_at_once_and_close_sends_what_is_held_first():
    async def steps(wrapped: OneWrite, recorded: Recorded) -> None:
        wrapped.write(b"h")
        wrapped.write(b"x" * ONE_WRITE_BYTES)
        assert recorded.calls == [("write", b"h" + b"x" * ONE_WRITE_BYTES)]
        wrapped.write(b"tail")
        wrapped.close()

    assert run(steps) == [
        ("write", b"h" + b"x" * ONE_WRITE_BYTES),
        ("write", b"tail"),
        ("close", None),
    ]


def test_writelines_and_write_eof_keep_the_order_of_bytes():
    async def steps(wrapped: OneWrite, recorded: Recorded) -> None:
        wrapped.write(b"first,")
        wrapped.writelines([b"second,", b"third"])
        wrapped.write_eof()

    assert run(steps) == [("write", b"first,second,third"), ("write_eof", None)]


def test_abort_drops_what_is_held_and_the_rest_is_the_transports():
    async def steps(wrapped: OneWrite, recorded: Recorded) -> None:
        wrapped.write(b"never")
        wrapped.abort()
        assert wrapped.get_extra_info("peername") == ("127.0.0.1", 1)
        assert wrapped.is_closing() is False

    assert run(steps) == [("abort", None)]


def test_a_served_reply_arrives_whole(tmp_path: Path):
    """Over a real socket to `profilebase serve`: a small reply (head and body) arrives,
    and a second request on the same connection is answered after it."""
    server = ServerProcess(f"sqlite:///{tmp_path}/one.db", tmp_path / "server.log", workers="0")
    try:
        replies(server.port)
    finally:
        server.kill()


def replies(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = b""
            while not reply.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(4096)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.count(b"HTTP/1.1") == 1
