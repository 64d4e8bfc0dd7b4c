"""Group commit of the online writes of one process, per client.

A client's online writes run one at a time: each holds the client's row lock until it
commits (``lock_client``), and a commit waits for the WAL to reach the disk. Run one
transaction each, a client's writes therefore cost a disk flush each, one after another.
``WriteGroups`` lets the writes waiting in a process share one: a write is queued under its
client (``submit``, which does not wait: the event loop hands writes over with it), and a
leader thread of the process takes every write of that client queued by then and runs them
in one transaction (``PostgresStore._run_group``: one that fails fails alone), committed
once; every write's future is settled only after that commit. Writes meanwhile queue for
the next group, which runs once the group before committed.

No thread waits for a write but its caller, if it wants to (its future's ``result``): the
writes waiting in a group are a list, not threads. Leader threads serve every client, as
many as request threads used to make writes (a client whose group waits for a lock holds
one, and the others go on); one that committed a group of a client whose next group is
queued goes behind the other clients waiting for a leader.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from profilebase.errors import DatabaseUnavailable

T = TypeVar("T")

#: What an entry's ``finish`` (or ``send``) returns when the write needs its ``shared`` call.
SHARED = object()


class Entry(Generic[T]):
    """A write waiting in a group: how it runs, the keys it names, and how it ended.

    ``send`` sends the write's statements without waiting for their answers and returns
    ``finish``, which reads them: its result, or ``SHARED`` when the write needs ``shared``
    instead (so does a ``send`` that returns ``SHARED``). In a pipeline, the group sends a
    run of writes, then finishes them; one at a time, ``one_at_a_time``."""

    __slots__ = ("keys", "send", "shared", "future", "result", "error")

    def __init__(
        self,
        keys: Sequence[str],
        send: Callable[[], Callable[[], object] | object],
        shared: Callable[[], T],
    ) -> None:
        self.keys = keys
        self.send = send
        self.shared = shared
        self.future: Future[T] = Future()
        self.result: T | None = None
        self.error: BaseException | None = None

    def one_at_a_time(self) -> object:
        """The write on its own: sent, its answer read, and its shared call if needed."""
        finish = self.send()
        done = finish() if callable(finish) else SHARED
        return self.shared() if done is SHARED else done


class WriteGroups:
    """Queues of writes per group key (a client id), run a group at a time per key by
    ``leaders`` threads; ``run_group`` runs one group.

    ``run_group(key, entries)`` must set each entry's ``result`` or ``error``; an entry
    whose group raised gets that error unless it has its own.
    """

    def __init__(
        self, run_group: Callable[[int, list[Entry[Any]]], None], most: int, leaders: int
    ) -> None:
        self.run_group = run_group
        self.most = most
        self.lock = threading.Lock()
        self.queues: dict[int, list[Entry[Any]]] = {}
        #: Keys with a leader: running a group, or waiting for a thread to run the next.
        self.running: set[int] = set()
        #: Writes handed to ``submit`` that have not finished (queued or in a group).
        self.unfinished = 0
        self.leaders = ThreadPoolExecutor(leaders, thread_name_prefix="profilebase-group")
        #: Set by ``close``: leaders finish what is queued in their own thread.
        self.closing = False

    def waiting(self) -> int:
        """Writes queued or in a group that has not committed yet."""
        with self.lock:
            return self.unfinished

    def submit(
        self,
        key: int,
        keys: Sequence[str],
        send: Callable[[], Callable[[], object] | object],
        shared: Callable[[], T],
    ) -> Future[T]:
        """Queue a write (``Entry``) in a group of ``key``'s writes; its future, settled
        once the group committed (cancelled, it is not run unless its group had started).
        Does not wait."""
        entry: Entry[T] = Entry(keys, send, shared)
        if self.closing:
            entry.future.set_exception(DatabaseUnavailable(detail="the server is shutting down"))
            return entry.future
        with self.lock:
            self.queues.setdefault(key, []).append(entry)
            self.unfinished += 1
            lead = key not in self.running
            self.running.add(key)
        if lead:
            self._lead_later(key)
        return entry.future

    def close(self, timeout: float) -> None:
        """Let the groups queued finish (waiting at most ``timeout`` seconds), then end the
        leader threads; a write submitted after this fails at once (``DatabaseUnavailable``)."""
        self.closing = True
        self.leaders.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        while self.waiting() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _lead_later(self, key: int) -> None:
        try:
            self.leaders.submit(self._lead, key)
        except RuntimeError:  # closed: no group will run
            with self.lock:
                queue = self.queues.pop(key, [])
                self.running.discard(key)
                self.unfinished -= len(queue)
            for entry in queue:
                if entry.future.set_running_or_notify_cancel():
                    entry.future.set_exception(
                        DatabaseUnavailable(detail="the server is shutting down")
                    )

    def _lead(self, key: int) -> None:
        """Run the groups of ``key``: the writes queued by now (at most ``most``), then,
        behind the other clients waiting for a leader, the next; while closing, every
        group left, in this thread."""
        while self._run_next(key):
            if not self.closing:
                try:
                    self.leaders.submit(self._lead, key)
                    return
                except RuntimeError:  # closing meanwhile: finish them here
                    pass

    def _run_next(self, key: int) -> bool:
        """Run the next group of ``key``; True if more of its writes are queued."""
        with self.lock:
            queue = self.queues[key]
            taken, queue[:] = queue[: self.most], queue[self.most :]
        # A write whose caller gave up before its group started is not run.
        group = [entry for entry in taken if entry.future.set_running_or_notify_cancel()]
        try:
            if group:
                self.run_group(key, group)
        except BaseException as exc:  # each member's caller sees it
            for member in group:
                if member.error is None:
                    member.error = exc
        finally:
            with self.lock:
                self.unfinished -= len(taken)
                more = bool(self.queues[key])
                if not more:
                    del self.queues[key]
                    self.running.discard(key)
            for member in group:
                if member.error is not None:
                    member.future.set_exception(member.error)
                else:
                    member.future.set_result(member.result)
        return more
