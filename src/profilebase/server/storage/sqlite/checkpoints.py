"""Checkpoints: copying the WAL into the database file, out of the writers' way.

In WAL mode a commit appends the pages it changed to the WAL; a checkpoint copies them into
the database file. By default the commit that leaves the WAL longer than
``wal_autocheckpoint`` pages (1,000) checkpoints it itself, before it returns and inside the
writers' turn. Under single updates one group commit in a hundred did, for 15–40 ms, with
every write behind it waiting (docs/design.md#checkpoints-off-the-online-path).

So a group of online writes commits without checkpointing (``no_autocheckpoint``) and tells
``Checkpoints``, whose thread copies the WAL once at least ``WRITES`` writes and
``SECONDS`` have passed since its last copy:

1. A passive checkpoint, outside the writers' turn: it copies what the WAL holds while
   writers go on appending.
2. SQLite starts the WAL over only when a writer begins after a checkpoint copied all of
   it. Under steady writes the next group has nearly always begun before the first copy
   ends, and the WAL would grow for as long as the writes go on. So while the WAL is longer
   than ``AUTOCHECKPOINT_PAGES`` after the first copy, the thread copies again inside the
   writers' turn, where no writer has begun: only what the first copy missed. The next
   writer then starts the WAL over.

Batch parts checkpoint on their own (``SQLiteStore._part_write``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from profilebase.errors import ProfilebaseError

log = logging.getLogger("profilebase.server.storage")

#: SQLite's default: a commit that leaves more WAL pages than this checkpoints them.
AUTOCHECKPOINT_PAGES = 1000
#: Online writes committed, and seconds passed, between two copies of ``Checkpoints``.
WRITES = 100
SECONDS = 0.25


def checkpoint(db: sqlite3.Connection) -> tuple[int, int]:
    """Copy the WAL into the database; PASSIVE: it neither waits for nor blocks writers.
    Returns the WAL's length and how much of it is copied, in pages ((0, 0) if it could not
    run: another checkpoint runs, or the file is unusable)."""
    try:
        _, length, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:
        log.debug("checkpoint skipped: %s", exc)
        return 0, 0
    return int(length), int(copied)


@contextmanager
def no_autocheckpoint(db: sqlite3.Connection) -> Iterator[None]:
    """Commits on ``db`` leave the WAL as it is while this lasts."""
    db.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        yield
    finally:
        db.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")  # as ``_open``


class Checkpoints:
    """The thread that checkpoints after online writes (above). ``borrow`` lends a
    connection, ``turn`` holds the writers' turn."""

    def __init__(
        self,
        borrow: Callable[[], AbstractContextManager[sqlite3.Connection]],
        turn: Callable[[], AbstractContextManager[None]],
        writes: int = WRITES,
        seconds: float = SECONDS,
    ) -> None:
        self._borrow = borrow
        self._turn = turn
        self.writes = writes
        self.seconds = seconds
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._written = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Copies made so far, and of those inside the writers' turn (for tests).
        self.copies = 0
        self.copies_in_turn = 0

    def wrote(self, writes: int) -> None:
        """``writes`` online writes were committed."""
        with self._lock:
            if self._closed:
                return
            self._written += writes
            if self._written < self.writes:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="checkpoints", daemon=True)
                self._thread.start()
            self._changed.notify()

    def close(self) -> None:
        """Stop the thread (a copy under way ends first)."""
        with self._lock:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

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
                self._copy()
            except (sqlite3.Error, ProfilebaseError) as exc:  # unusable now: next time
                log.debug("checkpoint skipped: %s", exc)
            except Exception:
                log.exception("checkpoint failed")

    def _copy(self) -> None:
        with self._borrow() as db:
            length, _ = checkpoint(db)
            self.copies += 1
            if length > AUTOCHECKPOINT_PAGES:
                with self._turn():
                    checkpoint(db)
                self.copies_in_turn += 1
