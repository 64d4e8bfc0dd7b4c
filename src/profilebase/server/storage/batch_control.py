"""Batches seen from an operator's chair: list a client's batches, and cancel one.

``BatchControl`` is a mixin of both backends' stores, over their named queries.
Cancelling needs no help from the workers:

1. Every unit of the batch not yet done is marked done, in one statement, its
   rows counted as consumed and failed. A unit a worker holds is marked too:
   that worker's ``apply_unit`` checks, in its own transaction, that the unit is
   still running under its lease, so it either committed first (the unit counts
   as applied and this statement skips it) or finds the unit done and writes
   nothing. The claim query only picks units that are not done, so no worker
   starts one afterwards.
2. Each row of the units just marked gets a failed-row record, reason
   ``cancelled``, with its line and raw text.
3. The batch is finished and records who cancelled it and when.

All three run in one transaction. PostgreSQL takes the unit rows' locks before
the batch row's, the order ``apply_unit`` takes them in, so the two never
deadlock. Nothing a unit already applied is undone.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from profilebase import batchfile
from profilebase.errors import BatchFinished
from profilebase.models import Batch, FailedRow, from_ms
from profilebase.server.storage.queries import Connection, SharedQueries

#: The reason of every row a cancel stopped.
CANCELLED = "cancelled"
#: Failed rows written per statement while cancelling.
FAILURE_CHUNK = 5000
#: ``batches.version`` of a profile import (JSON lines, ``profile_import.py``).
IMPORT_VERSION = 3


@dataclass(frozen=True)
class Cancellation:
    """Who cancelled a batch and when."""

    at: datetime
    by: str


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: the rows it stopped (0 when the batch had been cancelled before)."""

    batch_seq: int
    rows_cancelled: int
    #: True when an earlier cancel had already stopped the batch: nothing changed now.
    already: bool
    cancellation: Cancellation


@dataclass(frozen=True)
class BatchListing:
    """A batch of a client's list, with its cancellation if it was cancelled."""

    batch: Batch
    cancellation: Cancellation | None


def row_id(version: int, line: bytes) -> str:
    """The id of a stored row as well as it can be read: the first cell of a batch line,
    or the thirdPartyId or visitorId of an import's JSON line."""
    if version == IMPORT_VERSION:
        try:
            document = json.loads(line)
            found = document.get("thirdPartyId") or document.get("visitorId")
            return found if isinstance(found, str) else ""
        except (ValueError, AttributeError):
            return ""
    raw = line.split(b",", 1)[0]
    try:
        return batchfile.decode_cell(raw)
    except batchfile.CellError:
        return raw.strip().decode("utf-8", errors="replace")


def printable(text: str) -> str:
    """Text a failed-row record can hold on every backend (PostgreSQL refuses U+0000)."""
    return text.replace("\x00", "\ufffd")


def cancelled_rows(version: int, first_line: int, body: bytes) -> Iterator[FailedRow]:
    """A failed row, reason ``cancelled``, for each non-blank line of a unit's body (an
    import's is compressed)."""
    if version == IMPORT_VERSION and body:
        body = zlib.decompress(body)
    for offset, line in enumerate(body.split(b"\n")):
        if batchfile.is_blank(line):
            continue
        raw = line.rstrip(b"\r").decode("utf-8", errors="replace")
        yield FailedRow(
            first_line + offset, printable(row_id(version, line)), CANCELLED, printable(raw)
        )


class BatchControl(SharedQueries):
    """Listing and cancelling batches, on the connections of the store that inherits this."""

    def cancel_batch(self, client_id: int, batch_id: str, by: str, now_ms: int) -> Cancelled | None:
        """Stop the batch: rows not yet applied fail with reason ``cancelled`` and the batch
        completes. None if the client has no such batch; ``BatchFinished`` if it completed
        without being cancelled. Cancelling a cancelled batch again changes nothing."""
        with self._write() as db:
            found = db.execute(self.sql["batch_to_cancel"], (client_id, batch_id)).fetchone()
            if found is None:
                return None
            seq, version, finished_at, cancelled_at, cancelled_by = found
            if cancelled_at is not None:
                return Cancelled(
                    int(seq), 0, True, Cancellation(from_ms(cancelled_at), cancelled_by)
                )
            if finished_at is not None:
                raise BatchFinished(
                    f"Batch {batch_id!r} has already completed: every row was applied or "
                    "failed, so there is nothing left to cancel."
                )
            rows = self._stop_units(db, int(seq), int(version), now_ms)
            # The units' locks are held now; the batch row's comes last, as in apply_unit.
            db.execute(self.sql["lock_batch"], (int(seq),))
            db.execute(self.sql["cancel_batch"], (now_ms, now_ms, now_ms, by, seq))
        return Cancelled(int(seq), rows, False, Cancellation(from_ms(now_ms), by))

    def _stop_units(self, db: Connection, seq: int, version: int, now_ms: int) -> int:
        """Steps 1 and 2: mark the units not done as done and failed; record their rows.

        Returns the rows stopped. Only the units this statement changed count: one a
        worker finished meanwhile is left as applied.
        """
        # A unit applied in part (``applied_through``, read as the update leaves it) keeps
        # what it applied: only its lines after that are cancelled; its counts so far stand.
        bodies = {
            int(unit_no): (int(first_line), self._unit_body(db, seq, int(unit_no), body))
            for unit_no, first_line, body in db.execute(
                self.sql["units_not_done"], (seq,)
            ).fetchall()
        }
        stopped = db.execute(self.sql["stop_units"], (now_ms, seq)).fetchall()
        insert = self.sql["record_cancelled_row"]
        cancelled = 0
        chunk: list[tuple[int, int, str, str, str]] = []
        for unit_no, through in sorted(stopped):
            first_line, body = bodies.get(int(unit_no), (0, b""))
            self._forget_unit_body(db, seq, int(unit_no))
            for row in cancelled_rows(version, first_line, body):
                if through is not None and row.line <= through:
                    continue
                cancelled += 1
                chunk.append((seq, row.line, row.id, row.reason, row.raw))
                if len(chunk) >= FAILURE_CHUNK:
                    db.cursor().executemany(insert, chunk)
                    chunk = []
        if chunk:
            db.cursor().executemany(insert, chunk)
        return cancelled

    def batch_cancellation(self, batch_seq: int) -> Cancellation | None:
        """Who cancelled the batch and when, or None if nobody did."""
        row = self._one(self.sql["batch_cancellation"], (batch_seq,))
        if row is None or row[0] is None:
            return None
        return Cancellation(from_ms(row[0]), str(row[1] or ""))

    def batch_listings(
        self, client_id: int, limit: int = 50, unfinished: bool = False
    ) -> list[BatchListing]:
        """The client's batches, newest first: all whose status is kept, or only those not
        finished yet (queued, running, paced or stuck)."""
        ids = self._all(self.sql["client_batch_ids"], (client_id, int(unfinished), limit))
        listed = []
        for (batch_id,) in ids:
            batch = self.get_batch(client_id, batch_id)
            if batch is not None:  # purged between the two reads
                listed.append(BatchListing(batch, self.batch_cancellation(batch.seq)))
        return listed
