"""Reads across batches for the dashboard and the metrics: lists, queues and rates.

``OverviewReads`` is the part of the ``Store`` protocol they use; ``OverviewQueries``
implements it once, in SQL both backends accept, on top of ``SharedQueries``'
connections. Every query reads a few indexed rows or the units not yet done, so a
scrape or a page view never scans the profiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from profilebase.models import Batch, Counts

#: The columns ``batch_from_row`` reads; a query adds its WHERE, then ``BATCH_GROUP``.
BATCH_SELECT = """
SELECT b.seq, b.batch_id, b.client_id, c.code, b.version, b.key_kind,
       b.batch_size, b.units_total, b.accepted_at, b.started_at, b.finished_at,
       (SELECT e.last_progress_at FROM batches e WHERE e.seq <= b.seq
        ORDER BY e.last_progress_at DESC LIMIT 1), b.header,
       coalesce(sum(u.consumed), 0), coalesce(sum(u.successful), 0),
       coalesce(sum(u.not_found), 0), coalesce(sum(u.failed), 0),
       count(CASE WHEN u.state = 'done' THEN 1 END),
       (SELECT not_before FROM ingest_pacing p WHERE p.client_id = b.client_id)
FROM batches b JOIN clients c ON c.id = b.client_id
LEFT JOIN batch_units u ON u.batch_seq = b.seq
"""
BATCH_GROUP = "GROUP BY b.seq, c.code\n"
BATCH_LIST = (
    BATCH_SELECT + "WHERE b.seq < ? {filters}\n" + BATCH_GROUP + "ORDER BY b.seq DESC LIMIT ?"
)


def client_filter(client_ids: Sequence[int] | None) -> tuple[str, list[object]]:
    """`` AND b.client_id IN (...)`` and its parameters; nothing for every client."""
    if client_ids is None:
        return "", []
    return f" AND b.client_id IN ({', '.join('?' for _ in client_ids)})", [
        int(i) for i in client_ids
    ]


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
    """``OverviewReads`` in the SQL every backend accepts (mixed into ``SharedQueries``)."""

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        raise NotImplementedError

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
        filters, ids = client_filter(client_ids)
        params: list[object] = [before_seq if before_seq is not None else 2**62, *ids]
        if finished is not None:
            filters += f" AND b.finished_at IS {'NOT ' if finished else ''}NULL"
        params.append(limit)
        return [
            batch_from_row(row) for row in self._all(BATCH_LIST.format(filters=filters), params)
        ]

    def rows_by_minute(
        self, since_ms: int, client_ids: Sequence[int] | None = None
    ) -> list[MinuteRows]:
        if client_ids is not None and not client_ids:
            return []
        filters, ids = client_filter(client_ids)
        rows = self._all(
            "SELECT u.finished_at / 60000, sum(u.successful), sum(u.failed), sum(u.not_found) "
            "FROM batch_units u JOIN batches b ON b.seq = u.batch_seq "
            f"WHERE u.state = 'done' AND u.finished_at >= ?{filters} "
            "GROUP BY u.finished_at / 60000 ORDER BY 1",
            [since_ms, *ids],
        )
        return [MinuteRows(int(m), int(a), int(f), int(n)) for m, a, f, n in rows]

    def queue_depth(self) -> list[QueueDepth]:
        rows = self._all(
            "SELECT c.code, count(*), coalesce(sum(u.row_count), 0) FROM batch_units u "
            "JOIN batches b ON b.seq = u.batch_seq JOIN clients c ON c.id = b.client_id "
            "WHERE u.state <> 'done' GROUP BY c.code ORDER BY c.code"
        )
        return [QueueDepth(code, int(units), int(rows_)) for code, units, rows_ in rows]

    def workers_busy(self, now_ms: int) -> int:
        row = self._one(
            "SELECT count(DISTINCT lease_owner) FROM batch_units "
            "WHERE state = 'running' AND lease_expires >= ?",
            (now_ms,),
        )
        return int(row[0])

    def rows_accepted_by_client(self, since_ms: int) -> dict[int, int]:
        rows = self._all(
            "SELECT client_id, sum(batch_size) FROM batches WHERE accepted_at >= ? "
            "GROUP BY client_id",
            (since_ms,),
        )
        return {int(client_id): int(total) for client_id, total in rows}

    def oldest_stall_ms(self, now_ms: int) -> int:
        row = self._one(
            "SELECT max(e.last_progress_at) FROM batches e WHERE e.seq <= "
            "(SELECT min(seq) FROM batches WHERE finished_at IS NULL)"
        )
        return 0 if row is None or row[0] is None else max(0, now_ms - int(row[0]))

    def batch_event(self, batch_seq: int) -> BatchEvent | None:
        row = self._one(
            "SELECT b.batch_id, c.code, b.accepted_at, b.finished_at, "
            "min(u.finished_at), coalesce(sum(u.consumed), 0), coalesce(sum(u.successful), 0), "
            "coalesce(sum(u.not_found), 0), coalesce(sum(u.failed), 0) "
            "FROM batches b JOIN clients c ON c.id = b.client_id "
            "LEFT JOIN batch_units u ON u.batch_seq = b.seq AND u.state = 'done' "
            "WHERE b.seq = ? GROUP BY b.batch_id, c.code, b.accepted_at, b.finished_at",
            (batch_seq,),
        )
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
