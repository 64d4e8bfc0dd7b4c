"""Online writes leave the WAL to a thread of their own (``storage/sqlite/checkpoints.py``).

A commit that checkpoints the WAL does it inside the writers' turn, and every write behind
it waits: so a group of online writes commits without checkpointing, and ``Checkpoints``
copies the WAL into the database file from its own thread, once enough writes were made.
Real SQLite files; the writes go through the store's writer thread as a server's do.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from profilebase.errors import DatabaseUnavailable
from profilebase.models import now_ms
from profilebase.server.storage.base import Visit
from profilebase.server.storage.sqlite import SQLiteStore, checkpoints
from profilebase.server.storage.sqlite import store as store_module
from profilebase.server.storage.sqlite.checkpoints import Checkpoints

NOW = now_ms()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLiteStore]:
    # Every other commit of the store checkpoints once the WAL holds a page.
    monkeypatch.setattr(checkpoints, "AUTOCHECKPOINT_PAGES", 1)
    store = SQLiteStore(str(tmp_path / "c.db"))
    store.migrate()
    store.ensure_client("demo")
    yield store
    store.close()


def page_call(store: SQLiteStore, n: int) -> None:
    client = store.get_client("demo")
    assert client is not None
    visit = Visit(tnt_id=f"t{n}", third_party_id=None, values={"n": str(n)}, request_id=f"r{n}")
    store.visit(client.id, visit, NOW, 10_000)


def wait_until(done: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def writing_until(store: SQLiteStore, done: Callable[[], bool], start: int) -> bool:
    """Page calls, one every 10 ms, until ``done`` (for at most ten seconds)."""
    deadline = time.monotonic() + 10.0
    n = start
    while not done():
        if time.monotonic() > deadline:
            return False
        page_call(store, n)
        n += 1
        time.sleep(0.01)
    return True


def database_bytes(store: SQLiteStore) -> bytes:
    return Path(store.path).read_bytes()


def after_a_first_write(store: SQLiteStore) -> bytes:
    """One page call, its WAL copied: what the database file holds then."""
    page_call(store, 0)
    with store._read() as db:
        checkpoints.copy(db)
    return database_bytes(store)


def test_a_group_commit_leaves_the_wal_to_the_checkpoint_thread(store: SQLiteStore):
    before = after_a_first_write(store)
    for n in range(1, 11):
        page_call(store, n)
    assert database_bytes(store) == before  # ten commits, each longer than a page: in the WAL
    with store._read() as db:
        page_bytes = checkpoints.page_bytes(db)
    assert Path(store.path + "-wal").stat().st_size > 10 * page_bytes
    assert store._checkpoints.copies == 0  # fewer writes than WRITES


def test_the_thread_copies_the_wal_once_enough_writes_were_made(store: SQLiteStore):
    store._checkpoints = Checkpoints(store._read, store._writers.turn, writes=5, seconds=0)
    before = after_a_first_write(store)
    for n in range(1, 4):
        page_call(store, n)
    time.sleep(0.2)
    assert store._checkpoints.copies == 0 and database_bytes(store) == before
    for n in range(4, 7):
        page_call(store, n)
    assert wait_until(lambda: store._checkpoints.copies >= 1)
    n = 7
    while database_bytes(store) == before and n < 100:  # a read held that round back
        page_call(store, n)
        n += 1
        time.sleep(0.01)
    assert database_bytes(store) != before


def test_a_group_commit_checkpoints_itself_past_the_backstop(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
):
    """Should the thread fall behind (few writes, each large), the WAL still has a bound."""
    monkeypatch.setattr(store_module, "BACKSTOP_PAGES", 2)
    page_call(store, 0)
    before = database_bytes(store)
    for n in range(1, 6):
        page_call(store, n)
    assert store._checkpoints.copies == 0
    assert database_bytes(store) != before


def test_no_copy_in_the_writers_turn_while_a_reader_holds_the_wal_back(store: SQLiteStore):
    """A passive copy stops at the oldest snapshot a reader holds; one inside the turn
    could not get past it either, and would only hold every writer up."""
    checkpoints.AUTOCHECKPOINT_PAGES = 2  # the fixture's monkeypatch undoes it
    turns: list[int] = []

    @contextmanager
    def counted_turn() -> Iterator[None]:
        turns.append(1)
        with store._writers.turn():
            yield

    page_call(store, 0)
    reader = sqlite3.connect(store.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM profiles").fetchone()  # a snapshot, held
        store._checkpoints = ours = Checkpoints(store._read, counted_turn, writes=1, seconds=0)
        # Writes go on until the thread made three rounds: on a busy machine it may take
        # its first turn only after many writes were made, and make one round for them all.
        assert writing_until(store, lambda: ours.copies >= 3, start=1)
        assert turns == []
    finally:
        reader.close()
    assert writing_until(store, lambda: ours.copies_in_turn >= 1, start=10_000)
    assert turns


def test_steady_writes_keep_the_wal_short(store: SQLiteStore):
    """A copy outside the writers' turn rarely reaches the end of a WAL that groups keep
    appending to, and SQLite starts the WAL over only after one that did: the second copy,
    inside the turn, keeps it short."""
    pages = 8
    checkpoints.AUTOCHECKPOINT_PAGES = pages  # the fixture's monkeypatch undoes it
    store._checkpoints = Checkpoints(store._read, store._writers.turn, writes=1, seconds=0.02)
    wal = Path(store.path + "-wal")
    longest = 0
    stop = threading.Event()
    written = [0] * 4

    def writer(k: int) -> None:
        n = k * 1_000_000
        while not stop.is_set():
            page_call(store, n)
            n += 1
            written[k] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    starts: set[bytes] = set()  # the WAL header's checkpoint sequence: one per start over
    try:
        # Until the WAL started over 8 times (3 s alone; a busy machine starves the thread).
        deadline = time.monotonic() + 30
        while len(starts) < 8 and time.monotonic() < deadline:
            if wal.exists():
                longest = max(longest, wal.stat().st_size)
                with wal.open("rb") as header:
                    starts.add(header.read(16)[12:16])
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(
        f"{sum(written)} writes, WAL started over {len(starts)} times, longest {longest >> 10} KB"
    )
    assert store._checkpoints.copies_in_turn >= 1
    # With the copies in the turn taken out by hand, the WAL started over only at the group
    # commits' backstop: 4 times in 3 s, 160 MB long (15,550 writes; 330 MB before the
    # backstop). Seen with them: 33 to 37 times in 3 s, 9 to 13 MB alone; once 34 MB beside
    # the rest of the suite (a loaded machine starves the thread, and the file keeps its
    # longest size).
    assert len(starts) >= 8
    assert 0 < longest < 128 * 1024 * 1024


def test_a_copy_that_fails_is_made_after_the_next_writes_and_closing_stops_the_thread(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
):
    borrowed: list[int] = []

    def borrow() -> Any:
        borrowed.append(1)
        if len(borrowed) == 1:
            raise DatabaseUnavailable(detail="the database file could not be opened")
        return store._read()

    store._checkpoints = ours = Checkpoints(borrow, store._writers.turn, writes=2, seconds=0)
    page_call(store, 1)
    page_call(store, 2)
    assert wait_until(lambda: len(borrowed) == 1)
    assert ours.copies == 0
    assert wait_until(lambda: "the WAL could not be copied into the database" in caplog.text)
    page_call(store, 3)
    page_call(store, 4)
    assert wait_until(lambda: ours.copies == 1)
    thread = ours._thread
    assert thread is not None and thread.is_alive()
    store.close()
    assert not thread.is_alive()


def test_the_thread_is_told_once_when_the_writes_reach_their_count(store: SQLiteStore):
    """While the thread pauses between rounds, later writes do not wake it one by one:
    each wake-up takes the GIL from the event loop or the writer that made the write."""
    told: list[int] = []

    class Counted(threading.Condition):
        def notify(self, n: int = 1) -> None:
            told.append(n)
            super().notify(n)

    ours = Checkpoints(store._read, store._writers.turn, writes=3, seconds=60)
    ours._changed = Counted(ours._lock)
    store._checkpoints = ours
    for n in range(3):
        page_call(store, n)
    assert wait_until(lambda: ours.copies == 1)  # the first round comes at once
    assert len(told) == 1
    for n in range(3, 30):  # the thread now pauses for a minute
        page_call(store, n)
    assert len(told) == 2  # when the count reached 3 again; before: once per write after it
    assert ours.copies == 1
