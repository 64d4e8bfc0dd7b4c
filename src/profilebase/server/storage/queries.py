"""The logic of a ``Store``, written once over the backend's named queries.

``SharedQueries`` (with the mixins ``profiles.py``, ``clients.py``, ``batch_control.py``,
``overview.py`` and ``tables.py``) implements the ``Store`` protocol by running queries by
name from ``self.sql``, the dialect's ``storage/<dialect>/sql/queries.sql`` (``statements.py``);
both dialects define the same names. What a backend supplies is the abstract part of
the class below: its connections and transactions, how a list is bound as one
parameter, how a unit's lines are stored and leased, how a unit's rows are written
(a ``merge.RowWriter``), how a migration script runs, which of its driver's errors
are transient, and what text it cannot store. ``SQLiteStore`` and ``PostgresStore``
(``storage/sqlite/``, ``storage/postgres/``) are those two classes.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from functools import partial
from operator import attrgetter
from typing import Any, Protocol, TypeVar

from profilebase.errors import DatabaseUnavailable, StorageFull
from profilebase.models import (
    DAY_MS,
    SEQ_SPAN,
    Batch,
    Counts,
    FailedRow,
    Limits,
    WriteKind,
    now_ms,
)
from profilebase.server import quota
from profilebase.server.merge import (
    ProfileState,
    RowWriter,
    Tombstone,
    apply_rows,
    group_tombstones,
)
from profilebase.server.quota import MINUTE_MS
from profilebase.server.storage import migrations
from profilebase.server.storage.base import (
    DecodedRow,
    NewBatch,
    UnitClaim,
    UnitSpec,
    UnitsSummary,
    WriterApart,
)
from profilebase.server.storage.idempotency import KEY_TTL_MS, replay
from profilebase.server.storage.overview import OverviewQueries
from profilebase.server.storage.records import (
    batch_from_row,
    claim_from_row,
)

log = logging.getLogger("profilebase.server.storage")
T = TypeVar("T")


class Connection(Protocol):
    """What both sqlite3 and psycopg connections offer."""

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def close(self) -> None: ...

    def cursor(self) -> Any: ...


#: A row's or failure's line number.
LINE = attrgetter("line")


def not_applied(
    rows: Sequence[DecodedRow], failures: Sequence[FailedRow], applied_through: int | None
) -> tuple[Sequence[DecodedRow], Sequence[FailedRow]]:
    """The rows and failures after a unit's recorded progress (all of them if it has none)."""
    if applied_through is None:
        return rows, failures
    if all(min(map(LINE, items)) > applied_through for items in (rows, failures) if items):
        return rows, failures  # a later part than the progress recorded
    return (
        [row for row in rows if row.line > applied_through],
        [failure for failure in failures if failure.line > applied_through],
    )


class SharedQueries(OverviewQueries, ABC):
    """A ``Store`` over named queries; a backend supplies the abstract methods."""

    #: The dialect: its folder ``storage/<backend>/``, with its SQL and migrations.
    backend: str
    #: The dialect's named queries (``statements.load(backend)``).
    sql: Mapping[str, str]
    #: False where text cannot hold U+0000 (PostgreSQL).
    stores_nul: bool
    #: Errors of applying a unit that mean it lost a race to another transaction: the
    #: unit is applied again at once, up to ``apply_attempts`` times in all.
    lost_races: tuple[type[Exception], ...] = ()
    apply_attempts = 1

    # -- what a backend supplies -------------------------------------------------------

    def _part_write(self, size: int) -> AbstractContextManager[Connection]:
        """The write transaction of a part a worker applies, ``size`` bytes of rows. A
        backend may queue parts among themselves around it (SQLite does)."""
        return self._write()

    def _part_attempt(self, apply: Callable[[], T]) -> T:
        """One attempt at a part's transaction (``apply`` opens it with ``_part_write``);
        a backend may lend it a connection without checking it first (PostgreSQL does)."""
        return apply()

    def _bulk_write(self) -> AbstractContextManager[Connection]:
        """The write transaction that stores an accepted batch and its units."""
        return self._write()

    @abstractmethod
    def _read(self) -> AbstractContextManager[Connection]:
        """A connection for reads (each statement commits on its own)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Connection]:
        """A connection inside a write transaction, committed when the block ends."""

    def _write_at_once(self, work: Callable[[Connection], T]) -> T:
        """An online write (single update, page call, delete): ``work`` in a write
        transaction, its result once committed. A backend may run the ones waiting at
        the same time in one transaction, each in a savepoint (SQLite's group commit)."""
        with self._write() as db:
            return work(db)

    def submit_write(self, call: Callable[..., T], *args: Any) -> Future[T] | None:
        return None  # no writer thread of its own: the caller's thread makes the call

    def writer_apart(self, answer_timeout: float, log_format: str = "text") -> WriterApart | None:
        return None

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[Connection]:
        """A connection inside a read-only transaction that sees one snapshot."""

    @abstractmethod
    def _export_connection(self) -> Connection:
        """A connection of its own for an export's snapshot (``begin_snapshot``)."""

    @abstractmethod
    def _list(self, items: Sequence[object]) -> object:
        """A list of keys or numbers bound as one parameter (the queries' "list of keys")."""

    @abstractmethod
    def _store_units(self, db: Connection, seq: int, units: Sequence[UnitSpec]) -> int:
        """Store a batch's units with their lines; return how many."""

    @abstractmethod
    def _lease_unit(
        self, db: Connection, owner: str, now_ms: int, lease_ms: int, paced: list[int]
    ) -> Sequence[Any] | None:
        """Lease the oldest claimable unit (``claim_unit``); the row
        ``records.claim_from_row`` reads, lines included, or None."""

    @abstractmethod
    def _row_writer(
        self, db: Connection, client_id: int, now_ms: int, stored: set[str]
    ) -> RowWriter:
        """The writer of a unit's rows; ``stored`` are the keys of its existing profiles."""

    @abstractmethod
    def _run_script(self, db: Connection, script: str) -> None:
        """Run a migration file."""

    def _unit_body(self, db: Connection, seq: int, unit_no: int, inline: Any) -> bytes:
        """A unit's lines: kept in its row here; a backend that keeps them apart says so."""
        return bytes(inline or b"")

    def _forget_unit_body(self, db: Connection, seq: int, unit_no: int) -> None:
        """Drop the lines of a unit that is done, where they are kept apart from its row."""

    def _none_stored(self, db: Connection, client_id: int, keys: Sequence[str]) -> bool:
        """True if the client has no profile under any of ``keys`` (sorted by code point,
        the order of both backends' key collation), told by one index seek over their
        range: a batch of new ids, as most large ones are, then skips looking up (and on
        PostgreSQL locking) each key. A profile created in the range meanwhile is found as
        any other created meanwhile is: SQLite has one writer, and PostgreSQL's copy of
        the new profiles fails on it and the unit starts again."""
        return (
            not keys
            or not db.execute(
                self.sql["profiles_between"], (client_id, keys[0], keys[-1])
            ).fetchone()
        )

    def _transient(self, error: BaseException) -> str | None:
        """The backend's part of ``transient_reason``: its driver's transient errors."""
        return None

    def _recordable(self, text: str) -> str:
        """``text`` as the backend can store it in a text column (see PostgreSQL's)."""
        return text

    def _can_store(self, key: str) -> bool:
        """False if no stored key can hold ``key`` (it then finds no profile)."""
        return True

    def _refuse_unstorable(self, *texts: str) -> None:
        """Raise ``BadRequest`` if the backend cannot store one of ``texts``."""

    def _refuse_header(self, names: Sequence[str]) -> None:
        """Raise ``BatchRejected`` if the backend cannot store one of a batch's names."""

    def _storable_rows(
        self, rows: Sequence[DecodedRow], failures: Sequence[FailedRow]
    ) -> tuple[Sequence[DecodedRow], Sequence[FailedRow]]:
        """Rows the backend cannot store at all, moved to the failures (in line order)."""
        return rows, failures

    # -- helpers -------------------------------------------------------------------------

    def _one(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> Any:
        with self._read() as db:
            return db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> list[Any]:
        with self._read() as db:
            return list(db.execute(sql, params).fetchall())

    # -- schema --------------------------------------------------------------------------

    def pending_migrations(self) -> list[str]:
        with self._read() as db:
            exists = db.execute(self.sql["migrations_table_exists"]).fetchone()[0]
            rows = db.execute(self.sql["applied_migrations"]).fetchall() if exists else []
            applied = [int(version) for (version,) in rows]
        return [m.file_name for m in migrations.pending(self.backend, applied)]

    def migrate(self) -> list[str]:
        if not self.pending_migrations():
            return []  # nothing to write: a read-only database still serves reads
        applied = []
        for migration in migrations.load(self.backend):
            with self._write() as db:
                db.execute(self.sql["lock_migrations"])
                db.execute(self.sql["create_migrations_table"])
                if db.execute(self.sql["migration_applied"], (migration.version,)).fetchone():
                    continue
                self._run_script(db, migration.sql)
                db.execute(self.sql["record_migration"], (migration.version, migration.name))
                applied.append(migration.file_name)
        return applied

    # -- accepting batches -------------------------------------------------------------

    def rows_accepted_since(self, client_id: int, since_ms: int) -> int:
        return int(self._one(self.sql["rows_accepted_since"], (client_id, since_ms))[0])

    def recent_batches(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        with self._read() as db:
            return self._recent(db, client_id, since_ms)

    def _recent(self, db: Connection, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        found = db.execute(self.sql["recent_batches"], (client_id, since_ms)).fetchall()
        return [(int(at), int(size)) for at, size in found]

    def accept_batch(self, batch: NewBatch, now_ms: int, limits: Limits) -> tuple[int, str]:
        self._refuse_header(batch.names)
        with self._bulk_write() as db:
            # The client's row lock orders its writes: idempotency key, quota, seq, commit.
            db.execute(self.sql["lock_client"], (batch.client.id,))
            earlier = self._replayed(db, batch)
            if earlier is not None:
                return earlier
            seq, batch_id = self._take_seq(db, batch, now_ms, limits)
            units = self._store_units(db, seq, batch.units)
            self._record_batch(db, seq, batch_id, batch, units, now_ms)
        return seq, batch_id

    def _replayed(self, db: Connection, batch: NewBatch) -> tuple[int, str] | None:
        """(seq, batch id) of the batch this client already sent under the same
        ``Idempotency-Key``, or None (``IdempotencyConflict`` if its body differed)."""
        if batch.idempotency_key is None:
            return None
        earlier = db.execute(
            self.sql["idempotency_key"], (batch.client.id, batch.idempotency_key)
        ).fetchone()
        return None if earlier is None else replay(tuple(earlier), batch)

    def _take_seq(
        self, db: Connection, batch: NewBatch, now: int, limits: Limits
    ) -> tuple[int, str]:
        """Check the client's batch quotas, then take the next write seq.

        Returns (seq, batch id); raises ``QuotaExceeded`` before writing anything.
        """
        client = batch.client
        recent = self._recent(db, client.id, now - DAY_MS)
        quota.check_batch(client.code, recent, batch.batch_size, limits, now)
        seq = int(db.execute(self.sql["new_batch_write"], (client.id, now)).fetchone()[0])
        batch_id = f"{client.code}-{now}-{seq}"
        db.execute(self.sql["set_write_ref"], (batch_id, seq))
        return seq, batch_id

    def _record_batch(
        self, db: Connection, seq: int, batch_id: str, batch: NewBatch, units: int, now: int
    ) -> None:
        """Store the batch row once its units are stored, and its idempotency key if any.

        A batch of no units is complete at once.
        """
        done_at = now if units == 0 else None
        db.execute(
            self.sql["insert_batch"],
            (
                seq,
                batch_id,
                batch.client.id,
                batch.version,
                str(batch.key_kind),
                json.dumps(list(batch.names)),
                batch.batch_size,
                units,
                now,
                done_at,
                done_at,
                now,
            ),  # fmt: skip
        )
        if batch.idempotency_key is not None:
            db.execute(
                self.sql["insert_idempotency_key"],
                (batch.client.id, batch.idempotency_key, seq, batch_id, batch.digest, now),
            )

    # -- claiming and applying units ---------------------------------------------------

    def claim_unit(
        self, owner: str, now_ms: int, lease_ms: int, paced: Mapping[int, int] | None = None
    ) -> UnitClaim | None:
        with self._write() as db:
            found = self._lease_unit(db, owner, now_ms, lease_ms, list(paced or {}))
            if found is None:
                return None
            claim = claim_from_row(found, owner)
            db.execute(self.sql["mark_batch_started"], (now_ms, claim.batch_seq))
            self._pace(db, claim, paced, now_ms)
        return claim

    def _pace(
        self, db: Connection, claim: UnitClaim, paced: Mapping[int, int] | None, now: int
    ) -> None:
        """Move a paced client's next claim on by this unit's rows over its rate."""
        rate = (paced or {}).get(claim.client_id)
        if not rate:
            return
        pause = claim.row_count * 1000 // rate
        db.execute(self.sql["pace_client"], (claim.client_id, now + pause, pause, pause))

    def apply_unit(
        self,
        claim: UnitClaim,
        rows: Sequence[DecodedRow],
        failures: Sequence[FailedRow],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
        through_line: int | None = None,
    ) -> Counts | None:
        rows, failures = self._storable_rows(rows, failures)
        # Outside the transaction: the lock is held for the database work alone.
        prefix = claim.key_kind.prefix
        keys = sorted({prefix + row.id for row in rows})
        listed = (keys, self._list(keys))
        size = sum(len(row.attrs) for row in rows)

        def apply() -> Counts | None:
            with self._part_write(size) as db:
                return self._apply(
                    db,
                    claim,
                    (rows, failures, listed),
                    now_ms,
                    max_profile_bytes,
                    expire_before_ms,
                    through_line,
                )

        return self._racing(claim, partial(self._part_attempt, apply))

    def _racing(self, claim: UnitClaim, apply: Callable[[], T]) -> T:
        """``apply()``, a unit's transaction, run again at once if it lost a race to
        another transaction (``lost_races``), ``apply_attempts`` times in all."""
        for attempt in range(1, self.apply_attempts + 1):
            try:
                return apply()
            except self.lost_races as exc:
                log.info("unit %s/%s lost a race (%r); again", claim.batch_seq, claim.unit_no, exc)
                if attempt == self.apply_attempts:
                    raise  # transient (transient_reason): the worker retries the unit later
        raise AssertionError("unreachable")

    def _apply(
        self,
        db: Connection,
        claim: UnitClaim,
        part: tuple[Sequence[DecodedRow], Sequence[FailedRow], tuple[list[str], object]],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int,
        through_line: int | None,
    ) -> Counts | None:
        """Apply a part of a unit in the transaction ``db``: its rows (their keys, and the
        keys bound as one parameter, in ``part``) and failures; None if the lease is lost."""
        rows, failures, (keys, keys_param) = part
        client_id = claim.client_id
        ours = db.execute(
            self.sql["unit_progress"], (claim.batch_seq, claim.unit_no, claim.owner)
        ).fetchone()
        if ours is None:
            return None
        if ours[0] is not None:  # an earlier part applied the lines up to ours[0]
            kept_rows, failures = not_applied(rows, failures, ours[0])
            if len(kept_rows) != len(rows):  # else the keys are the same
                rows = kept_rows
                prefix = claim.key_kind.prefix
                keys = sorted({prefix + row.id for row in rows})
                keys_param = self._list(keys)
        aliases: dict[str, str] = {}
        stored_keys, stored_param = keys, keys_param
        # Like tombstones below: one cheap check keeps clients without links fast.
        if db.execute(self.sql["client_has_identities"], (client_id,)).fetchone():
            aliases = dict(db.execute(self.sql["aliases_of_keys"], (client_id, keys_param)))
            if aliases:
                stored_keys = sorted({aliases.get(k, k) for k in keys})
                stored_param = self._list(stored_keys)
        if expire_before_ms:
            expired = self._expire_keys(db, client_id, stored_keys, expire_before_ms)
            aliases = {k: v for k, v in aliases.items() if v not in expired}
        existing = {}
        if not self._none_stored(db, client_id, stored_keys):
            existing = {
                pkey: ProfileState(created, latest, size)
                for pkey, created, latest, size in db.execute(
                    self.sql["profile_states"], (client_id, stored_param)
                )
            }
        # Read after the profiles' locks: a delete that held one of them is visible now.
        tombstones: dict[str, list[Tombstone]] = {}
        if db.execute(self.sql["client_has_tombstones"], (client_id,)).fetchone():
            tombstones = group_tombstones(
                db.execute(self.sql["tombstones_of_keys"], (client_id, keys_param))
            )
        writer = self._row_writer(db, client_id, now_ms, set(existing))
        counts, size_failures = apply_rows(
            rows,
            claim.key_kind.prefix,
            claim.version >= 2,
            existing,
            tombstones,
            max_profile_bytes,
            writer,
            aliases,
        )
        writer.flush()
        consumed = len(rows) + len(failures)
        return self._finish_unit(
            db, claim, consumed, counts, [*failures, *size_failures], now_ms, through_line
        )

    def _finish_unit(
        self,
        db: Connection,
        claim: UnitClaim,
        consumed: int,
        applied: Counts,
        failures: Sequence[FailedRow],
        now: int,
        through_line: int | None = None,
    ) -> Counts:
        """Record a part's failed rows and add its counts to the unit's; with no
        ``through_line`` mark the unit done and finish its batch if it was the last."""
        if failures:
            recordable = self._recordable
            db.cursor().executemany(
                self.sql["record_failure"],
                [
                    (
                        claim.batch_seq,
                        f.line,
                        recordable(f.id),
                        recordable(f.reason),
                        recordable(f.raw),
                    )
                    for f in failures
                ],
            )
        counts = Counts(consumed, applied.successful, applied.not_found, len(failures))
        added = (counts.consumed, counts.successful, counts.not_found, counts.failed)
        unit = (claim.batch_seq, claim.unit_no)
        if through_line is not None:
            db.execute(
                self.sql["record_unit_progress"], (*added, through_line, through_line, *unit)
            )
            db.execute(self.sql["mark_batch_progress"], (now, claim.batch_seq))
            return counts
        db.execute(self.sql["finish_unit"], (*added, now, *unit))
        self._forget_unit_body(db, *unit)
        # Locked before counting, so that of two last units finishing at once the
        # second sees the first one done and marks the batch finished.
        db.execute(self.sql["lock_batch"], (claim.batch_seq,))
        db.execute(self.sql["finish_batch_if_done"], (now, claim.batch_seq, now, claim.batch_seq))
        return counts

    def release_unit(self, claim: UnitClaim, error: str, retry_at_ms: int) -> None:
        with self._write() as db:
            db.execute(
                self.sql["release_unit"],
                (retry_at_ms, error[:2000], claim.batch_seq, claim.unit_no, claim.owner),
            )

    def transient_reason(self, error: BaseException) -> str | None:
        seen: set[int] = set()
        cause: BaseException | None = error
        # The error, or what it was raised from or while handling (a backend may wrap
        # its driver's error), decides.
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if isinstance(cause, DatabaseUnavailable):
                return "the database was unavailable"
            if isinstance(cause, StorageFull):
                return "the database had no room to write"
            reason = self._transient(cause)
            if reason:
                return reason
            cause = cause.__cause__ or cause.__context__
        return None

    # -- batch status ------------------------------------------------------------------

    def get_batch(self, client_id: int, batch_id: str) -> Batch | None:
        row = self._one(self.sql["batch_status"], (client_id, batch_id))
        return None if row is None else batch_from_row(row)

    def units_summary(self, batch_seq: int, now_ms: int) -> UnitsSummary:
        with self._read() as db:
            pending, running, done, retrying, retry_at = db.execute(
                self.sql["unit_counts"], (now_ms, now_ms, batch_seq)
            ).fetchone()
            error = db.execute(self.sql["unit_last_error"], (batch_seq,)).fetchone()
            ahead = db.execute(self.sql["units_ahead"], (batch_seq,)).fetchone()[0]
        return UnitsSummary(
            pending=int(pending),
            running=int(running),
            done=int(done),
            retrying=int(retrying),
            retry_at_ms=None if retry_at is None else int(retry_at),
            last_error=None if error is None else error[0],
            units_ahead=int(ahead),
        )

    def failed_rows(
        self, batch_seq: int, after_line: int = 0, limit: int = 1000
    ) -> list[FailedRow]:
        found = self._all(self.sql["failed_rows"], (batch_seq, after_line, limit))
        return [FailedRow(line, id_, reason, raw) for line, id_, reason, raw in found]

    def pending_units(self) -> int:
        return int(self._one(self.sql["pending_units"])[0])

    def latest_batch(self) -> int:
        return int(self._one(self.sql["latest_batch"])[0])

    # -- profiles: what applying a unit shares with the writes that apply at once

    def _resolve(self, db: Connection, client_id: int, key: str) -> str:
        """The key the profile ``key`` finds is stored under (itself unless an alias)."""
        found = db.execute(self.sql["resolve_alias"], (client_id, key)).fetchone()
        return key if found is None else str(found[0])

    def _expire_keys(
        self, db: Connection, client_id: int, keys: list[str], before_ms: int
    ) -> set[str]:
        """Delete the profiles of ``keys`` last active before ``before_ms``; return their keys."""
        expired = {
            str(pkey)
            for (pkey,) in db.execute(
                self.sql["expire_keys"], (client_id, before_ms, self._list(keys))
            ).fetchall()
        }
        if expired:
            db.execute(
                self.sql["forget_identities_of_keys"], (client_id, self._list(sorted(expired)))
            )
        return expired

    # -- housekeeping ------------------------------------------------------------------

    def purge(self, older_than_ms: int) -> int:
        sql = self.sql
        with self._write() as db:
            db.execute(sql["purge_units"], (older_than_ms,))
            db.execute(sql["purge_failures"], (older_than_ms,))
            # A key outlives its batch's status if need be: it answers retries for 24 hours.
            db.execute(sql["purge_idempotency_keys"], (min(older_than_ms, now_ms() - KEY_TTL_MS),))
            db.execute(sql["purge_tokens"], (older_than_ms, older_than_ms))
            purged = db.execute(sql["purge_batches"], (older_than_ms,)).rowcount
            db.execute(sql["purge_tombstones"], (SEQ_SPAN, 2**62))
            # Counts a day older than the purge horizon are outside every 24-hour window.
            db.execute(sql["purge_update_counts"], ((older_than_ms - DAY_MS) // MINUTE_MS,))
            immediate = [str(k) for k in (WriteKind.UPDATE, WriteKind.DELIVERY, WriteKind.DELETE)]
            db.execute(sql["purge_writes"], (*immediate, older_than_ms))
        return int(purged)
