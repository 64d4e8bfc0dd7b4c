"""SQLite writers take turns in a queue before BEGIN IMMEDIATE (storage/sqlite/writers.py):
a lock per process, a file lock beside the database across processes. A wait past the
store's timeout is the busy error of before; a released lock lets the next writer in."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from profilebase.errors import DatabaseUnavailable
from profilebase.server.storage.sqlite import SQLiteStore, writers
from profilebase.server.storage.sqlite.writers import LOCK_SUFFIX, WriterQueue


def new_store(path: Path, timeout: float = 5.0) -> SQLiteStore:
    store = SQLiteStore(str(path), timeout=timeout)
    store.migrate()
    return store


def add_client(store: SQLiteStore, code: str) -> None:
    store.create_client(code, False, f"key-{code}", "", 0)


def codes(store: SQLiteStore) -> set[str]:
    return {client.code for client in store.list_clients()}


def test_threads_of_one_process_all_write(tmp_path: Path):
    store = new_store(tmp_path / "db.sqlite")
    try:
        threads = [
            threading.Thread(target=lambda n=n: [add_client(store, f"c{n}-{i}") for i in range(20)])
            for n in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert codes(store) >= {f"c{n}-{i}" for n in range(8) for i in range(20)}
        assert (tmp_path / ("db.sqlite" + LOCK_SUFFIX)).exists()
    finally:
        store.close()


def test_a_writer_waits_for_the_file_lock_and_gives_up_past_the_timeout(tmp_path: Path):
    """Another process holds the writers' file lock: a write waits for it, fails busy past
    the timeout with nothing written, and goes through once the lock is released."""
    store = new_store(tmp_path / "db.sqlite", timeout=0.5)
    lock_file = str(tmp_path / "db.sqlite") + LOCK_SUFFIX
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            lock_file,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DatabaseUnavailable) as refused:
            add_client(store, "refused")
        assert "busy" in str(refused.value)
        assert "refused" not in codes(store)
        # A writer that starts while the lock is held gets in once the holder lets go.
        done = threading.Event()
        later = SQLiteStore(str(tmp_path / "db.sqlite"), timeout=30)
        writer = threading.Thread(target=lambda: (add_client(later, "later"), done.set()))
        writer.start()
        time.sleep(0.2)
        assert not done.is_set()  # it waits: the holder has the lock
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits: the kernel drops its lock
        holder.wait(10)
        writer.join(30)
        assert done.is_set()
        later.close()
        add_client(store, "after")
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert {"later", "after"} <= codes(store)
    # Nobody holds the lock once the writers are done (the given-up wait let go too: its
    # helper may take the lock after "after" and let it go a moment later, so try a while).
    fd = os.open(lock_file, os.O_RDWR)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the lock is still held"
                time.sleep(0.01)
    finally:
        os.close(fd)
    store.close()


def test_a_database_in_memory_has_no_lock_file(tmp_path: Path):
    store = SQLiteStore(":memory:")
    try:
        with store._write() as db:
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
    finally:
        store.close()
    assert not Path(":memory:" + LOCK_SUFFIX).exists()


def test_a_lock_file_that_cannot_be_opened_leaves_the_queue_per_process(tmp_path: Path):
    """A lock path that cannot be created (here: a directory stands in its way) does not
    stop writes: SQLite's own lock keeps them apart."""
    path = tmp_path / "db.sqlite"
    (tmp_path / ("db.sqlite" + LOCK_SUFFIX)).mkdir()
    store = new_store(path)
    try:
        add_client(store, "written")
        assert "written" in codes(store)
    finally:
        store.close()


def test_a_writer_waiting_in_another_process_is_seen(tmp_path: Path):
    """While a process waits for its turn, the holder sees it (batch parts then let it go
    first); once it had its turn, nobody waits."""
    database = str(tmp_path / "db.sqlite")
    queue = WriterQueue(database, timeout=5)
    script = (
        "import sys\n"
        "from profilebase.server.storage.sqlite.writers import WriterQueue\n"
        "with WriterQueue(sys.argv[1], 30).turn():\n"
        "    print('turn', flush=True)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, database], stdout=subprocess.PIPE, text=True
    ) as waiter:
        assert waiter.stdout is not None
        with queue.turn():
            assert not queue.others_waiting()
            deadline = time.monotonic() + 30
            while not queue.others_waiting() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert queue.others_waiting()
        assert waiter.stdout.readline() == "turn\n"
        assert waiter.wait(30) == 0
    assert not queue.others_waiting()
    queue.close()


def one_wait_behind(holder: WriterQueue, waiter: WriterQueue) -> threading.Thread:
    """``holder`` takes its turn and keeps it until ``waiter`` waits for its own in the
    kernel: the helper thread that did that wait."""
    held, release = threading.Event(), threading.Event()
    turns: list[int] = []

    def hold() -> None:
        with holder.turn():
            held.set()
            release.wait(10)

    def wait() -> None:
        with waiter.turn():
            turns.append(1)

    holding = threading.Thread(target=hold)
    holding.start()
    assert held.wait(10)
    waiting = threading.Thread(target=wait)
    waiting.start()
    deadline = time.monotonic() + 10
    while waiter._wait is None and time.monotonic() < deadline:  # not yet handed to the helper
        time.sleep(0.001)
    handed, helper = waiter._wait is not None, waiter._helper
    release.set()
    holding.join(10)
    waiting.join(10)
    assert handed and helper is not None  # it waited for the other's file lock, in the helper
    assert turns
    return helper


def test_one_helper_thread_waits_in_the_kernel_for_every_wait(tmp_path: Path):
    """Waits for the file lock are done by one long-lived helper thread of the queue, not
    a thread started for each (which costs more than a small group of writes when two
    processes' writers alternate); closing the queue ends it."""
    path = str(tmp_path / "db.sqlite")
    holder, waiter = WriterQueue(path, timeout=5), WriterQueue(path, timeout=5)
    before = set(threading.enumerate())
    for _ in range(5):
        one_wait_behind(holder, waiter)
    helpers = [thread for thread in threading.enumerate() if thread not in before]
    assert [thread.name for thread in helpers] == ["writers-queue"]
    waiter.close()
    holder.close()
    helpers[0].join(5)
    assert not helpers[0].is_alive()


def test_an_idle_helper_thread_ends_and_the_next_wait_starts_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A queue nobody closes does not keep its helper for the process's life."""
    monkeypatch.setattr(writers, "HELPER_IDLE_SECONDS", 0.2)
    path = str(tmp_path / "db.sqlite")
    holder, waiter = WriterQueue(path, timeout=5), WriterQueue(path, timeout=5)
    first = one_wait_behind(holder, waiter)
    first.join(5)
    assert not first.is_alive() and waiter._helper is None
    assert one_wait_behind(holder, waiter) is not first  # a new helper did the next wait
    waiter.close()
    holder.close()
