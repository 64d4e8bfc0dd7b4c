"""The online writes of a serving process in a process of their own (SQLite).

A process of ``serve`` answers HTTP on its event loop. With its online writes on a writer
thread beside the loop, both hold one GIL: together they use one core, and the writes
halve what the loop answers (docs/design.md, "the online writes in a process of their
own"). Here the event loop hands them, a group at a time, over a socket to a child process,
which runs each group as the writer thread would (``SQLiteStore.run_group_here``: the
writers' turn, one transaction, a savepoint per write) and answers each write's outcome
once the group is committed. No thread of the serving process takes part: the loop sends
and reads the socket itself, so no hand-over waits for the GIL.

- **What crosses**: a write is the name of a store method that writes at once (``REMOTE``)
  and its arguments; an outcome is a result or an error, made again on this side as the
  same class with the same message and attributes (``_Outcome``). Messages are pickles
  framed as ``multiprocessing.connection`` frames them: the child reads and answers with a
  plain ``Connection``.
- **Order**: the writes a loop turn collects form one group; at most ``IN_FLIGHT`` groups
  are sent and not yet answered, so the child starts the next group as it answers one.
  The child runs groups in the order sent and answers in that order.
- **Failures**: the child is spawned when the link opens, and again at the next write
  after it died. The groups of a child that died, or that did not answer within
  ``answer_timeout`` (it is then killed), fail with a 503 that says their outcome is
  unknown: the child may have committed before it stopped. A write whose caller gave up
  before its group was sent is dropped.
- **Closing**: ``close`` waits for the groups sent, then closes the socket; the child
  finishes and exits. The child dies with its parent (``die_with_parent``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from profilebase.errors import DatabaseUnavailable, ProfilebaseError, StorageError
from profilebase.server.storage.sqlite.writers import Call

log = logging.getLogger("profilebase.server.storage")

#: The store methods the child makes: the online writes.
REMOTE = frozenset({"update_profile", "visit", "delete_profile"})
#: Groups sent and not yet answered, at most.
IN_FLIGHT = 2
#: Seconds a child may take to start (import, open the store) before it is taken for hung.
START_SECONDS = 30.0
#: A frame's header: its length (``multiprocessing.connection``'s framing).
_HEADER = struct.Struct("!i")
#: The header of a frame longer than ``_HEADER`` holds: -1, then the length in 8 bytes.
_LONG_HEADER = struct.Struct("!Q")


def unknown_outcome(why: str) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        "The database writer stopped while it ran this write, so whether it was applied is "
        "unknown. Fetch the profile to see, or send the write again.",
        retry_after=1,
        detail=why,
    )


@dataclass(frozen=True)
class _Outcome:
    """One write's outcome as it crosses: a result, or an error as its class, ``args`` and
    attributes (errors with an ``__init__`` of their own do not pickle whole)."""

    result: Any = None
    error: type[BaseException] | None = None
    args: tuple[Any, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, future: Future[Any]) -> _Outcome:
        error = future.exception()
        return cls(result=future.result()) if error is None else cls.of_error(error)

    @classmethod
    def of_error(cls, error: BaseException) -> _Outcome:
        return cls(error=type(error), args=error.args, state=dict(vars(error)))

    def settle(self, future: asyncio.Future[Any]) -> None:
        if future.done():  # its caller gave up; the write was made all the same
            return
        if self.error is None:
            future.set_result(self.result)
            return
        error = self.error.__new__(self.error)
        error.args = self.args
        error.__dict__.update(self.state)
        future.set_exception(error)


#: A write waiting to be sent: its caller's future, the store method's name, its arguments.
_Queued = tuple[asyncio.Future[Any], str, tuple[Any, ...]]


@dataclass
class _Sent:
    """A group sent and not yet answered."""

    futures: list[asyncio.Future[Any]]
    deadline: float


class _Channel(asyncio.Protocol):
    """One child's socket: its answers, whole, to the link, and its end."""

    def __init__(self, link: WriterLink, loop: asyncio.AbstractEventLoop) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        #: Done once the child has started (its first frame).
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (frame := _unframe(self.buffer)) is not None:
            if self.ready.done():
                self.link.answered(self, pickle.loads(frame))
            else:
                self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"it stopped as it started ({exc})"))
        self.link.lost(self, exc)


class WriterLink:
    """The event loop's side: ``write`` queues a write, and the loop sends the writes of
    one turn as a group (``_flush``) and settles them from the answer (``answered``)."""

    def __init__(
        self,
        path: str,
        synchronous: str,
        timeout: float,
        answer_timeout: float,
        most: int,
        log_format: str = "text",
    ) -> None:
        self.path = path
        #: How the child logs (``logs.configure``), at the level this process logs at.
        self.log_format = log_format
        self.synchronous = synchronous
        self.timeout = timeout
        #: Seconds a group may wait for its answer once the child has started it (answered
        #: the group before it) before the child is killed.
        self.answer_timeout = answer_timeout
        #: Writes one group holds at most.
        self.most = most
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: BaseProcess | None = None
        self._channel: _Channel | None = None
        self._starting: asyncio.Task[None] | None = None
        #: When the last start failed, or the second child in a row died within a second of
        #: its start (loop time): for a second after, writes answer 503 at once.
        self._failed_at: float | None = None
        self._started_at = 0.0
        self._quick_deaths = 0
        self._queue: list[_Queued] = []
        self._sent: deque[_Sent] = deque()
        self._flush_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        #: Children started so far: the first, and one after each that died.
        self.started = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def open(self) -> None:
        """Start the child (on the running loop, which the link then belongs to)."""
        self._loop = asyncio.get_running_loop()
        await self._start()

    async def write(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` (a store method named in ``REMOTE``) in the child's next group."""
        if self._closed or self._loop is None:  # the server is stopping
            raise DatabaseUnavailable(retry_after=1, detail="the writer link is closed")
        name = call.__name__
        if name not in REMOTE:
            raise ValueError(f"the writer process does not make {name!r}")
        future = self._loop.create_future()
        self._queue.append((future, name, args))
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)
        return await future

    async def close(self) -> None:
        """Wait for the writes queued and sent (at most ``answer_timeout``), then let the
        child go: it exits once its socket is closed."""
        self._closed = True
        if self._loop is None:
            return
        deadline = self._loop.time() + self.answer_timeout
        while (self._sent or self._queue) and self._loop.time() < deadline:
            if self._channel is None and self._starting is None:
                break  # nothing will answer them
            await asyncio.sleep(0.01)
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        queued, self._queue = self._queue, []
        for future, _, _ in queued:
            _fail(future, DatabaseUnavailable(retry_after=1, detail="the server is stopping"))
        if self._sent:
            self._fail_sent("the server stopped before the writer process answered")
        process = self._process
        self._stop(kill=False)
        if process is not None:
            await asyncio.to_thread(process.join, 5)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)

    # -- sending ------------------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_due = False
        self._queue = [queued for queued in self._queue if not queued[0].cancelled()]
        while self._queue and len(self._sent) < IN_FLIGHT:
            channel = self._channel
            if channel is None or not channel.usable():
                self._start_again()
                return
            queued, self._queue = self._queue[: self.most], self._queue[self.most :]
            queued, data = _encoded(queued)
            if not queued:
                continue  # none of them could be sent; the next ones may
            assert channel.transport is not None and self._loop is not None
            channel.transport.write(_frame(data))
            self._sent.append(
                _Sent([f for f, _, _ in queued], self._loop.time() + self.answer_timeout)
            )
            if self._timer is None:
                self._arm_timer()

    def _arm_timer(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_at(self._sent[0].deadline, self._answer_late)

    # -- the child ----------------------------------------------------------------------
    def _start_again(self) -> None:
        """Start another child for the writes queued, unless one is starting, the link is
        closing, or a start failed less than a second ago (then they answer 503 now)."""
        if self._starting is not None or self._closed or self._loop is None:
            return
        if self._failed_at is not None and self._loop.time() - self._failed_at < 1.0:
            self._fail_queued(
                lambda: DatabaseUnavailable(retry_after=1, detail="no writer process started")
            )
            return
        self._starting = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        try:
            await self._start()
        except Exception as exc:
            assert self._loop is not None
            self._failed_at = self._loop.time()
            why = exc.detail if isinstance(exc, StorageError) else repr(exc)
            log.error("online writes: no writer process could be started: %s", why)
            self._fail_queued(lambda: DatabaseUnavailable(retry_after=1, detail=why))
            return
        finally:
            self._starting = None
        self._failed_at = None
        self._flush()

    def _fail_queued(self, error: Callable[[], BaseException]) -> None:
        queued, self._queue = self._queue, []
        for future, _, _ in queued:
            _fail(future, error())

    async def _start(self) -> None:
        assert self._loop is not None
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=serve_writes,
            args=(
                theirs,
                self.path,
                self.synchronous,
                self.timeout,
                logging.getLogger().getEffectiveLevel(),
                self.log_format,
            ),
            name="profilebase-writer",
            daemon=True,
        )
        loop = self._loop
        channel = _Channel(self, loop)
        try:
            process.start()
            sock = socket.socket(fileno=os.dup(ours.fileno()))
            try:
                await loop.connect_accepted_socket(lambda: channel, sock)
            except BaseException:
                sock.close()
                raise
            await asyncio.wait_for(channel.ready, START_SECONDS)
            if not channel.usable():
                raise ConnectionError("it stopped as it started")
        except BaseException as exc:
            if not channel.ready.done():
                channel.ready.cancel()
            elif not channel.ready.cancelled():
                channel.ready.exception()  # retrieved: asyncio would log it as never read
            if channel.transport is not None:
                channel.transport.abort()
            if process.pid is not None:
                process.kill()
                process.join(0)
            if not isinstance(exc, (OSError, TimeoutError)):
                raise
            raise DatabaseUnavailable(
                "The database writer could not be started; try again in a moment.",
                retry_after=1,
                detail=f"starting the writer process: {exc}",
            ) from exc
        finally:
            ours.close()
            theirs.close()
        self._process, self._channel = process, channel
        self._started_at = loop.time()
        self.started += 1

    def lost(self, channel: _Channel, exc: Exception | None) -> None:
        """``channel`` closed: if it is the child's, the child stopped."""
        if channel is not self._channel:
            return  # a child stopped on purpose
        process = self._process
        if process is not None:
            process.join(0)  # its exit code, for the log, if it has exited yet
        code = None if process is None else process.exitcode
        why = (
            f"the writer process {self.pid} stopped (exit code "
            f"{'not yet known' if code is None else code}; {exc or 'its socket closed'})"
        )
        assert self._loop is not None
        if self._loop.time() - self._started_at < 1.0:
            self._quick_deaths += 1
            if self._quick_deaths >= 2:  # children that die as they start: a pause first
                self._failed_at = self._loop.time()
        else:
            self._quick_deaths = 0
        if self._sent:
            self._fail_sent(why)
        else:
            log.error("online writes: %s; the next write starts another", why)
        self._stop(kill=True)
        if self._queue:
            self._flush()

    def _answer_late(self) -> None:
        self._timer = None
        if not self._sent:
            return
        why = f"the writer process {self.pid} did not answer in {self.answer_timeout:g} s"
        self._fail_sent(why)
        self._stop(kill=True)
        if self._queue:
            self._flush()

    def _fail_sent(self, why: str) -> None:
        count = sum(len(sent.futures) for sent in self._sent)
        log.error("online writes: %s; its %d writes answer 503", why, count)
        while self._sent:
            for future in self._sent.popleft().futures:
                _fail(future, unknown_outcome(why))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop(self, kill: bool) -> None:
        channel, process = self._channel, self._process
        self._channel = self._process = None
        transport = None if channel is None else channel.transport
        if transport is not None:
            transport.abort() if kill else transport.close()
        if process is not None:
            if kill:
                process.kill()
            process.join(0)  # a child not reaped now is reaped at the next start

    # -- answers ------------------------------------------------------------------------
    def answered(self, channel: _Channel, outcomes: list[_Outcome]) -> None:
        """The outcomes of the oldest group sent, in its order; the next group's time
        starts now, when the child starts it."""
        if channel is not self._channel or not self._sent:
            return
        sent = self._sent.popleft()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sent:
            assert self._loop is not None
            head = self._sent[0]
            head.deadline = max(head.deadline, self._loop.time() + self.answer_timeout)
            self._arm_timer()
        if len(outcomes) != len(sent.futures):  # never: the child answers every write
            self._sent.appendleft(sent)
            self._fail_sent(f"{len(outcomes)} outcomes came for {len(sent.futures)} writes")
            self._stop(kill=True)
            return
        for future, outcome in zip(sent.futures, outcomes, strict=True):
            try:
                outcome.settle(future)
            except Exception as exc:
                _fail(future, StorageError(detail=f"an outcome that could not be read: {exc!r}"))
        if self._queue and not self._flush_due:
            self._flush()


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _encoded(queued: list[_Queued]) -> tuple[list[_Queued], bytes]:
    """The writes of ``queued`` that can be sent, and the group they make. One whose
    arguments do not pickle (a bug of ours) fails alone, as a storage error (500)."""
    sendable = queued
    for attempt in range(2):
        try:
            group: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
            group = [(name, args, {}) for _, name, args in sendable]
            return sendable, pickle.dumps(group, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            error = exc
        if attempt == 0:
            sendable = [write for write in queued if _pickles(write)]
    for write in sendable:  # the group failed though each pickled alone
        write[0].set_exception(StorageError(detail=f"writes that cannot be sent: {error!r}"))
    return [], b""


def _pickles(write: _Queued) -> bool:
    future, name, args = write
    try:
        pickle.dumps(args, pickle.HIGHEST_PROTOCOL)
        return True
    except Exception as exc:
        log.exception("online writes: a %s that cannot be sent to the writer", name)
        future.set_exception(StorageError(detail=f"a write that cannot be sent: {exc!r}"))
        return False


def _frame(data: bytes) -> bytes:
    if len(data) > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(len(data)) + data
    return _HEADER.pack(len(data)) + data


def _unframe(buffer: bytearray) -> bytes | None:
    """The first whole frame of ``buffer``, taken out of it; None if there is none yet."""
    if len(buffer) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack_from(buffer)
    start = _HEADER.size
    if size == -1:
        if len(buffer) < start + _LONG_HEADER.size:
            return None
        (size,) = _LONG_HEADER.unpack_from(buffer, start)
        start += _LONG_HEADER.size
    if len(buffer) < start + size:
        return None
    frame = bytes(buffer[start : start + size])
    del buffer[: start + size]
    return frame


def serve_writes(
    pipe: Connection,
    path: str,
    synchronous: str,
    timeout: float,
    log_level: int = logging.WARNING,
    log_format: str = "text",
) -> None:
    """The child: run each group the pipe brings, answer each write's outcome, until the
    pipe closes (its parent closed it, or died)."""
    from profilebase.server import logs
    from profilebase.server.storage.sqlite.store import SQLiteStore
    from profilebase.server.supervisor import die_with_parent, freeze_start_up

    die_with_parent()
    logs.configure(log_level, log_format)
    # A terminal's Ctrl-C goes to every process of its group: the HTTP process decides, and
    # closes the socket once its writes are answered. SIGTERM (a service manager's stop, or
    # multiprocessing's at its parent's exit) ends the child once the group it runs, if any,
    # is answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    running = {"group": False, "stop": False}

    def stop(*_: object) -> None:
        if not running["group"]:
            raise SystemExit(0)
        running["stop"] = True

    signal.signal(signal.SIGTERM, stop)
    store = SQLiteStore(path, synchronous=synchronous, timeout=timeout)
    store.serve_groups_here()
    freeze_start_up()
    try:
        pipe.send("started")
        while not running["stop"]:
            try:
                group = pipe.recv()
            except (EOFError, OSError):
                return
            running["group"] = True
            calls: list[Call] = [
                (Future(), functools.partial(getattr(store, name), *args, **keywords))
                for name, args, keywords in group
            ]
            store.run_group_here(calls)
            for (future, _), (name, _, _) in zip(calls, group, strict=True):
                error = future.exception()
                if error is not None and not isinstance(error, ProfilebaseError):  # a bug
                    log.error("online writes: %s failed", name, exc_info=error)
            outcomes = [_Outcome.of(future) for future, _ in calls]
            try:
                data = pickle.dumps(outcomes, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # an error that does not pickle: a plain storage error
                data = pickle.dumps([_sendable(o, exc) for o in outcomes], pickle.HIGHEST_PROTOCOL)
            try:
                pipe.send_bytes(data)
            except OSError:
                return
            running["group"] = False
    finally:
        store.close()


def _sendable(outcome: _Outcome, exc: Exception) -> _Outcome:
    try:
        pickle.dumps(outcome)
    except Exception:
        return _Outcome.of_error(StorageError(detail=f"an outcome that cannot be sent: {exc!r}"))
    return outcome
