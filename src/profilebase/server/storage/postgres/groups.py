"""Group commit of the online writes of one process, per client.

A client's online writes run one at a time: each holds the client's row lock until it
commits (``lock_client``), and a commit waits for the WAL to reach the disk. Run one
transaction each, a client's writes therefore cost a disk flush each, one after another.
``WriteGroups`` lets the writes waiting in a process share one: the first thread to find
no group of its client running leads one, runs every write queued by then (its own
included) in one transaction, each in a savepoint of its own (so one that fails undoes
only itself), and commits once; every write's caller gets its result only after that
commit. Writes meanwhile queue for the next group.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Entry(Generic[T]):
    """A write waiting in a group: what it runs, the keys it names, and how it ended."""

    __slots__ = ("call", "keys", "done", "result", "error")

    def __init__(self, call: Callable[[], T], keys: Sequence[str]) -> None:
        self.call = call
        self.keys = keys
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class WriteGroups:
    """Queues of writes per group key (a client id); ``run_group`` runs one group.

    ``run_group(key, entries)`` must set each entry's ``result`` or ``error``; an entry
    whose group raised gets that error unless it has its own.
    """

    def __init__(self, run_group: Callable[[int, list[Entry[Any]]], None], most: int) -> None:
        self.run_group = run_group
        self.most = most
        self.changed = threading.Condition()
        self.queues: dict[int, list[Entry[Any]]] = {}
        self.running: set[int] = set()
        #: Writes handed to ``run`` that have not finished (queued or in a running group).
        self.unfinished = 0

    def waiting(self) -> int:
        """Writes queued or in a group that has not committed yet."""
        with self.changed:
            return self.unfinished

    def run(self, key: int, call: Callable[[], T], keys: Sequence[str]) -> T:
        """Run ``call`` in a group of ``key``'s writes; its result once the group committed."""
        entry: Entry[T] = Entry(call, keys)
        with self.changed:
            self.queues.setdefault(key, []).append(entry)
            self.unfinished += 1
        try:
            return self._run(key, entry)
        finally:
            with self.changed:
                self.unfinished -= 1

    def _run(self, key: int, entry: Entry[T]) -> T:
        while True:
            with self.changed:
                while not entry.done and key in self.running:
                    self.changed.wait()
                if entry.done:
                    break
                self.running.add(key)
                queue = self.queues[key]
                group, queue[:] = queue[: self.most], queue[self.most :]
                if not queue:
                    del self.queues[key]
            try:
                self.run_group(key, group)
            except BaseException as exc:  # each member's caller sees it, ours too if ours
                for member in group:
                    if member.error is None:
                        member.error = exc
            finally:
                with self.changed:
                    for member in group:
                        member.done = True
                    self.running.discard(key)
                    self.changed.notify_all()
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]
