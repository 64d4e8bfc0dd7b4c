"""The queue SQLite writers wait in: a lock per process, a file lock across processes.

SQLite lets one connection write at a time. A connection that finds the write lock taken
waits in SQLite's busy handler, which sleeps and tries again (1, 2, 5, 10, … 100 ms): the
lock is often free while every waiter sleeps, and an unlucky waiter loses round after
round. So a write transaction first takes its turn here, waiting where a release wakes
the next waiter at once:

1. ``threading.Lock`` among the threads of one process: at most one of them goes on.
2. ``fcntl.flock`` on a file beside the database (``<database>-writer.lock``) among
   processes (``serve`` runs several HTTP and batch-worker processes): the one thread
   of each process waits in the kernel, which wakes a waiter when the holder unlocks
   (or exits: the kernel drops the lock with the process).

Then ``BEGIN IMMEDIATE`` usually finds the database's lock free. The queue is an
optimisation, not what keeps writes apart: a writer outside it (another program, the
command line) still meets SQLite's own lock and busy handler. The whole wait is bounded
by the store's busy timeout (``database_timeout``); past it the caller gets the error
SQLite gives a writer that waited too long (``SQLITE_BUSY``). The kernel's wait has no
timeout, so it happens in the queue's helper thread (one for many waits), which the
waiter gives up on at the deadline; the helper then unlocks at once if it gets the lock
after all.

A database in memory has no file to lock; a lock file that cannot be opened (a read-only
directory) leaves the file lock out: writers then queue per process only.

``WriteGroups`` is the group commit of the online writes (single updates, page calls,
deletes): one writer thread per store runs the ones waiting together in one transaction.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

log = logging.getLogger("profilebase.server.storage")
T = TypeVar("T")
#: A call waiting for the writer thread, with the future its caller waits on.
Call = tuple[Future[Any], Callable[[], Any]]

#: The lock file's name is the database's with this added.
LOCK_SUFFIX = "-writer.lock"
#: The byte of the lock file a waiting process holds a shared record lock on.
ANNOUNCE_AT = 0
#: A queue's helper thread that had no wait to do for this long ends (``WriterQueue._help``).
HELPER_IDLE_SECONDS = 60.0
#: The file batch parts queue on first (``SQLiteStore._part_write``).
BATCH_LOCK_SUFFIX = "-batch.lock"


def busy_error() -> sqlite3.OperationalError:
    """The error SQLite raises when a writer waited past its busy timeout."""
    error = sqlite3.OperationalError("database is locked (waited for the writers' queue)")
    error.sqlite_errorcode = sqlite3.SQLITE_BUSY
    error.sqlite_errorname = "SQLITE_BUSY"
    return error


def lock_path(database: str, suffix: str = LOCK_SUFFIX) -> str | None:
    """A lock file of a database file, None for one in memory or a temporary one."""
    if database in {"", ":memory:"} or database.startswith("file:"):
        return None
    return database + suffix


class _Wait:
    """One wait for the file lock in the kernel, done by a helper thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.got = False
        self.abandoned = False


class WriterQueue:
    """Writers of one database take turns here before ``BEGIN IMMEDIATE``; ``suffix``
    names the lock file."""

    def __init__(self, database: str, timeout: float, suffix: str = LOCK_SUFFIX) -> None:
        self.timeout = timeout
        self._turn = threading.Lock()
        self._path = lock_path(database, suffix)
        self._fd: int | None = None
        self._opened = False
        #: Guards ``_wait`` between the thread whose turn it is and the helper.
        self._state = threading.Lock()
        self._wait: _Wait | None = None
        #: Threads of this process waiting for the turn.
        self._waiting = 0
        #: The helper's waits to do (None: end), and the helper, started on the first.
        self._requests: queue.SimpleQueue[tuple[int, _Wait] | None] = queue.SimpleQueue()
        self._helper: threading.Thread | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the writers' turn (raises ``busy_error`` past the timeout)."""
        deadline = time.monotonic() + self.timeout
        if not self._turn.acquire(blocking=False):
            with self._state:
                self._waiting += 1
            try:
                if not self._turn.acquire(timeout=self.timeout):
                    raise busy_error()
            finally:
                with self._state:
                    self._waiting -= 1
        try:
            fd = self._file()
            locked = fd is not None and self._flock(fd, deadline)
            try:
                yield
            finally:
                if locked:
                    assert fd is not None
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._turn.release()

    def others_waiting(self) -> bool:
        """Whether a writer waits for its turn: a thread of this process, or another
        process (which says so while it waits, ``_flock``)."""
        if self._waiting:
            return True
        fd = self._fd
        if fd is None:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, ANNOUNCE_AT)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by a waiter
            return True
        except OSError:  # a lock file opened read-only cannot take this lock: no telling
            return False
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, ANNOUNCE_AT)
        return False

    def close(self) -> None:
        """Close the lock file, unless a writer or a helper still uses it."""
        if not self._turn.acquire(blocking=False):
            return
        try:
            with self._state:
                if self._helper is not None:
                    self._requests.put(None)  # it ends once the wait it does, if any, ends
                    self._helper = None
                if self._fd is not None and self._wait is None:
                    os.close(self._fd)
                    self._fd = None
        finally:
            self._turn.release()

    def _file(self) -> int | None:
        """The lock file's descriptor, opened on first use (None: no file lock)."""
        if not self._opened and self._path is not None:
            self._opened = True
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                try:  # a lock file someone else made, in a directory we cannot write
                    self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    log.info("writers queue per process only: %s: %s", self._path, exc)
        return self._fd

    def _flock(self, fd: int, deadline: float) -> bool:
        """Take the file lock before ``deadline``; True once held, False if the file
        cannot be locked (then SQLite's lock alone keeps writers apart)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError:
            return False
        try:  # a shared record lock on one byte says that this process waits
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, ANNOUNCE_AT)
        except OSError:
            return self._wait_for_flock(fd, deadline)  # someone is looking: go unannounced
        try:
            return self._wait_for_flock(fd, deadline)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, ANNOUNCE_AT)

    def _wait_for_flock(self, fd: int, deadline: float) -> bool:
        with self._state:
            wait = self._wait
            if wait is None:  # else the helper still waits for an earlier writer who gave up
                wait = self._wait = _Wait()
                if self._helper is None:
                    self._helper = threading.Thread(
                        target=self._help, name="writers-queue", daemon=True
                    )
                    self._helper.start()
                self._requests.put((fd, wait))
            wait.abandoned = False
        wait.done.wait(max(0.0, deadline - time.monotonic()))
        with self._state:
            if wait.done.is_set():
                return wait.got
            wait.abandoned = True
        raise busy_error()

    def _help(self) -> None:
        """The helper: one thread for many waits, not one per wait (starting a thread costs
        more than a group of online writes takes when writers alternate). It ends when the
        queue closes, or after ``HELPER_IDLE_SECONDS`` without a wait: the next wait starts
        another (waits are queued under ``_state``, so none is left behind)."""
        while True:
            try:
                request = self._requests.get(timeout=HELPER_IDLE_SECONDS)
            except queue.Empty:
                with self._state:
                    if self._requests.empty() and self._helper is threading.current_thread():
                        self._helper = None
                        return
                continue
            if request is None:
                return
            self._wait_in_kernel(*request)

    def _wait_in_kernel(self, fd: int, wait: _Wait) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            got = True
        except OSError:
            got = False
        with self._state:
            self._wait = None
            if got and wait.abandoned:
                fcntl.flock(fd, fcntl.LOCK_UN)
                got = False
            wait.got = got
            wait.done.set()


class WriteGroups:
    """Group commit: the online writes of one process run on one writer thread, and the
    ones waiting when it starts a transaction share it.

    ``submit`` queues a call (a store method that writes at once) and returns its future.
    The writer thread takes every call waiting (at most ``most``) and hands them to
    ``run_group``, which takes the writers' turn and the write lock, runs each call (its
    write in a savepoint of its own, so one failing fails alone), commits, and only then
    settles their futures: an answered write is committed. Calls that arrive meanwhile,
    while a transaction waits for the lock behind a batch part or runs, wait for the next
    one, together: one turn of the lock clears the queue.
    """

    def __init__(
        self,
        run_group: Callable[[Callable[[], list[Call]]], None],
        most: int,
        name: str = "online-writes",
    ) -> None:
        self._run_group = run_group
        self._most = most
        self._name = name
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[Call] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def waiting(self) -> int:
        """Calls queued that no transaction has taken yet."""
        with self._lock:
            return len(self._queue)

    def on_writer_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def serve_here(self) -> None:
        """Make the calling thread the writer thread: a process that runs groups it is
        handed (``apart.serve_writes``) and queues none."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the writer thread has started already")
            self._thread = threading.current_thread()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Run ``call`` on the writer thread, in a group's transaction."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            self._queue.append((future, call))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._ready.notify()
        return future

    def close(self) -> None:
        """Stop the writer thread once the calls queued are done."""
        with self._lock:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
            try:
                self._run_group(self.take)
            except BaseException:  # run_group settles every call it took; keep serving
                log.exception("online writes: a group failed")

    def take(self) -> list[Call]:
        """Every call waiting (at most ``most``), oldest first; calls whose callers gave up
        before they started are dropped."""
        with self._lock:
            taken: list[Call] = []
            while self._queue and len(taken) < self._most:
                future, call = self._queue.popleft()
                if future.set_running_or_notify_cancel():
                    taken.append((future, call))
            return taken
