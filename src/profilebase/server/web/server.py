"""The HTTP server: uvicorn with httptools, plus the limits uvicorn lacks for hostile clients.

uvicorn closes idle keep-alive connections, but nothing bounds how long a request
may take to arrive: a client that sends its headers or body a byte at a time, or
announces a longer Content-Length than it sends, holds its connection, its file
descriptor and its upload's memory for ever. ``GuardedProtocol`` is uvicorn's
httptools protocol with:

- ``client_timeout``: a request's line and headers must arrive within it, and its
  body may not go that long without a byte nor fall under ``MIN_BODY_RATE``;
  otherwise the connection is closed, with a 408 if any of the request had arrived
  (rules in ``GuardedProtocol``). The handler reading the body sees the client gone
  and frees what it held. A reply is bounded the same way: while the send buffers are
  full, the client must read it at ``MIN_BODY_RATE`` or its connection is reset;
- ``max_connections``: one more connection is answered 503 at once and closed;
- ``MAX_HEAD_BYTES``: a request line and headers longer than this are answered 431,
  however they arrive (after the replies to requests pipelined ahead of them).

``serve(app, settings)`` runs it in this process. ``serve_processes(settings)`` runs
several on one port (``processes``): the parent binds one listening socket per HTTP
process with ``SO_REUSEPORT``, so that the kernel spreads new connections evenly over
them, and a ``Supervisor`` runs each HTTP process on its socket beside the batch
worker processes. A restarted HTTP process takes over its predecessor's socket,
connections queued on it included. ``profilebase serve`` calls one or the other.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import fcntl
import logging
import multiprocessing
import resource
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from profilebase.models import now_ms
from profilebase.server import logs, metrics
from profilebase.server import secret as server_secret
from profilebase.server.settings import Settings, http_processes, trusted_proxies
from profilebase.server.storage import Store, open_settings_store
from profilebase.server.supervisor import SPAWN, Child, Supervisor
from profilebase.server.web.app import create_app, prepare
from profilebase.server.web.errors import TIMED_OUT, error_reply, printable, request_line
from profilebase.server.web.fetch_replies import ARRIVED
from profilebase.server.worker import run_process

log = logging.getLogger("profilebase.server.web")

#: The reply to a request the HTTP parser cannot read.
UNREADABLE = (
    "The request is not valid HTTP/1.1: its request line or a header cannot be read (a "
    "control character in a header, a Content-Length that is not a number). Fix the "
    "request and send it again."
)
#: Most bytes of a request line plus headers (nginx allows 32 KB, Node 16 KB).
MAX_HEAD_BYTES = 64 * 1024
#: Slowest average a request body may arrive at, and a reply be read at while the send
#: buffers are full, in bytes per second, over each ``client_timeout`` (Apache's
#: mod_reqtimeout uses the same floor).
MIN_BODY_RATE = 500
#: Seconds between two log lines about connections refused at ``max_connections``.
REFUSAL_LOG_SECONDS = 60.0
#: File descriptors kept beyond ``max_connections`` for the databases, logs and spools.
SPARE_FILES = 256


class Config(uvicorn.Config):
    """uvicorn's configuration, always with ``GuardedProtocol`` and its two limits."""

    def __init__(self, app: Any, *, client_timeout: float, max_connections: int, **kwargs: Any):
        self.client_timeout = client_timeout
        self.max_connections = max_connections
        super().__init__(app, http=GuardedProtocol, **kwargs)


#: Bytes of a reply held back for one write at most (a streamed reply past them goes out
#: at once).
ONE_WRITE_BYTES = 64 * 1024


class OneWrite:
    """A connection's transport whose writes in one turn of the event loop leave as one.

    uvicorn writes a reply's status line and headers, then its body: two ``send`` system
    calls, and with Nagle's algorithm off two packets, for every small reply. Held until
    the end of the turn (``call_soon``), they leave in one; past ``ONE_WRITE_BYTES`` held,
    or on ``close``, at once, so the order of bytes never changes and nothing waits.
    Everything else is the wrapped transport's.
    """

    __slots__ = ("transport", "loop", "held", "size")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.held: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if not self.held:
            self.loop.call_soon(self.flush)
        self.held.append(data)
        self.size += len(data)
        if self.size >= ONE_WRITE_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.held:
            data = self.held[0] if len(self.held) == 1 else b"".join(self.held)
            self.held.clear()
            self.size = 0
            self.transport.write(data)

    def writelines(self, lines: Iterable[bytes]) -> None:
        for data in lines:
            self.write(data)

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.transport.close()

    def abort(self) -> None:
        self.held.clear()
        self.size = 0
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self.size + self.transport.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def absolute_target(target: bytes) -> tuple[bytes, bytes] | None:
    """An absolute-form request target (``GET http://acme.x/p?q``) as its host (and port,
    without user information) and its origin form (``/p?q``; ``/`` for no path); None for
    the usual origin form (``GET /p?q``)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    end = min((i for i in map(rest.find, (b"/", b"?", b"#")) if i >= 0), default=len(rest))
    authority = rest[:end].rpartition(b"@")[2]
    if not authority:
        return None
    origin = rest[end:]
    return authority, origin if origin.startswith(b"/") else b"/" + origin


class HeadTooLong(Exception):
    """Raised in a parser callback to stop reading a head longer than ``MAX_HEAD_BYTES``."""


class GuardedProtocol(HttpToolsProtocol):
    """One HTTP connection, closed when its client is too slow or one too many.

    While a request is owed (from the connection's start, or from a request's first
    byte, to its last byte) one timer per connection watches three things, each
    bounded by ``client_timeout`` (T):

    1. the request line and headers arrive within T of their first byte (of the
       connection's start, for the first request): headers are small, and a client
       that sends them a byte at a time is an attack (slowloris);
    2. the body never goes T without a byte (an abandoned upload, a Content-Length
       longer than what is sent);
    3. in every T of the body at least ``MIN_BODY_RATE`` bytes per second arrive, so a
       body dribbled a byte every T - 1 seconds does not hold the connection for ever.

    Time during which the server itself does not read (flow control while a handler
    is busy) does not count against the client. The timer is re-armed for the time
    left rather than reset on every chunk, so a fast upload costs no timer churn.

    A reply the client does not read is bounded too: once the send buffers are full
    (``pause_writing``), the client must read ``MIN_BODY_RATE`` bytes a second of it over
    each T while they stay full, or the connection is reset (``check_reading``).
    """

    #: When the last line about refused connections was logged, and how many since.
    refusals_logged_at = float("-inf")
    refusals = 0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.client_timeout = config.client_timeout
        self.max_connections = config.max_connections
        self.incomplete = True  # a request is owed
        self.in_head = True  # ... and its line and headers are not complete
        self.head_bytes = 0  # bytes read while the head was incomplete
        self.head_parsed = 0  # bytes of the head the parser has handed over
        self.head_too_long = False
        self.content_seen = False
        #: The request whose handler runs (or ran last) on this connection.
        self.serving: Any = None
        #: Bytes of a body's framing and trailers since its last byte of content, and
        #: whether they went past ``MAX_HEAD_BYTES`` (``refuse_trailers``).
        self.unread_bytes = 0
        self.trailers_too_long = False
        #: A refusal owed once the responses ahead of it are sent (pipelining).
        self.pending_refusal: Callable[[], None] | None = None
        self.head_started = 0.0
        self.body_bytes = 0
        self.last_byte = 0.0
        self.window_started = 0.0
        self.window_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        #: Set while the connection's send buffers are full (``pause_writing``).
        self.write_timer: asyncio.TimerHandle | None = None
        #: Bytes of its reply the client had not taken at the last look (``check_reading``).
        self.queued_at_check = 0
        #: Set once the connection is gone (``connection_lost``).
        self.gone = False

    # -- connection events ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWrite(transport, self.loop))  # type: ignore[arg-type]
        if self.client is None:  # reset before we looked: the address accept() gave is kept
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                self.client = (str(peer[0]), int(peer[1]))
        if len(self.connections) > self.max_connections:
            self.refuse()
            return
        self.head_started = self.last_byte = self.loop.time()
        self.arm(self.client_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.disarm()
        self.resume_writing_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count the head's bytes two ways, so that a head longer than ``MAX_HEAD_BYTES``
        is answered 431 however it arrives: the bytes read while it is incomplete (a head
        that never ends), and the bytes the parser hands over (``on_url``,
        ``on_header``: a head that ends in the read that takes it past the limit, which
        ``on_headers_complete`` refuses before any handler starts)."""
        if self.transport.is_closing() or self.pending_refusal is not None:
            return  # refused or timed out: nothing more is read
        if self.incomplete:
            self.last_byte = self.loop.time()
        if self.in_head:  # counted before parsing: after it, all of it was head if still in it
            self.head_bytes += len(data)
        in_body = not self.in_head
        self.content_seen = False
        super().data_received(data)
        if self.transport.is_closing() or self.pending_refusal is not None:
            return
        if self.in_head and self.head_bytes > MAX_HEAD_BYTES:
            self.refuse_head()
        elif in_body and not self.in_head and not self.content_seen:
            # A read of a body with no byte of content: chunk sizes, extensions and
            # trailers, the last of which httptools keeps until they end.
            self.unread_bytes += len(data)
            if self.unread_bytes > MAX_HEAD_BYTES:
                self.refuse_trailers()

    def refuse_head(self) -> None:
        """Answer 431 to a head past ``MAX_HEAD_BYTES`` and close, after the replies owed
        ahead of it."""
        if self.owes_response():
            self.refuse_later(self.refuse_head)
            return
        log.warning(
            "client %s sent more than %s bytes of request line and headers; answered 431",
            self.client_text(),
            f"{MAX_HEAD_BYTES:,}",
        )
        self.reply_and_close(
            431,
            f"The request line and headers are longer than {MAX_HEAD_BYTES:,} bytes; "
            "send long data in the body.",
        )

    # -- parser events (httptools) -------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.incomplete:  # a later request on a kept-alive connection
            self.incomplete = True
            self.head_started = self.last_byte = self.loop.time()
            self.arm(self.client_timeout)
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.head_parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 3  # at least ":" and CRLF
        if self.in_head:
            self.head_parsed += size
        elif self.content_seen:  # a trailer in a read with content (else counted whole)
            self.unread_bytes += size
            if self.unread_bytes > MAX_HEAD_BYTES:
                self.trailers_too_long = True
                raise HeadTooLong
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # The request line's method, spaces, version and CRLF, and the blank line: the
        # count is exact for a head written tightly (no space after a colon), and never
        # more than the bytes sent.
        method = self.parser.get_method()
        if self.head_parsed + len(method) + len(" HTTP/1.1\r\n\r\n") + 1 > MAX_HEAD_BYTES:
            # Stop the parser: httptools raises, uvicorn calls send_400_response.
            self.head_too_long = True
            raise HeadTooLong
        absolute = absolute_target(self.url)
        if absolute:  # RFC 9112 3.2.2: the target's host, not the Host header's
            authority, self.url = absolute
            # In place: the request's scope holds this list.
            self.headers[:] = [(n, v) for n, v in self.headers if n != b"host"]
            self.headers.append((b"host", authority))
        self.in_head = False
        self.window_started = self.loop.time()
        self.window_bytes = 0
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """uvicorn starts serving a request here: at once, or, pipelined behind another on
        the connection, once that one's response is complete. Stamped with that moment
        (``FetchReplies.refresh``: a write answered before this request was sent, or
        before the one ahead of it was answered, was committed before it); a uvicorn that
        starts requests elsewhere leaves them unstamped, and every fetch checks."""
        # A key of our own, not in uvicorn's TypedDict of the scope.
        cycle.scope[ARRIVED] = time.monotonic()
        self.serving = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # resumes reading
        if self.pending_refusal is None:
            return
        if self.owes_response():
            self.flow.pause_reading()  # still nothing more is read
            return
        refusal, self.pending_refusal = self.pending_refusal, None
        if not self.transport.is_closing():
            refusal()

    def on_body(self, body: bytes) -> None:
        self.content_seen = True
        self.unread_bytes = 0
        self.body_bytes += len(body)
        self.window_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.incomplete = False
        self.in_head = True  # the next request's head, if one comes
        self.head_bytes = self.head_parsed = self.unread_bytes = 0
        self.content_seen = True  # the rest of this read is the next request's
        self.disarm()
        super().on_message_complete()

    # -- the client timeout --------------------------------------------------------------

    def arm(self, delay: float) -> None:
        self.disarm()
        self.timer = self.loop.call_later(max(delay, 0.01), self.check_timeout)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check_timeout(self) -> None:
        """Apply the three rules of the class docstring; close, or look again later."""
        self.timer = None
        if self.transport.is_closing() or not self.incomplete or self.pending_refusal:
            return  # (a refused request waits for the replies ahead of it, not for its client)
        now = self.loop.time()
        limit = self.client_timeout
        if self.flow.read_paused:  # we are not reading: the wait is ours, not the client's
            self.head_started = self.last_byte = self.window_started = now
            self.window_bytes = 0
            self.arm(limit)
            return
        if self.in_head:
            elapsed = now - self.head_started
            if elapsed >= limit:
                self.time_out(f"no complete request line and headers within {limit:g} s")
            else:
                self.arm(limit - elapsed)
            return
        silent = now - self.last_byte
        if silent >= limit:
            self.time_out(f"no byte for {limit:g} s")
            return
        window = now - self.window_started
        if window >= limit:
            if self.window_bytes < MIN_BODY_RATE * window:
                rate = self.window_bytes / window
                self.time_out(f"{rate:,.0f} bytes/s over {window:.1f} s, under {MIN_BODY_RATE}")
                return
            self.window_started, self.window_bytes = now, 0
            window = 0.0
        self.arm(min(limit - silent, limit - window))

    def time_out(self, reason: str) -> None:
        """Close a connection whose client is too slow.

        1. Tell the request's handler, if one runs, that the client is gone: it frees
           what it holds and, seeing the mark, logs nothing more.
        2. Log one line (at debug level for a connection that never sent a byte: an
           idle pre-opened connection is no attack).
        3. Answer 408 if any of the request arrived and no reply has started; close.
        """
        cycle = None if self.in_head else self.cycle
        if cycle is not None and not cycle.response_complete:
            marks = cycle.scope.setdefault("extensions", {})
            marks[TIMED_OUT] = {"client_timeout": self.client_timeout}
            cycle.disconnected = True
            cycle.message_event.set()
        if self.in_head and not self.head_bytes:
            log.debug("closed %s: no request within %g s", self.client_text(), self.client_timeout)
            self.transport.close()
            return
        if cycle is None:
            what = f"{self.head_bytes:,} bytes of its request line and headers"
        else:
            headers = dict(cycle.scope["headers"])
            expected = headers.get(b"content-length", b"?").decode("latin-1")
            what = (
                f"{self.body_bytes:,} of {printable(expected, 20)} bytes of the body of "
                f"{request_line(cycle.scope)}"
            )
        log.warning(
            "closed %s (client_timeout): %s; it had sent %s", self.client_text(), reason, what
        )
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        self.reply_and_close(
            408,
            f"The request did not arrive in time ({reason}). Send the whole request at once, "
            "with a Content-Length that matches the body.",
        )

    # -- a reply the client does not read ---------------------------------------------

    def pause_writing(self) -> None:
        """The connection's send buffers are full (the kernel's and the transport's): from
        now on the client must read at least ``MIN_BODY_RATE`` bytes a second of its reply,
        measured over each ``client_timeout``, or the connection is reset (``check_reading``)."""
        super().pause_writing()
        if self.write_timer is None:
            self.queued_at_check = self.unread_reply()
            self.write_timer = self.loop.call_later(self.client_timeout, self.check_reading)

    def resume_writing(self) -> None:
        self.resume_writing_timer()
        super().resume_writing()

    def resume_writing_timer(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def unread_reply(self) -> int:
        """Bytes of the reply the client has not taken: the transport's, and the kernel's
        send queue (sent but unacknowledged, or unsent). The kernel's alone shows a slow
        reader's progress: the transport hands it more only once a third of it is free."""
        queued = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                queued += struct.unpack(
                    "i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
                )[0]
            except OSError:  # not Linux: the transport's buffer alone (design.md)
                pass
        return queued

    def check_reading(self) -> None:
        """Reset a connection whose client read less than ``MIN_BODY_RATE`` bytes a second
        of its reply over the last ``client_timeout`` while the buffers stayed full: its
        handler, waiting to send more, sees the client gone and frees what it holds (an
        export, its database snapshot), and so do the connection's buffers."""
        self.write_timer = None
        # A closing transport still counts: uvicorn closes one after a reply's last byte
        # (``Connection: close``, or idle after a reply), and it waits for its buffer.
        if self.gone or not self.flow.write_paused:
            return
        queued = self.unread_reply()
        read = self.queued_at_check - queued
        if read >= MIN_BODY_RATE * self.client_timeout:
            self.queued_at_check = queued
            self.write_timer = self.loop.call_later(self.client_timeout, self.check_reading)
            return
        cycle = self.cycle
        what = "its reply"
        if cycle is not None and not cycle.response_complete:
            marks = cycle.scope.setdefault("extensions", {})
            marks[TIMED_OUT] = {"client_timeout": self.client_timeout}
            what = f"the reply to {request_line(cycle.scope)}"
        log.warning(
            "closed %s (client_timeout): it read %s bytes of %s in %g s, under %s a second",
            self.client_text(),
            f"{max(read, 0):,}",
            what,
            self.client_timeout,
            MIN_BODY_RATE,
        )
        # A reset, not a close: the kernel would otherwise keep the unsent reply and try
        # to deliver it for minutes after the descriptor is gone.
        sock = self.transport.get_extra_info("socket")
        try:
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # closed anyway, if not reset
            pass
        self.transport.abort()

    # -- refusing ------------------------------------------------------------------------

    def refuse(self) -> None:
        """Answer 503 at once to a connection past ``max_connections``; log it sparingly."""
        cls = type(self)
        cls.refusals += 1
        now = self.loop.time()
        if now - cls.refusals_logged_at >= REFUSAL_LOG_SECONDS:
            log.warning(
                "refused %d connection(s) in the last %g s: %d open, max_connections is %d",
                cls.refusals,
                REFUSAL_LOG_SECONDS,
                len(self.connections) - 1,
                self.max_connections,
            )
            cls.refusals_logged_at = now
            cls.refusals = 0
        self.reply_and_close(
            503,
            "The server has too many open connections (max_connections); retry in a moment.",
            retry_after=1,
        )

    def send_400_response(self, msg: str) -> None:
        """A request the parser cannot read (uvicorn has logged it): 400 in the format of
        the endpoint its path names (``errors.error_reply``), not uvicorn's plain text;
        then close. A head refused for its length is answered 431 instead."""
        if self.head_too_long:
            self.refuse_head()
            return
        if self.trailers_too_long:
            self.refuse_trailers()
            return
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        reply = error_reply(path, 400, UNREADABLE)
        media_type = reply.headers["content-type"].encode("latin-1")

        def answer() -> None:
            self.reply_and_close(400, body=bytes(reply.body), media_type=media_type)

        if self.reading_body():  # its head was complete: a chunked body that cannot be read
            self.refuse_body(answer)
        elif self.owes_response():
            self.refuse_later(answer)
        else:
            answer()

    def reading_body(self) -> bool:
        """Whether the parser is in the body of the request ``self.cycle`` is."""
        return not self.in_head and self.cycle is not None and self.cycle.scope is self.scope

    def refuse_body(self, answer: Callable[[], None]) -> None:
        """Refuse the request whose body is being read: its handler sees the client gone;
        ``answer`` once the replies ahead of it are sent (it waits in the pipeline, and
        never starts now), or at once if its own reply has not started; else close."""
        cycle = self.cycle
        if not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self.pipeline and self.pipeline[0][0] is cycle:
            self.pipeline.popleft()
            self.refuse_later(answer)
        elif cycle.response_started:
            self.transport.close()
        else:
            answer()

    def refuse_trailers(self) -> None:
        """A chunked body whose framing or trailers run past ``MAX_HEAD_BYTES`` without a
        byte of content: refused as ``refuse_body`` does, with 431."""
        log.warning(
            "client %s sent more than %s bytes of chunk sizes, extensions or trailers in a "
            "row; refused (431, or closed if its reply had started)",
            self.client_text(),
            f"{MAX_HEAD_BYTES:,}",
        )

        def answer() -> None:
            self.reply_and_close(
                431,
                f"The chunked body's sizes, extensions or trailers run past "
                f"{MAX_HEAD_BYTES:,} bytes; send data in the chunks.",
            )

        self.refuse_body(answer)

    def owes_response(self) -> bool:
        """Whether a request read before is still being answered or waits its turn."""
        return bool(self.pipeline) or (
            self.serving is not None and not self.serving.response_complete
        )

    def refuse_later(self, refusal: Callable[[], None]) -> None:
        """Answer a request the parser refused once the responses ahead of it are sent
        (``on_response_complete``), so that each pipelined request gets its own reply in
        order; read nothing more meanwhile."""
        self.pending_refusal = refusal
        self.flow.pause_reading()
        self.disarm()

    def reply_and_close(
        self,
        status: int,
        message: str = "",
        retry_after: int | None = None,
        body: bytes | None = None,
        media_type: bytes = b"text/plain; charset=utf-8",
    ) -> None:
        """Write a reply straight to the socket (``message`` as plain text, or ``body``),
        then close it."""
        if body is None:
            body = (message + "\n").encode("utf-8")
        head = [
            STATUS_LINE[status],
            b"content-type: %s\r\n" % media_type,
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()

    def client_text(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


def config(app: Any, settings: Settings, log_level: str = "info") -> Config:
    """The server's configuration from the settings.

    ``X-Forwarded-For``/``-Proto`` are believed only from ``forwarded_allow_ips``
    (uvicorn's own default trusts loopback, which would let any local process choose the
    address its failed authentications are counted under).
    """
    proxies = trusted_proxies(settings.forwarded_allow_ips)
    return Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # profilebase logs each request itself (web/observe.py)
        log_config=None,  # uvicorn's lines go through profilebase's format too
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies,
        client_timeout=settings.client_timeout,
        max_connections=settings.max_connections,
    )


def raise_file_limit(connections: int) -> None:
    """Lift this process's open-file limit (soft, up to the hard one) to fit ``connections``.

    Without room, accepting fails before ``max_connections`` can refuse politely.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning(
                "open files are limited to %d (ulimit -n): fewer than max_connections (%d) "
                "plus %d; lower max_connections or raise the limit",
                target,
                connections,
                SPARE_FILES,
            )


def serve(
    app: Any, settings: Settings, log_level: str = "info", sock: socket.socket | None = None
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (on ``sock`` if given, else on ``host:port``);
    exit with status 3 if it cannot start."""
    raise_file_limit(settings.max_connections)
    server = uvicorn.Server(config(app, settings, log_level))
    server.run(sockets=None if sock is None else [sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


#: Exit status of a server that could not start (uvicorn's too).
STARTUP_FAILURE = 3


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets bound to one address with ``SO_REUSEPORT`` (port 0: the first
    one's port); exit with status 3, saying why, if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            # IPPROTO_TCP named: asyncio turns Nagle's algorithm off only for sockets that
            # say so, and with it on every reply waits some 40 ms for the client's ACK.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", host, port, exc)
        for sock in sockets:
            sock.close()
        sys.exit(STARTUP_FAILURE)
    return sockets


class StartLine:
    """Holds the first HTTP processes back until each has started, so that ``serve``
    answers on its port only once every process can (a process restarted later passes at
    once). Replaces ``prepare`` in their start-up: the parent prepared the database."""

    #: Seconds a process waits for the others before it serves anyway.
    TIMEOUT = 60.0

    def __init__(self, context: Any, count: int) -> None:
        self.count = count
        self.arrived = context.Value("i", 0)
        self.open = context.Event()

    def __call__(self, store: Store, settings: Settings) -> None:
        if self.open.is_set():
            return
        with self.arrived.get_lock():
            self.arrived.value += 1
            if self.arrived.value >= self.count:
                self.open.set()
        self.open.wait(self.TIMEOUT)


def run_http_process(
    settings: Settings, log_level: str, sock: socket.socket, start_line: StartLine
) -> None:
    """One HTTP process of ``serve_processes``: the app without batch workers, on ``sock``."""
    logs.configure(log_level.upper(), settings.log_format)
    app = create_app(settings, workers=0, startup=start_line, freeze=True, writer_apart=True)
    serve(app, settings, log_level, sock)


def serve_processes(settings: Settings, log_level: str = "info") -> None:
    """Serve on ``http_processes(settings)`` HTTP processes and ``workers`` batch worker
    processes until SIGINT or SIGTERM.

    1. Prepare the database once (migrations, the demo client, the server secret), so
       that the children start on a ready database and none races another to create
       the secret file.
    2. Give every child the same dashboard session key (a random one unless set) and one
       directory for the metrics, so that any process's /metrics counts them all.
    3. Bind one socket per HTTP process, then let a ``Supervisor`` run the children;
       the first HTTP processes serve once all of them have started (``StartLine``).
    """
    store = open_settings_store(settings)
    try:
        prepare(store, settings)
        server_secret.open_secret(settings, store, now_ms())
    finally:
        store.close()
    if not settings.session_secret:
        settings = dataclasses.replace(settings, session_secret=secrets.token_urlsafe(32))
    if metrics.multiprocess_directory() is None:
        directory = tempfile.mkdtemp(prefix="profilebase-metrics-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        metrics.use_multiprocess_directory(directory)
    sockets = listening_sockets(settings.host, settings.port, http_processes(settings))
    level = logging.getLogger().getEffectiveLevel()
    start_line = StartLine(multiprocessing.get_context(SPAWN), len(sockets))
    children = [
        Child("profilebase-http", run_http_process, (settings, log_level, s, start_line))
        for s in sockets
    ]
    children += [Child("profilebase-worker", run_process, (settings, level))] * settings.workers
    try:
        Supervisor(children, stop_timeout=settings.lease_seconds + 10).run()
    finally:
        for sock in sockets:
            sock.close()
