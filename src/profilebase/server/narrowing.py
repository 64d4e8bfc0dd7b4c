"""Applying one claimed unit, and what happens when that fails: the narrowing rule.

Every accepted row ends applied or failed with a reason; only transient errors
are retried (docs/design.md#when-applying-a-unit-fails):

1. The unit is decoded slice by slice and each slice applied in parts of at
   most ``PART_ROWS`` rows, each in its own transaction. A line the decoder
   itself fails on is found by decoding halves of its slice, and fails alone.
2. A part that raises an error the store calls transient (``transient_reason``:
   the database unreachable, busy, locked or out of room) gives the unit back:
   it is retried after a growing delay, its status says why it waits, and no
   row fails for it. Parts already applied stay applied.
3. Any other error (a value the database refuses, a bug) narrows the part: an
   empty part must commit first — if even that fails, the rows are not the
   cause and the unit is given back as in 2 — then the part is split in halves,
   each applied in its own transaction, until the rows that cause the error
   are alone. Each of those fails with a reason quoting an error id that the
   log has with the whole error; every other row applies.
4. From attempt ``NARROW_AFTER_ATTEMPTS`` on, a transient error is narrowed as
   well: a row that itself makes the database time out or run out of memory
   then fails alone, and the empty part of step 3 keeps an outage from failing
   any row.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import cast

from profilebase import batchfile
from profilebase.models import Counts, FailedRow
from profilebase.server.decoder import (
    DecodedSlice,
    Slice,
    UnitDecoder,
    first_cell,
    raw_text,
    slices,
)
from profilebase.server.storage.base import DecodedRow, Store, UnitClaim

log = logging.getLogger("profilebase.server.worker")

#: Rows (and failed rows) a part holds at most: the write lock is held for one part at
#: a time, so an online write waits for at most one part (tens of ms), not a whole unit.
PART_ROWS = 2_000
#: From this attempt on, transient errors are narrowed too (step 4).
NARROW_AFTER_ATTEMPTS = 10
#: The longest wait between two attempts of a unit.
MAX_RETRY_DELAY_MS = 60_000

#: A part of a unit: its rows and failures, in line order.
Item = DecodedRow | FailedRow


def retry_delay_ms(attempts: int) -> int:
    """How long a unit given back after its ``attempts``-th attempt waits: 2 s, doubling,
    at most ``MAX_RETRY_DELAY_MS``."""
    return min(MAX_RETRY_DELAY_MS, 1000 * 2 ** min(attempts, 6))


def new_error_id() -> str:
    """An id that a reason shown to users quotes and the log line carries."""
    return uuid.uuid4().hex[:12]


class GiveBack(Exception):
    """The unit must be given back and retried later; ``reason`` is for its status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decoded_parts(
    body: bytes, first_line: int, decoder: UnitDecoder
) -> Iterator[tuple[Slice, DecodedSlice]]:
    """A unit's slices with what they decode to (step 1); a slice the decoder fails on is
    decoded in halves until the lines it fails on are alone, and those fail with a reason."""
    for piece in slices(body, first_line):
        try:
            part = decoder.decode(piece)
        except Exception as error:
            log.error(
                "batch %s: decoding lines %d-%d failed; narrowing it down",
                decoder.batch_seq,
                piece.first_line,
                piece.last_line,
                exc_info=error,
            )
            rows: list[DecodedRow] = []
            failures: list[FailedRow] = []
            _decode_lines(decoder, piece.body.split(b"\n"), piece.first_line, rows, failures)
            part = DecodedSlice(rows, failures, piece.last_line, piece.final)
        yield piece, part


def _decode_lines(
    decoder: UnitDecoder,
    lines: Sequence[bytes],
    first_line: int,
    rows: list[DecodedRow],
    failures: list[FailedRow],
) -> None:
    """Decode ``lines`` in halves until the lines the decoder fails on are alone."""
    try:
        found, failed = decoder.decode_all(b"\n".join(lines), first_line)
    except Exception as error:
        if len(lines) > 1:
            half = len(lines) // 2
            _decode_lines(decoder, lines[:half], first_line, rows, failures)
            _decode_lines(decoder, lines[half:], first_line + half, rows, failures)
            return
        if batchfile.is_blank(lines[0]):
            return
        error_id = new_error_id()
        log.error(
            "line %d could not be decoded (error id %s)", first_line, error_id, exc_info=error
        )
        failures.append(
            FailedRow(
                first_line,
                first_cell(lines[0]),
                f"could not be read: the server failed on this row (error id {error_id}; "
                "the server log has the details)",
                raw_text(lines[0]),
            )
        )
        return
    rows.extend(found)
    failures.extend(failed)


class UnitApplication:
    """Applies the parts of one claimed unit through ``store``, narrowing failures
    (steps 2 to 4); ``counts`` adds up what the parts applied."""

    def __init__(
        self,
        store: Store,
        claim: UnitClaim,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> None:
        self.store, self.claim, self.now_ms = store, claim, now_ms
        self.max_profile_bytes = max_profile_bytes
        self.expire_before_ms = expire_before_ms
        self.counts = Counts()
        #: Transient errors are narrowed too from this attempt on (step 4).
        self.narrow_transient = claim.attempts >= NARROW_AFTER_ATTEMPTS
        self.narrowing = False

    def apply(self, part: DecodedSlice) -> bool:
        """Apply one decoded slice in parts of at most ``PART_ROWS`` items; False if the
        lease was lost (stop: another worker has the unit). Raises ``GiveBack`` when the
        unit must be retried later."""
        # The decoder gives rows in line order; failures are few, and rare.
        items: Sequence[Item] = part.rows
        if part.failures:
            items = sorted([*part.rows, *part.failures], key=lambda item: item.line)
        rows_only = not part.failures
        for start in range(0, len(items) - PART_ROWS, PART_ROWS):  # all but the last part
            piece = items[start : start + PART_ROWS]
            if not self._settle(piece, piece[-1].line, rows_only):
                return False
        last = items[(max(0, len(items) - 1) // PART_ROWS) * PART_ROWS :]
        return self._settle(last, None if part.final else part.last_line, rows_only)

    def _part(
        self, items: Sequence[Item], through_line: int | None, rows_only: bool = False
    ) -> bool:
        """One transaction: apply ``items`` (``rows_only``: no failure among them),
        recording progress up to ``through_line``."""
        rows: Sequence[DecodedRow]
        failures: Sequence[FailedRow] = []
        if rows_only:
            rows = cast(Sequence[DecodedRow], items)
        else:
            rows = [item for item in items if isinstance(item, DecodedRow)]
            failures = [item for item in items if isinstance(item, FailedRow)]
        counts = self.store.apply_unit(
            self.claim,
            rows,
            failures,
            self.now_ms,
            self.max_profile_bytes,
            self.expire_before_ms,
            through_line,
        )
        if counts is None:
            return False
        self.counts = self.counts + counts
        return True

    def _settle(
        self, items: Sequence[Item], through_line: int | None, rows_only: bool = False
    ) -> bool:
        try:
            return self._part(items, through_line, rows_only)
        except Exception as error:
            return self._narrow(items, through_line, error)

    def _narrow(self, items: Sequence[Item], through_line: int | None, error: Exception) -> bool:
        """``items`` failed with ``error``: give the unit back, or find the items that
        cause it (steps 2 to 4)."""
        claim = self.claim
        transient = self.store.transient_reason(error)
        error_id = new_error_id()
        where = f"unit {claim.batch_seq}/{claim.unit_no}"
        if transient is not None and not self.narrow_transient:
            log.warning(
                "%s: %s (error id %s); retrying later", where, transient, error_id, exc_info=error
            )
            raise GiveBack(f"{transient} (error id {error_id})")
        if not items:  # nothing to blame: the empty part itself failed
            log.error("%s cannot be applied (error id %s)", where, error_id, exc_info=error)
            raise GiveBack(
                (transient or "the server could not apply this unit") + f" (error id {error_id})"
            )
        # The whole error once per attempt; the parts that fail while narrowing, briefly.
        log.log(
            logging.DEBUG if self.narrowing else logging.ERROR,
            "%s: lines %d-%d failed (error id %s); narrowing down to the rows that cause it",
            where,
            items[0].line,
            items[-1].line,
            error_id,
            exc_info=None if self.narrowing else error,
        )
        self.narrowing = True
        # Step 3: if a part without these rows cannot commit either, they are not the cause.
        probe_through = items[0].line - 1
        try:
            if not self._part([], probe_through):
                return False
        except Exception as probe_error:
            return self._narrow([], probe_through, probe_error)
        if len(items) == 1:
            return self._fail_alone(items[0], through_line, transient, error_id, error)
        half = len(items) // 2
        return self._settle(items[:half], items[half - 1].line) and self._settle(
            items[half:], through_line
        )

    def _fail_alone(
        self,
        item: Item,
        through_line: int | None,
        transient: str | None,
        error_id: str,
        error: Exception,
    ) -> bool:
        """Record the one row that causes an error as failed, with the reason; if even
        that record fails, record the line without the row's own text."""
        bare = FailedRow(
            item.line,
            "",
            f"failed, and its id and reason could not be recorded (error id {error_id}; "
            "the server log has the details)",
        )
        if isinstance(item, FailedRow):  # recording it is what failed
            candidates = [bare]
        elif transient is not None:
            reason = (
                f"could not be stored: {transient} on each of {self.claim.attempts} attempts "
                f"with this row (error id {error_id})"
            )
            candidates = [FailedRow(item.line, item.id, reason), bare]
        else:
            reason = (
                "could not be stored: the database refused this row or the server failed on "
                f"it (error id {error_id}; the server log has the details)"
            )
            candidates = [FailedRow(item.line, item.id, reason), bare]
        log.error(
            "unit %s/%s: line %d fails alone (error id %s)",
            self.claim.batch_seq,
            self.claim.unit_no,
            item.line,
            error_id,
            exc_info=error,
        )
        last: Exception = error
        for failed in candidates:
            try:
                return self._part([failed], through_line)
            except Exception as record_error:
                last = record_error
        return self._narrow([], through_line, last)
