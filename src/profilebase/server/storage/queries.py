"""The part of a ``Store`` whose SQL is the same on every backend.

``SharedQueries`` holds the reads and the simple writes, written once in the
SQL both SQLite and PostgreSQL accept, with ``?`` placeholders. A backend
supplies its connections (``_read``, ``_write``), the placeholder its driver
uses, and ``_lock_batch``; claiming and applying units, accepting batches and
migrating stay in each backend, where they really differ.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from profilebase.errors import DatabaseUnavailable, StorageFull
from profilebase.models import (
    DAY_MS,
    SEQ_SPAN,
    Batch,
    Client,
    Counts,
    FailedRow,
    KeyKind,
    Limits,
    Profile,
    WriteKind,
    now_ms,
)
from profilebase.server import quota
from profilebase.server.merge import ProfileState, RowWriter, Tombstone, apply_rows
from profilebase.server.quota import MINUTE_MS
from profilebase.server.storage.base import (
    DecodedRow,
    NewBatch,
    UnitClaim,
    UnitsSummary,
    UpdateOutcome,
    Visit,
)
from profilebase.server.storage.idempotency import KEY_TTL_MS, replay
from profilebase.server.storage.links import absorb_attrs, plan_link
from profilebase.server.storage.overview import BATCH_GROUP, BATCH_SELECT, OverviewQueries
from profilebase.server.storage.records import (
    batch_from_row,
    build_profile,
    write_numbers,
)

BATCH_STATUS = BATCH_SELECT + "WHERE b.client_id = ? AND b.batch_id = ?\n" + BATCH_GROUP

#: Claim condition of the backends' claim queries (``u`` is the candidate unit, ``b`` its
#: batch): a v1 row is "not found" unless its profile was created by an earlier write,
#: so a v1 unit waits until every earlier batch of its client is done. v2 units never
#: wait: their outcome does not depend on the order units are applied in.
V1_WAITS_FOR_EARLIER_BATCHES = """(b.version >= 2 OR NOT EXISTS (
    SELECT 1 FROM batch_units e JOIN batches eb ON eb.seq = e.batch_seq
    WHERE eb.client_id = b.client_id AND e.batch_seq < u.batch_seq
      AND e.state <> 'done'))"""

FINISHED_BEFORE = "SELECT seq FROM batches WHERE finished_at IS NOT NULL AND accepted_at < ?"


class Connection(Protocol):
    """What both sqlite3 and psycopg connections offer."""

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def close(self) -> None: ...

    def cursor(self) -> Any: ...


def not_applied(
    rows: Sequence[DecodedRow], failures: Sequence[FailedRow], applied_through: int | None
) -> tuple[Sequence[DecodedRow], Sequence[FailedRow]]:
    """The rows and failures after a unit's recorded progress (all of them if it has none)."""
    if applied_through is None:
        return rows, failures
    return (
        [row for row in rows if row.line > applied_through],
        [failure for failure in failures if failure.line > applied_through],
    )


class SharedQueries(OverviewQueries, ABC):
    """Store methods with one SQL text for every backend."""

    #: The parameter placeholder of the backend's driver.
    placeholder = "?"
    #: The backend's profile steps (``sqlite_profiles`` or ``postgres_profiles``): the same
    #: functions with the same arguments, each module in its own SQL.
    steps: Any

    @abstractmethod
    def _read(self) -> AbstractContextManager[Connection]:
        """A connection for reads."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Connection]:
        """A connection inside a write transaction, committed when the block ends."""

    @abstractmethod
    def _lock_batch(self, db: Connection, batch_seq: int) -> None:
        """Lock the batch row until commit, if writers of one batch can run at once."""

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _one(self, sql: str, params: Sequence[object] = ()) -> Any:
        with self._read() as db:
            return db.execute(self._sql(sql), params).fetchone()

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._read() as db:
            return list(db.execute(self._sql(sql), params).fetchall())

    # -- clients -----------------------------------------------------------------------

    def rows_accepted_since(self, client_id: int, since_ms: int) -> int:
        row = self._one(
            "SELECT coalesce(sum(batch_size), 0) FROM batches "
            "WHERE client_id = ? AND accepted_at >= ?",
            (client_id, since_ms),
        )
        return int(row[0])

    def _replayed(self, db: Connection, batch: NewBatch) -> tuple[int, str] | None:
        """(seq, batch id) of the batch this client already sent under the same
        ``Idempotency-Key``, or None (``IdempotencyConflict`` if its body differed)."""
        if batch.idempotency_key is None:
            return None
        earlier = db.execute(
            self._sql(
                "SELECT batch_seq, batch_id, digest FROM idempotency_keys "
                "WHERE client_id = ? AND key = ?"
            ),
            (batch.client.id, batch.idempotency_key),
        ).fetchone()
        return None if earlier is None else replay(tuple(earlier), batch)

    def recent_batches(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        with self._read() as db:
            return self._recent(db, client_id, since_ms)

    def _recent(self, db: Connection, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        return [
            (int(at), int(size))
            for at, size in db.execute(
                self._sql(
                    "SELECT accepted_at, batch_size FROM batches "
                    "WHERE client_id = ? AND accepted_at > ? ORDER BY accepted_at"
                ),
                (client_id, since_ms),
            ).fetchall()
        ]

    def _take_seq(
        self, db: Connection, batch: NewBatch, now: int, limits: Limits
    ) -> tuple[int, str]:
        """Check the client's batch quotas, then take the next write seq.

        Returns (seq, batch id); raises ``QuotaExceeded`` before writing anything.
        """
        client = batch.client
        recent = self._recent(db, client.id, now - DAY_MS)
        quota.check_batch(client.code, recent, batch.batch_size, limits, now)
        seq = int(
            db.execute(
                self._sql(
                    "INSERT INTO writes (client_id, kind, at) VALUES (?, 'batch', ?) RETURNING seq"
                ),
                (client.id, now),
            ).fetchone()[0]
        )
        batch_id = f"{client.code}-{now}-{seq}"
        db.execute(self._sql("UPDATE writes SET ref = ? WHERE seq = ?"), (batch_id, seq))
        return seq, batch_id

    def _record_batch(
        self, db: Connection, seq: int, batch_id: str, batch: NewBatch, units: int, now: int
    ) -> None:
        """Store the batch row once its units are stored, and its idempotency key if any.

        A batch of no units is complete at once.
        """
        done_at = now if units == 0 else None
        db.execute(
            self._sql(
                "INSERT INTO batches (seq, batch_id, client_id, version, key_kind, header, "
                "batch_size, units_total, accepted_at, started_at, finished_at, last_progress_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
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
                self._sql(
                    "INSERT INTO idempotency_keys "
                    "(client_id, key, batch_seq, batch_id, digest, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)"
                ),
                (batch.client.id, batch.idempotency_key, seq, batch_id, batch.digest, now),
            )

    def _apply_and_finish(
        self,
        db: Connection,
        claim: UnitClaim,
        rows: Sequence[DecodedRow],
        failures: Sequence[FailedRow],
        state: tuple[dict[str, ProfileState], dict[str, list[Tombstone]], dict[str, str]],
        writer: RowWriter,
        max_profile_bytes: int,
        now: int,
        through_line: int | None = None,
    ) -> Counts:
        """Apply a unit's rows (given the stored ``existing, tombstones, aliases``), then
        record its failures and counts: the part of applying a unit both backends share."""
        existing, tombstones, aliases = state
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
            db, claim, consumed, counts, [*failures, *size_failures], now, through_line
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
                self._sql(
                    "INSERT INTO batch_failures (batch_seq, line, id, reason, raw) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (batch_seq, line) DO UPDATE "
                    "SET id = excluded.id, reason = excluded.reason, raw = excluded.raw"
                ),
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
        done = through_line is None
        # Progress never moves back (an empty part may name an earlier line).
        finish = (
            ("state = 'done', body = NULL, finished_at = ?", (now,))
            if through_line is None
            else (
                "applied_through = CASE WHEN applied_through > ? THEN applied_through ELSE ? END",
                (through_line, through_line),
            )
        )
        db.execute(
            self._sql(
                "UPDATE batch_units SET consumed = consumed + ?, successful = successful + ?, "
                f"not_found = not_found + ?, failed = failed + ?, last_error = NULL, {finish[0]} "
                "WHERE batch_seq = ? AND unit_no = ?"
            ),
            (
                counts.consumed,
                counts.successful,
                counts.not_found,
                counts.failed,
                *finish[1],
                claim.batch_seq,
                claim.unit_no,
            ),
        )
        if not done:
            db.execute(
                self._sql("UPDATE batches SET last_progress_at = ? WHERE seq = ?"),
                (now, claim.batch_seq),
            )
            return counts
        self._unit_done(db, claim)
        # Locked before counting, so that of two last units finishing at once the
        # second sees the first one done and marks the batch finished.
        self._lock_batch(db, claim.batch_seq)
        db.execute(
            self._sql(
                "UPDATE batches SET last_progress_at = ?, finished_at = CASE WHEN EXISTS ("
                " SELECT 1 FROM batch_units WHERE batch_seq = ? AND state <> 'done')"
                " THEN finished_at ELSE ? END WHERE seq = ?"
            ),
            (now, claim.batch_seq, now, claim.batch_seq),
        )
        return counts

    def _unit_done(self, db: Connection, claim: UnitClaim) -> None:
        """What else a backend drops once a unit is done (its lines are dropped above)."""
        return None  # nothing, unless the backend keeps the lines elsewhere (SQLite)

    def _recordable(self, text: str) -> str:
        """``text`` as the backend can store it in a text column (see PostgreSQL's)."""
        return text

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

    def _transient(self, error: BaseException) -> str | None:
        """The backend's part of ``transient_reason``: its driver's transient errors."""
        return None

    def _pace(
        self, db: Connection, claim: UnitClaim, paced: Mapping[int, int] | None, now: int
    ) -> None:
        """Move a paced client's next claim on by this unit's rows over its rate."""
        rate = (paced or {}).get(claim.client_id)
        if not rate:
            return
        pause = claim.row_count * 1000 // rate
        # not_before = max(not_before, now) + pause
        db.execute(
            self._sql(
                "INSERT INTO ingest_pacing (client_id, not_before) VALUES (?, ?) "
                "ON CONFLICT (client_id) DO UPDATE SET not_before = CASE "
                "WHEN ingest_pacing.not_before + ? > excluded.not_before "
                "THEN ingest_pacing.not_before + ? ELSE excluded.not_before END"
            ),
            (claim.client_id, now + pause, pause, pause),
        )

    def recent_updates(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        return [
            ((int(minute) + 1) * MINUTE_MS, int(updates))
            for minute, updates in self._all(
                "SELECT minute, updates FROM update_counts WHERE client_id = ? AND minute >= ? "
                "ORDER BY minute",
                (client_id, since_ms // MINUTE_MS),
            )
        ]

    def release_unit(self, claim: UnitClaim, error: str, retry_at_ms: int) -> None:
        with self._write() as db:
            db.execute(
                self._sql(
                    "UPDATE batch_units SET state = 'pending', lease_owner = NULL, "
                    "lease_expires = NULL, not_before = ?, last_error = ? "
                    "WHERE batch_seq = ? AND unit_no = ? AND lease_owner = ? "
                    "AND state = 'running'"
                ),
                (retry_at_ms, error[:2000], claim.batch_seq, claim.unit_no, claim.owner),
            )

    def get_batch(self, client_id: int, batch_id: str) -> Batch | None:
        row = self._one(BATCH_STATUS, (client_id, batch_id))
        return None if row is None else batch_from_row(row)

    def units_summary(self, batch_seq: int, now_ms: int) -> UnitsSummary:
        with self._read() as db:
            pending, running, done, retrying, retry_at = db.execute(
                self._sql(
                    "SELECT count(CASE WHEN state = 'pending' THEN 1 END), "
                    "count(CASE WHEN state = 'running' THEN 1 END), "
                    "count(CASE WHEN state = 'done' THEN 1 END), "
                    "count(CASE WHEN state = 'pending' AND not_before > ? THEN 1 END), "
                    "min(CASE WHEN state = 'pending' AND not_before > ? THEN not_before END) "
                    "FROM batch_units WHERE batch_seq = ?"
                ),
                (now_ms, now_ms, batch_seq),
            ).fetchone()
            error = db.execute(
                self._sql(
                    "SELECT last_error FROM batch_units WHERE batch_seq = ? AND state <> 'done' "
                    "AND last_error IS NOT NULL ORDER BY attempts DESC, unit_no LIMIT 1"
                ),
                (batch_seq,),
            ).fetchone()
            ahead = db.execute(
                self._sql(
                    "SELECT count(*) FROM batch_units WHERE state <> 'done' AND batch_seq < ?"
                ),
                (batch_seq,),
            ).fetchone()[0]
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
        with self._read() as db:
            found = db.execute(
                self._sql(
                    "SELECT line, id, reason, raw FROM batch_failures "
                    "WHERE batch_seq = ? AND line > ? ORDER BY line LIMIT ?"
                ),
                (batch_seq, after_line, limit),
            ).fetchall()
        return [FailedRow(line, id_, reason, raw) for line, id_, reason, raw in found]

    # -- profiles ----------------------------------------------------------------------

    # -- profiles read ------------------------------------------------------------------

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[Connection]:
        """A connection inside a read-only transaction that sees one snapshot."""

    def get_profile(self, client_id: int, key: str, expire_before_ms: int = 0) -> Profile | None:
        # One snapshot: the profile, its ids and its provenance.
        with self._snapshot() as db:
            return read_profile(self, db, client_id, key, expire_before_ms)

    # -- profiles written at once -------------------------------------------------------

    @abstractmethod
    def _lock_for_write(self, db: Connection, client_id: int, keys: Sequence[str]) -> None:
        """Before a write that applies at once: order it among its client's writes and lock
        the profiles ``keys`` find."""

    def update_profile(
        self,
        client: Client,
        key: str,
        values: Mapping[str, str],
        now_ms: int,
        updates_per_day: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> UpdateOutcome | None:
        steps = self.steps
        with self._write() as db:
            self._lock_for_write(db, client.id, [key])
            stored = steps.live_key(db, client.id, key, expire_before_ms)
            if stored is None:
                return None
            pc_id = steps.pc_id_of(db, client.id, key, stored)
            if not values:
                return UpdateOutcome(pc_id, None)
            steps.take_update_quota(db, client, now_ms, updates_per_day)
            seq = steps.new_write(db, client.id, WriteKind.UPDATE, None, now_ms) * SEQ_SPAN + 1
            steps.apply_values(db, client.id, stored, values, seq, now_ms, max_profile_bytes)
        return UpdateOutcome(pc_id, seq)

    def visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> str:
        steps = self.steps
        tnt_key = KeyKind.PC_ID.key(visit.tnt_id)
        third_key = None
        if visit.third_party_id is not None:
            third_key = KeyKind.THIRD_PARTY_ID.key(visit.third_party_id)
        with self._write() as db:
            keys = [tnt_key, *([third_key] if third_key else []), *visit.aliases]
            self._lock_for_write(db, client_id, keys)
            tnt_profile = steps.live_key(db, client_id, tnt_key, expire_before_ms)
            third_exists = third_key is not None and (
                steps.live_key(db, client_id, third_key, expire_before_ms) == third_key
            )
            known = None
            if tnt_profile is None and third_key is None:
                found = (steps.live_key(db, client_id, a, expire_before_ms) for a in visit.aliases)
                known = next((key for key in found if key is not None), None)
            plan = plan_link(tnt_key, tnt_profile, third_key, third_exists, known)
            target = plan.target
            # The call's ECID and customerIds that do not find its profile yet.
            moved = [a for a in visit.aliases if steps.resolve(db, client_id, a) != target]
            if not plan.changes and not moved and not visit.values:
                steps.touch(db, client_id, target, now_ms)
                return target
            base = steps.new_write(db, client_id, WriteKind.DELIVERY, visit.request_id, now_ms)
            link_seq = base * SEQ_SPAN + 1
            if plan.create:
                db.execute(
                    self._sql(
                        "INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, "
                        "modified_at) VALUES (?, ?, '{}', ?, ?, ?)"
                    ),
                    (client_id, target, link_seq, link_seq, now_ms),
                )
            if plan.rename:
                db.execute(
                    self._sql("UPDATE profiles SET pkey = ? WHERE client_id = ? AND pkey = ?"),
                    (target, client_id, plan.rename),
                )
                db.execute(
                    self._sql("UPDATE identities SET pkey = ? WHERE client_id = ? AND pkey = ?"),
                    (target, client_id, plan.rename),
                )
            if plan.absorb:
                self._absorb(db, client_id, target, plan.absorb, link_seq)
            # The renamed or absorbed key stays an id of the profile (it differs from the
            # alias when T was itself an alias of an anonymous profile, through an ECID).
            gone = plan.rename or plan.absorb
            aliases = [plan.alias] if plan.alias else []
            aliases += [gone] if gone and gone != plan.alias else []
            for alias in [*aliases, *moved]:
                db.execute(
                    self._sql(
                        "INSERT INTO identities (client_id, alias, pkey, linked_seq) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (client_id, alias) DO UPDATE SET "
                        "pkey = excluded.pkey, linked_seq = excluded.linked_seq"
                    ),
                    (client_id, alias, target, link_seq),
                )
            if visit.values:
                steps.apply_values(
                    db, client_id, target, visit.values, link_seq + 1, now_ms, max_profile_bytes
                )
            else:
                steps.touch(db, client_id, target, now_ms)
        return target

    def _absorb(
        self, db: Connection, client_id: int, target: str, absorbed: str, link_seq: int
    ) -> None:
        """Merge profile ``absorbed`` into ``target`` (target's values win) and delete it."""
        (t_attrs, t_created, t_max), (a_attrs, a_created, a_max) = (
            db.execute(
                self._sql(
                    f"SELECT {self.steps.ATTRS_TEXT}, p.created_seq, p.max_seq FROM profiles p "
                    "WHERE p.client_id = ? AND p.pkey = ?"
                ),
                (client_id, key),
            ).fetchone()
            for key in (target, absorbed)
        )
        db.execute(
            self._sql(
                "UPDATE profiles SET attrs = ?, created_seq = ?, max_seq = ? "
                "WHERE client_id = ? AND pkey = ?"
            ),
            (
                absorb_attrs(t_attrs, a_attrs, link_seq),
                min(t_created, a_created),
                max(t_max, a_max, link_seq),
                client_id,
                target,
            ),
        )
        db.execute(
            self._sql("DELETE FROM profiles WHERE client_id = ? AND pkey = ?"),
            (client_id, absorbed),
        )
        db.execute(
            self._sql("UPDATE identities SET pkey = ? WHERE client_id = ? AND pkey = ?"),
            (target, client_id, absorbed),
        )

    def delete_profile(
        self, client_id: int, key: str, now_ms: int, expire_before_ms: int = 0
    ) -> bool:
        steps = self.steps
        with self._write() as db:
            self._lock_for_write(db, client_id, [key])
            stored = steps.live_key(db, client_id, key, expire_before_ms)
            keys = {key}
            created = None
            if stored is not None:
                created = db.execute(
                    self._sql("SELECT created_seq FROM profiles WHERE client_id = ? AND pkey = ?"),
                    (client_id, stored),
                ).fetchone()[0]
                keys.add(stored)
                keys.update(
                    alias
                    for (alias,) in db.execute(
                        self._sql("SELECT alias FROM identities WHERE client_id = ? AND pkey = ?"),
                        (client_id, stored),
                    ).fetchall()
                )
                for table in ("profiles", "identities"):
                    db.execute(
                        self._sql(f"DELETE FROM {table} WHERE client_id = ? AND pkey = ?"),
                        (client_id, stored),
                    )
            # Rows of batches still queued are older than this delete; without queued
            # batches no row can be, and no tombstone is needed.
            if steps.has_queued_rows(db, client_id):
                deleted_seq = steps.new_write(db, client_id, WriteKind.DELETE, None, now_ms)
                db.cursor().executemany(
                    self._sql(
                        "INSERT INTO tombstones (client_id, pkey, deleted_seq, deleted_at, "
                        "created_seq) VALUES (?, ?, ?, ?, ?)"
                    ),
                    [(client_id, k, deleted_seq * SEQ_SPAN, now_ms, created) for k in sorted(keys)],
                )
        return stored is not None

    def expire_profiles(self, client_id: int, before_ms: int) -> int:
        with self._write() as db:
            count = db.execute(
                self._sql("DELETE FROM profiles WHERE client_id = ? AND modified_at < ?"),
                (client_id, before_ms),
            ).rowcount
            if count:
                db.execute(
                    self._sql(
                        "DELETE FROM identities WHERE client_id = ? AND NOT EXISTS ("
                        "SELECT 1 FROM profiles p WHERE p.client_id = identities.client_id "
                        "AND p.pkey = identities.pkey)"
                    ),
                    (client_id,),
                )
        return int(count)

    # -- housekeeping ------------------------------------------------------------------

    def purge(self, older_than_ms: int) -> int:
        with self._write() as db:
            for table in ("batch_units", "batch_failures"):
                db.execute(
                    self._sql(f"DELETE FROM {table} WHERE batch_seq IN ({FINISHED_BEFORE})"),
                    (older_than_ms,),
                )
            # A key outlives its batch's status if need be: it answers retries for 24 hours.
            db.execute(
                self._sql("DELETE FROM idempotency_keys WHERE accepted_at < ?"),
                (min(older_than_ms, now_ms() - KEY_TTL_MS),),
            )
            db.execute(
                self._sql("DELETE FROM tokens WHERE expires_at < ? OR revoked_at < ?"),
                (older_than_ms, older_than_ms),
            )
            purged = db.execute(
                self._sql("DELETE FROM batches WHERE finished_at IS NOT NULL AND accepted_at < ?"),
                (older_than_ms,),
            ).rowcount
            # A tombstone matters only while a queued row of its client is older than it.
            db.execute(
                self._sql(
                    "DELETE FROM tombstones WHERE deleted_seq < coalesce(("
                    " SELECT min(u.batch_seq) FROM batch_units u JOIN batches b"
                    " ON b.seq = u.batch_seq WHERE u.state <> 'done'"
                    " AND b.client_id = tombstones.client_id) * ?, ?)"
                ),
                (SEQ_SPAN, 2**62),
            )
            # Counts a day older than the purge horizon are outside every 24-hour window.
            db.execute(
                self._sql("DELETE FROM update_counts WHERE minute < ?"),
                ((older_than_ms - DAY_MS) // MINUTE_MS,),
            )
            immediate = [str(k) for k in (WriteKind.UPDATE, WriteKind.DELIVERY, WriteKind.DELETE)]
            db.execute(
                self._sql("DELETE FROM writes WHERE kind IN (?, ?, ?) AND at < ?"),
                (*immediate, older_than_ms),
            )
        return int(purged)

    def pending_units(self) -> int:
        return int(self._one("SELECT count(*) FROM batch_units WHERE state <> 'done'", ())[0])


def read_profile(
    store: SharedQueries, db: Connection, client_id: int, key: str, expire_before_ms: int
) -> Profile | None:
    """The profile ``key`` finds, with its ids and provenance, as ``db``'s transaction sees it."""
    stored = store.steps.resolve(db, client_id, key)
    row = db.execute(
        store._sql(
            f"SELECT c.code, {store.steps.ATTRS_TEXT}, p.modified_at FROM profiles p "
            "JOIN clients c ON c.id = p.client_id "
            "WHERE p.client_id = ? AND p.pkey = ? AND p.modified_at >= ?"
        ),
        (client_id, stored, expire_before_ms),
    ).fetchone()
    if row is None:
        return None
    code, attrs_json, modified = row
    attrs = json.loads(attrs_json)
    ids = store.steps.ids_of(db, client_id, [stored])[stored]
    writes = store.steps.writes_of(db, write_numbers([attrs]))
    return build_profile(code, key, attrs, modified, ids, writes)


#: An export page stops once its profiles hold this much stored JSON (2000 KB profiles exist).
EXPORT_PAGE_CHARS = 8_000_000
#: Stored keys start with 'p:' or 't:' (';' follows ':'): the range of each export.
EXPORT_RANGES = {
    None: ("p:", "t;"),
    KeyKind.PC_ID: ("p:", "p;"),
    KeyKind.THIRD_PARTY_ID: ("t:", "t;"),
}


class SnapshotExport:
    """A read snapshot of one client's profiles on a connection of its own, page by page.

    ``begin`` starts the backend's snapshot transaction; keys are compared byte by byte
    on both backends, so pages come in the same order.
    """

    def __init__(
        self,
        store: SharedQueries,
        db: Connection,
        begin: str,
        client_id: int,
        kind: KeyKind | None,
        expire_before_ms: int,
    ) -> None:
        self.store, self.db, self.client_id = store, db, client_id
        # The web layer may close the snapshot while a page is still being read.
        self.lock = threading.Lock()
        self.closed = False
        low, high = EXPORT_RANGES[kind]
        self.params: tuple[Any, ...] = (client_id, low, high, expire_before_ms)
        # The snapshot starts with the first read and lasts until close().
        db.execute(begin)
        found = db.execute(store._sql("SELECT code FROM clients WHERE id = ?"), (client_id,))
        self.code = str(found.fetchone()[0])

    def pages(self, size: int) -> Iterator[list[Profile]]:
        after = ""
        while True:
            with self.lock:
                page = self._page(after, size)
            if not page:
                return
            after = page[-1].ids[0]
            yield page

    def _page(self, after: str, size: int) -> list[Profile]:
        if self.closed:
            return []
        steps = self.store.steps
        rows = []
        stored = 0
        for row in self.db.execute(
            self.store._sql(
                f"SELECT p.pkey, {steps.ATTRS_TEXT}, p.modified_at FROM profiles p "
                "WHERE p.client_id = ? AND p.pkey >= ? AND p.pkey < ? AND p.modified_at >= ? "
                "AND p.pkey > ? ORDER BY p.pkey LIMIT ?"
            ),
            (*self.params, after, size),
        ):
            rows.append(row)
            stored += len(row[1])
            if stored >= EXPORT_PAGE_CHARS:  # a page of large profiles ends early
                break
        documents = {pkey: json.loads(attrs) for pkey, attrs, _ in rows}
        ids = steps.ids_of(self.db, self.client_id, list(documents))
        writes = steps.writes_of(self.db, write_numbers(documents.values()))
        return [
            build_profile(self.code, pkey, documents[pkey], modified, ids[pkey], writes)
            for pkey, _, modified in rows
        ]

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.db.execute("COMMIT")
            except Exception:  # the connection broke: closing it ends the snapshot anyway
                pass
            self.db.close()
