"""Checkpoints: copying the WAL into the database file, out of the writers' way.

In WAL mode a commit appends the pages it changed to the WAL; a checkpoint copies them into
the database file. By default the commit that leaves the WAL longer than
``wal_autocheckpoint`` pages (``AUTOCHECKPOINT_PAGES``) checkpoints it itself, before it
returns and inside the writers' turn. Under single updates one group commit in a hundred
did, for 15–40 ms, with every write behind it waiting
(docs/design.md#checkpoints-off-the-online-path).

So a group of online writes commits without checkpointing (``no_autocheckpoint``, up to
``BACKSTOP_PAGES``) and tells ``Checkpoints``, whose thread copies the WAL once at least
``WRITES`` writes and ``SECONDS`` have passed since its last round:

1. Passive checkpoints, outside the writers' turn: they copy what the WAL holds while
   writers go on appending; more than one (``OUTSIDE_COPIES``) while each finds much
   appended during the one before.
2. SQLite starts the WAL over only when a writer begins after a checkpoint copied all of
   it. Under steady writes the next group has nearly always begun before the first copy
   ends, and the WAL would grow for as long as the writes go on. So while the WAL is longer
   than ``AUTOCHECKPOINT_PAGES`` after the first copy, the thread copies again inside the
   writers' turn, where no writer has begun: only what the copies before missed. The next
   writer then starts the WAL over. Not while a reader's snapshot holds a copy back: the
   copy in the turn could not get past it either.

Batch parts checkpoint on their own (``SQLiteStore._part_write``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import NamedTuple

log = logging.getLogger("profilebase.server.storage")

#: The thresholds below count pages of this many bytes, a new database's (the store's
#: ``PAGE_BYTES``); on a database made with larger pages they stand for as many bytes
#: (``pages``).
THRESHOLD_PAGE_BYTES = 4096
#: A commit that leaves more WAL pages than this checkpoints them: 16 MB, what SQLite's
#: default of 1,000 pages is with the 16 KB pages this store's databases had before.
AUTOCHECKPOINT_PAGES = 4000
#: What a group commit of online writes leaves to ``Checkpoints``: it checkpoints itself only
#: past this many pages (160 MB of 4 KB pages), should the thread fall behind (a few large
#: writes between two of its copies, or fewer than ``WRITES`` in all).
BACKSTOP_PAGES = 40_000
#: Online writes committed, and seconds passed, between two copies of ``Checkpoints``.
WRITES = 100
SECONDS = 0.25
#: Copies outside the writers' turn, at most, before the one inside it: each copies what
#: was appended while the one before ran, until that is fewer than ``SHORT_PAGES`` (4 MB).
OUTSIDE_COPIES = 4
SHORT_PAGES = 1024
#: After a copy found another checkpoint running, the next try comes this much later.
BUSY_PAUSE = 0.01
#: At most one warning a minute about copies that failed.
WARN_EVERY = 60.0


class Copy(NamedTuple):
    """What one passive checkpoint found: another checkpoint running (``busy``: nothing
    done), else the WAL's length and how much of it is copied, in pages."""

    busy: bool
    length: int
    copied: int


def pages(threshold: int, page_bytes: int) -> int:
    """``threshold`` pages of ``THRESHOLD_PAGE_BYTES`` as pages of ``page_bytes`` (at least
    one): the same bytes on a database made with larger pages."""
    return max(1, threshold * THRESHOLD_PAGE_BYTES // page_bytes)


def page_bytes(db: sqlite3.Connection) -> int:
    """The page size of ``db``'s database."""
    return int(db.execute("PRAGMA page_size").fetchone()[0])


def copy(db: sqlite3.Connection) -> Copy:
    """Copy the WAL into the database; PASSIVE: it neither waits for nor blocks writers,
    and copies no further than the oldest snapshot a reader holds. Errors are raised."""
    busy, length, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return Copy(bool(busy), int(length), int(copied))


def checkpoint(db: sqlite3.Connection) -> None:
    """``copy``, with any error logged and passed over (another checkpoint runs, or the
    file is unusable): for the batch path, which checkpoints as it goes."""
    try:
        copy(db)
    except sqlite3.Error as exc:
        log.debug("checkpoint skipped: %s", exc)


@contextmanager
def no_autocheckpoint(db: sqlite3.Connection, page_bytes: int, backstop: int = 0) -> Iterator[None]:
    """Commits on ``db`` (whose pages are ``page_bytes``) leave the WAL as it is while this
    lasts (up to ``backstop`` pages, 0: whatever its length)."""
    db.execute(f"PRAGMA wal_autocheckpoint = {pages(backstop, page_bytes) if backstop else 0}")
    try:
        yield
    finally:
        db.execute(f"PRAGMA wal_autocheckpoint = {pages(AUTOCHECKPOINT_PAGES, page_bytes)}")


class Checkpoints:
    """The thread that checkpoints after online writes (above). ``borrow`` lends a
    connection, ``turn`` holds the writers' turn; ``timeout`` bounds the wait for the
    thread when closing."""

    def __init__(
        self,
        borrow: Callable[[], AbstractContextManager[sqlite3.Connection]],
        turn: Callable[[], AbstractContextManager[None]],
        writes: int = WRITES,
        seconds: float = SECONDS,
        timeout: float = 10.0,
    ) -> None:
        self._borrow = borrow
        self._turn = turn
        self.writes = writes
        self.seconds = seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._written = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._warned_at = float("-inf")
        #: Rounds of copies made so far, and of those the ones ended by a copy inside the
        #: writers' turn that reached the WAL's end (for tests).
        self.copies = 0
        self.copies_in_turn = 0

    def wrote(self, writes: int) -> None:
        """``writes`` online writes were committed."""
        with self._lock:
            if self._closed:
                return
            before = self._written
            self._written += writes
            if self._written < self.writes or before >= self.writes:
                return  # too few yet, or the thread was told when the count got there
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="checkpoints", daemon=True)
                self._thread.start()
            self._changed.notify()

    def close(self) -> None:
        """Stop the thread: a round of copies under way ends first (waited for at most
        ``timeout``; the thread does not take the writers' turn once closing)."""
        with self._lock:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout)

    def _serve(self) -> None:
        last = float("-inf")
        while True:
            with self._lock:
                while not self._closed and self._written < self.writes:
                    self._changed.wait()
                pause = last + self.seconds - time.monotonic()
                if pause > 0:
                    self._changed.wait_for(lambda: self._closed, pause)
                if self._closed:
                    return
                self._written = 0
            last = time.monotonic()
            try:
                self._round()
            except Exception as exc:  # unusable now (``borrow`` says so), or a bug
                now = time.monotonic()
                if now - self._warned_at >= WARN_EVERY:
                    self._warned_at = now
                    log.warning("the WAL could not be copied into the database: %s", exc)

    def _round(self) -> None:
        """Copies outside the turn until what was appended meanwhile is short, then, if the
        WAL is still long and no reader held a copy back, one inside it."""
        with self._borrow() as db:
            size = page_bytes(db)
            found = self._copy(db)
            for _ in range(OUTSIDE_COPIES - 1):
                if found.busy or found.copied < found.length:
                    break  # another checkpoint runs, or a reader holds the rest back
                again = self._copy(db)
                appended = again.length - found.length
                found = again
                if appended < pages(SHORT_PAGES, size):  # (< 0: the WAL started over)
                    break
            self.copies += 1
            long = found.length > pages(AUTOCHECKPOINT_PAGES, size)
            if found.busy or found.copied < found.length or not long:
                return
            with self._lock:
                if self._closed:
                    return
            with self._turn():
                last = self._copy(db)
            if not last.busy and last.copied == last.length:
                self.copies_in_turn += 1

    def _copy(self, db: sqlite3.Connection) -> Copy:
        """``copy``, tried again a few times while another checkpoint runs."""
        found = copy(db)
        for _ in range(3):
            if not found.busy:
                break
            time.sleep(BUSY_PAUSE)
            found = copy(db)
        return found
