"""Reads across batches for the dashboard and the metrics: lists, queues and rates.

``OverviewReads`` is the part of the ``Store`` protocol they use; ``OverviewQueries``
implements it once, over the backend's named queries and ``SharedQueries``'
connections. Every query reads a few indexed rows or the units not yet done, so a
scrape or a page view never scans the profiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from profilebase.models import Batch, Counts


@dataclass(frozen=True)
class MinuteRows:
    """Rows of batch units finished in one minute (``minute``: ms since the epoch / 60000)."""

    minute: int
    applied: int
    failed: int
    not_found: int


@dataclass(frozen=True)
class QueueDepth:
    """Work not done yet, for one client: its units and the rows in them."""

    client_code: str
    units: int
    rows: int


@dataclass(frozen=True)
class BatchEvent:
    """What a worker needs to know about a batch after applying one of its units."""

    batch_id: str
    client_code: str
    accepted_at: int
    finished_at: int | None
    #: When the batch's first unit was done (ms), or None.
    first_done_at: int | None
    #: The counts of its units done so far.
    counts: Counts


class OverviewReads(Protocol):
    """Reads across batches (the dashboard's lists and the metrics)."""

    def list_batches(
        self,
        client_ids: Sequence[int] | None = None,
        finished: bool | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[Batch]:
        """Batches newest first: of ``client_ids`` only (None: every client), finished or
        not (None: both), accepted before the batch ``before_seq`` (for paging)."""
        ...

    def rows_by_minute(
        self, since_ms: int, client_ids: Sequence[int] | None = None
    ) -> list[MinuteRows]:
        """Rows of units finished from ``since_ms`` on, per minute, oldest first."""
        ...

    def queue_depth(self) -> list[QueueDepth]:
        """Units not yet done and their rows, per client that has any, in code order."""
        ...

    def workers_busy(self, now_ms: int) -> int:
        """Workers holding a lease on a unit now (any process, any machine)."""
        ...

    def rows_accepted_by_client(self, since_ms: int) -> dict[int, int]:
        """Rows of the batches accepted at or after ``since_ms``, by client id."""
        ...

    def oldest_stall_ms(self, now_ms: int) -> int:
        """How long the oldest unfinished batch has gone without progress, its own or of a
        batch ahead of it (the rule of the ``stuck`` state), in ms; 0 if none is unfinished."""
        ...

    def batch_event(self, batch_seq: int) -> BatchEvent | None:
        """The batch's id, client and times, or None once it is purged."""
        ...


class OverviewQueries:
    """``OverviewReads`` over the backend's named queries (mixed into ``SharedQueries``)."""

    sql: Mapping[str, str]

    def _all(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> list[Any]:
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> Any:
        raise NotImplementedError

    def _list(self, items: Sequence[object]) -> object:
        raise NotImplementedError

    def _clients(self, client_ids: Sequence[int] | None) -> object:
        """The ``clients`` parameter: a list of client ids, or None for every client."""
        return None if client_ids is None else self._list([int(i) for i in client_ids])

    def list_batches(
        self,
        client_ids: Sequence[int] | None = None,
        finished: bool | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[Batch]:
        # records.py imports base.py, which imports this module: import it when first used.
        from profilebase.server.storage.records import batch_from_row

        if client_ids is not None and not client_ids:
            return []
        params = {
            "before_seq": before_seq if before_seq is not None else 2**62,
            "clients": self._clients(client_ids),
            "finished": finished,
            "limit": limit,
        }
        return [batch_from_row(row) for row in self._all(self.sql["list_batches"], params)]

    def rows_by_minute(
        self, since_ms: int, client_ids: Sequence[int] | None = None
    ) -> list[MinuteRows]:
        if client_ids is not None and not client_ids:
            return []
        params = {"since": since_ms, "clients": self._clients(client_ids)}
        rows = self._all(self.sql["rows_by_minute"], params)
        return [MinuteRows(int(m), int(a), int(f), int(n)) for m, a, f, n in rows]

    def queue_depth(self) -> list[QueueDepth]:
        rows = self._all(self.sql["queue_depth"])
        return [QueueDepth(code, int(units), int(rows_)) for code, units, rows_ in rows]

    def workers_busy(self, now_ms: int) -> int:
        return int(self._one(self.sql["workers_busy"], (now_ms,))[0])

    def rows_accepted_by_client(self, since_ms: int) -> dict[int, int]:
        rows = self._all(self.sql["rows_accepted_by_client"], (since_ms,))
        return {int(client_id): int(total) for client_id, total in rows}

    def oldest_stall_ms(self, now_ms: int) -> int:
        row = self._one(self.sql["oldest_stall"])
        return 0 if row is None or row[0] is None else max(0, now_ms - int(row[0]))

    def batch_event(self, batch_seq: int) -> BatchEvent | None:
        row = self._one(self.sql["batch_event"], (batch_seq,))
        if row is None:
            return None
        batch_id, code, accepted, finished, first, *counts = row
        return BatchEvent(
            batch_id,
            code,
            int(accepted),
            None if finished is None else int(finished),
            None if first is None else int(first),
            Counts(*(int(c) for c in counts)),
        )
