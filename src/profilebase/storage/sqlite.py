"""The embedded backend: one SQLite file in WAL mode, one connection per thread.

SQLite has one writer at a time; every write transaction starts with
``BEGIN IMMEDIATE`` so that readers never block and writers queue on the
busy timeout instead of failing. Unit decoding happens outside transactions,
so the write lock is held only for the database work itself.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from profilebase.errors import ConfigError
from profilebase.models import (
    DAY_MS,
    SEQ_SPAN,
    Batch,
    BatchState,
    Client,
    Counts,
    FailedRow,
    KeyKind,
    Limits,
    Profile,
    WriteKind,
    from_ms,
)
from profilebase.storage import migrations, quota
from profilebase.storage.base import (
    DecodedRow,
    NewBatch,
    UnitClaim,
    UnitsSummary,
    UpdateOutcome,
    Visit,
)
from profilebase.storage.idempotency import KEY_TTL_MS, replay
from profilebase.storage.links import plan_link
from profilebase.storage.merge import ProfileState, Tombstone, apply_rows, byte_size, merge_attrs
from profilebase.storage.records import build_profile, write_numbers
from profilebase.storage.sqlite_clients import SQLiteClients
from profilebase.storage.sqlite_profiles import (
    MINUTE_MS,
    UPSERT_PROFILE,
    SQLiteExport,
    absorb,
    aliases_of,
    apply_values,
    expire_keys,
    has_queued_rows,
    json_list,
    live_key,
    new_write,
    pc_id_of,
    resolve,
    take_update_quota,
    touch,
    writes_of,
)


class _Writer:
    """Buffers profile upserts of one unit and flushes them with executemany."""

    def __init__(self, db: sqlite3.Connection, client_id: int, now_ms: int) -> None:
        self.db, self.client_id, self.now_ms = db, client_id, now_ms
        self.pending: list[tuple[int, str, str, int, int, int]] = []

    def write(self, key: str, row: DecodedRow, create: bool) -> None:
        self.pending.append((self.client_id, key, row.attrs, row.seq, row.seq, self.now_ms))

    def write_all(self, rows: Sequence[DecodedRow], prefix: str) -> None:
        """Bind the decoded rows as they are: client, prefix and time are literals here."""
        self.flush()
        sql = UPSERT_PROFILE.replace(
            "VALUES (?, ?, ?, ?, ?, ?)",
            f"VALUES ({int(self.client_id)}, '{prefix}' || ?2, ?4, ?3, ?3, {int(self.now_ms)})",
        )
        self.db.executemany(sql, rows)

    def flush(self) -> None:
        if self.pending:
            self.db.executemany(UPSERT_PROFILE, self.pending)
            self.pending = []

    def tombstone_created(self, key: str, deleted_seq: int, created_seq: int) -> None:
        self.db.execute(
            "UPDATE tombstones SET created_seq = ? "
            "WHERE client_id = ? AND pkey = ? AND deleted_seq = ?",
            (created_seq, self.client_id, key, deleted_seq),
        )

    def merged_size(self, key: str, row: DecodedRow) -> int:
        self.flush()
        found = self.db.execute(
            "SELECT attrs FROM profiles WHERE client_id = ? AND pkey = ?", (self.client_id, key)
        ).fetchone()
        return byte_size(row.attrs if found is None else merge_attrs(found[0], row.attrs))


class SQLiteStore(SQLiteClients):
    """A ``Store`` on one SQLite database file."""

    backend = "sqlite"

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"Cannot create the directory for {path}: {exc}.") from None
        self.path = path
        self.synchronous = synchronous.upper()
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    # -- connections -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        except sqlite3.Error as exc:
            raise ConfigError(f"Cannot open SQLite database {self.path}: {exc}.") from None
        db.execute("PRAGMA page_size = 16384")  # only takes effect on a new file
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.execute("PRAGMA busy_timeout = 60000")
        db.create_function("pb_merge", 2, merge_attrs, deterministic=True)
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection from the pool (threads come and go; connections stay few)."""
        with self._lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open()
        try:
            yield db
        finally:
            if db.in_transaction:  # never hand back a connection that holds a lock
                db.execute("ROLLBACK")
            with self._lock:
                if self._closed:
                    db.close()
                else:
                    self._idle.append(db)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE, COMMIT on success, ROLLBACK otherwise."""
        with self._read() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")

    def _one(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        with self._read() as db:
            return db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._read() as db:
            return db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            try:
                db.close()
            except sqlite3.Error:
                pass

    # -- schema --------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        with self._read() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        applied = []
        for migration in migrations.load("sqlite"):
            with self._write() as tx:
                done = tx.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
                ).fetchone()
                if done:
                    continue
                for statement in migrations.split_statements(migration.sql):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, datetime('now'))",
                    (migration.version, migration.name),
                )
                applied.append(f"{migration.version:04d}_{migration.name}")
        return applied

    # -- batches -----------------------------------------------------------------------

    def rows_accepted_since(self, client_id: int, since_ms: int) -> int:
        row = self._one(
            "SELECT coalesce(sum(batch_size), 0) FROM batches "
            "WHERE client_id = ? AND accepted_at >= ?",
            (client_id, since_ms),
        )
        return int(row[0])

    def recent_batches(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        with self._read() as db:
            return self._recent(db, client_id, since_ms)

    @staticmethod
    def _recent(db: sqlite3.Connection, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        return [
            (int(at), int(size))
            for at, size in db.execute(
                "SELECT accepted_at, batch_size FROM batches "
                "WHERE client_id = ? AND accepted_at > ? ORDER BY accepted_at",
                (client_id, since_ms),
            )
        ]

    def accept_batch(self, batch: NewBatch, now_ms: int, limits: Limits) -> tuple[int, str]:
        client = batch.client
        with self._write() as db:
            if batch.idempotency_key is not None:
                earlier = db.execute(
                    "SELECT batch_seq, batch_id, digest FROM idempotency_keys "
                    "WHERE client_id = ? AND key = ?",
                    (client.id, batch.idempotency_key),
                ).fetchone()
                if earlier is not None:
                    return replay(earlier, batch)
            recent = self._recent(db, client.id, now_ms - DAY_MS)
            quota.check_batch(client.code, recent, batch.batch_size, limits, now_ms)
            seq = db.execute(
                "INSERT INTO writes (client_id, kind, at) VALUES (?, 'batch', ?)",
                (client.id, now_ms),
            ).lastrowid
            assert seq is not None
            batch_id = f"{client.code}-{now_ms}-{seq}"
            db.execute("UPDATE writes SET ref = ? WHERE seq = ?", (batch_id, seq))
            units = 0
            for unit_no, unit in enumerate(batch.units):
                db.execute(
                    "INSERT INTO batch_units (batch_seq, unit_no, first_line, row_count, body) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (seq, unit_no, unit.first_line, unit.row_count, unit.body),
                )
                units += 1
            db.execute(
                "INSERT INTO batches (seq, batch_id, client_id, version, key_kind, header, "
                "batch_size, units_total, accepted_at, started_at, finished_at, last_progress_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    batch_id,
                    client.id,
                    batch.version,
                    str(batch.key_kind),
                    json.dumps(list(batch.names)),
                    batch.batch_size,
                    units,
                    now_ms,
                    now_ms if units == 0 else None,
                    now_ms if units == 0 else None,
                    now_ms,
                ),
            )
            if batch.idempotency_key is not None:
                db.execute(
                    "INSERT INTO idempotency_keys "
                    "(client_id, key, batch_seq, batch_id, digest, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (client.id, batch.idempotency_key, seq, batch_id, batch.digest, now_ms),
                )
        return seq, batch_id

    def claim_unit(
        self, owner: str, now_ms: int, lease_ms: int, paced: Mapping[int, int] | None = None
    ) -> UnitClaim | None:
        paced = paced or {}
        with self._write() as db:
            found = db.execute(
                "UPDATE batch_units SET state = 'running', lease_owner = ?, lease_expires = ?, "
                "attempts = attempts + 1 WHERE rowid = ("
                " SELECT u.rowid FROM batch_units u JOIN batches b ON b.seq = u.batch_seq"
                " WHERE u.state <> 'done' AND ("
                "  (u.state = 'pending' AND u.not_before <= ?) OR"
                "  (u.state = 'running' AND u.lease_expires < ?))"
                # v1 rows depend on which profiles exist at their seq, so a v1 unit
                # waits until every earlier batch of its client is done.
                "  AND (b.version >= 2 OR NOT EXISTS ("
                "   SELECT 1 FROM batch_units e JOIN batches eb ON eb.seq = e.batch_seq"
                "   WHERE eb.client_id = b.client_id AND e.batch_seq < u.batch_seq"
                "   AND e.state <> 'done'))"
                # A paced client's units wait for its not_before.
                "  AND NOT EXISTS (SELECT 1 FROM ingest_pacing p"
                "   WHERE p.client_id = b.client_id AND p.not_before > ?"
                "   AND p.client_id IN (SELECT value FROM json_each(?)))"
                " ORDER BY u.batch_seq, u.unit_no LIMIT 1) "
                "RETURNING batch_seq, unit_no, first_line, row_count, body, attempts",
                (owner, now_ms + lease_ms, now_ms, now_ms, now_ms, json.dumps(list(paced))),
            ).fetchone()
            if found is None:
                return None
            batch_seq, unit_no, first_line, row_count, body, attempts = found
            client_id, version, key_kind, header, limits = db.execute(
                "SELECT b.client_id, b.version, b.key_kind, b.header, c.limits "
                "FROM batches b JOIN clients c ON c.id = b.client_id WHERE b.seq = ?",
                (batch_seq,),
            ).fetchone()
            db.execute(
                "UPDATE batches SET started_at = coalesce(started_at, ?) WHERE seq = ?",
                (now_ms, batch_seq),
            )
            rate = paced.get(client_id)
            if rate:
                pause = row_count * 1000 // rate
                # not_before = max(not_before, now) + pause, in SQL both backends speak.
                db.execute(
                    "INSERT INTO ingest_pacing (client_id, not_before) VALUES (?, ?) "
                    "ON CONFLICT (client_id) DO UPDATE SET not_before = CASE "
                    "WHEN ingest_pacing.not_before + ? > excluded.not_before "
                    "THEN ingest_pacing.not_before + ? ELSE excluded.not_before END",
                    (client_id, now_ms + pause, pause, pause),
                )
        return UnitClaim(
            batch_seq=batch_seq,
            unit_no=unit_no,
            first_line=first_line,
            row_count=row_count,
            body=bytes(body),
            client_id=client_id,
            version=version,
            key_kind=KeyKind(key_kind),
            names=tuple(json.loads(header)),
            owner=owner,
            attempts=attempts,
            client_limits=json.loads(limits),
        )

    def apply_unit(
        self,
        claim: UnitClaim,
        rows: Sequence[DecodedRow],
        failures: Sequence[FailedRow],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> Counts | None:
        prefix = claim.key_kind.prefix
        row_keys = sorted({prefix + row.id for row in rows})
        keys = json_list(row_keys)
        with self._write() as db:
            ours = db.execute(
                "SELECT 1 FROM batch_units WHERE batch_seq = ? AND unit_no = ? "
                "AND state = 'running' AND lease_owner = ?",
                (claim.batch_seq, claim.unit_no, claim.owner),
            ).fetchone()
            if ours is None:
                return None
            aliases: dict[str, str] = {}
            stored_keys = keys
            # Like tombstones below: one cheap check keeps clients without links fast.
            if db.execute(
                "SELECT 1 FROM identities WHERE client_id = ? LIMIT 1", (claim.client_id,)
            ).fetchone():
                aliases = aliases_of(db, claim.client_id, keys)
                stored_keys = json_list(sorted({aliases.get(k, k) for k in row_keys}))
            if expire_before_ms:
                expired = expire_keys(db, claim.client_id, stored_keys, expire_before_ms)
                aliases = {k: v for k, v in aliases.items() if v not in expired}
            existing = {
                pkey: ProfileState(created, latest, size)
                for pkey, created, latest, size in db.execute(
                    "SELECT pkey, created_seq, max_seq, length(CAST(attrs AS BLOB)) "
                    "FROM profiles WHERE client_id = ? AND pkey IN "
                    "(SELECT value FROM json_each(?))",
                    (claim.client_id, stored_keys),
                )
            }
            tombstones: dict[str, list[Tombstone]] = {}
            if db.execute(
                "SELECT 1 FROM tombstones WHERE client_id = ? LIMIT 1", (claim.client_id,)
            ).fetchone():
                for pkey, deleted, created in db.execute(
                    "SELECT pkey, deleted_seq, created_seq FROM tombstones "
                    "WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?)) "
                    "ORDER BY pkey, deleted_seq",
                    (claim.client_id, keys),
                ):
                    tombstones.setdefault(pkey, []).append(Tombstone(deleted, created))
            writer = _Writer(db, claim.client_id, now_ms)
            counts, size_failures = apply_rows(
                rows,
                prefix,
                claim.version >= 2,
                existing,
                tombstones,
                max_profile_bytes,
                writer,
                aliases,
            )
            writer.flush()
            all_failures = list(failures) + size_failures
            db.executemany(
                "INSERT OR REPLACE INTO batch_failures (batch_seq, line, id, reason, raw) "
                "VALUES (?, ?, ?, ?, ?)",
                [(claim.batch_seq, f.line, f.id, f.reason, f.raw) for f in all_failures],
            )
            counts = Counts(
                consumed=len(rows) + len(failures),
                successful=counts.successful,
                not_found=counts.not_found,
                failed=len(all_failures),
            )
            db.execute(
                "UPDATE batch_units SET state = 'done', body = NULL, consumed = ?, "
                "successful = ?, not_found = ?, failed = ?, finished_at = ?, last_error = NULL "
                "WHERE batch_seq = ? AND unit_no = ?",
                (
                    counts.consumed,
                    counts.successful,
                    counts.not_found,
                    counts.failed,
                    now_ms,
                    claim.batch_seq,
                    claim.unit_no,
                ),
            )
            remaining = db.execute(
                "SELECT count(*) FROM batch_units WHERE batch_seq = ? AND state <> 'done'",
                (claim.batch_seq,),
            ).fetchone()[0]
            db.execute(
                "UPDATE batches SET last_progress_at = ?, "
                "finished_at = CASE WHEN ? = 0 THEN ? ELSE finished_at END WHERE seq = ?",
                (now_ms, remaining, now_ms, claim.batch_seq),
            )
        return counts

    def release_unit(self, claim: UnitClaim, error: str, retry_at_ms: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE batch_units SET state = 'pending', lease_owner = NULL, "
                "lease_expires = NULL, not_before = ?, last_error = ? "
                "WHERE batch_seq = ? AND unit_no = ? AND lease_owner = ? AND state = 'running'",
                (retry_at_ms, error[:2000], claim.batch_seq, claim.unit_no, claim.owner),
            )

    def get_batch(self, client_id: int, batch_id: str) -> Batch | None:
        row = self._one(
            "SELECT b.seq, b.batch_id, b.client_id, c.code, b.version, b.key_kind, "
            "b.batch_size, b.units_total, b.accepted_at, b.started_at, b.finished_at, "
            "(SELECT e.last_progress_at FROM batches e WHERE e.seq <= b.seq "
            " ORDER BY e.last_progress_at DESC LIMIT 1), b.header, "
            "coalesce(sum(u.consumed), 0), coalesce(sum(u.successful), 0), "
            "coalesce(sum(u.not_found), 0), coalesce(sum(u.failed), 0), "
            "coalesce(sum(u.state = 'done'), 0), "
            "(SELECT not_before FROM ingest_pacing p WHERE p.client_id = b.client_id) "
            "FROM batches b JOIN clients c ON c.id = b.client_id "
            "LEFT JOIN batch_units u ON u.batch_seq = b.seq "
            "WHERE b.client_id = ? AND b.batch_id = ? GROUP BY b.seq",
            (client_id, batch_id),
        )
        if row is None:
            return None
        (seq, bid, cid, code, version, kind, size, total, accepted, started, finished,
         progress, header, consumed, successful, not_found, failed, done,
         paced_until) = row  # fmt: skip
        if finished is not None:
            state = BatchState.COMPLETE
        elif started is not None:
            state = BatchState.PROCESSING
        else:
            state = BatchState.QUEUED
        return Batch(
            seq=seq,
            batch_id=bid,
            client_id=cid,
            client_code=code,
            version=version,
            key_kind=KeyKind(kind),
            batch_size=size,
            state=state,
            counts=Counts(consumed, successful, not_found, failed),
            accepted_at=from_ms(accepted),
            started_at=None if started is None else from_ms(started),
            finished_at=None if finished is None else from_ms(finished),
            last_progress_at=from_ms(progress),
            units_total=total,
            units_done=done,
            names=tuple(json.loads(header)),
            throttled_until=None if paced_until is None else from_ms(paced_until),
        )

    def units_summary(self, batch_seq: int, now_ms: int) -> UnitsSummary:
        with self._read() as db:
            pending, running, done, retrying, retry_at = db.execute(
                "SELECT coalesce(sum(state = 'pending'), 0), "
                "coalesce(sum(state = 'running'), 0), coalesce(sum(state = 'done'), 0), "
                "coalesce(sum(state = 'pending' AND not_before > ?), 0), "
                "min(CASE WHEN state = 'pending' AND not_before > ? THEN not_before END) "
                "FROM batch_units WHERE batch_seq = ?",
                (now_ms, now_ms, batch_seq),
            ).fetchone()
            error = db.execute(
                "SELECT last_error FROM batch_units WHERE batch_seq = ? AND state <> 'done' "
                "AND last_error IS NOT NULL ORDER BY attempts DESC, unit_no LIMIT 1",
                (batch_seq,),
            ).fetchone()
            ahead = db.execute(
                "SELECT count(*) FROM batch_units WHERE state <> 'done' AND batch_seq < ?",
                (batch_seq,),
            ).fetchone()[0]
        return UnitsSummary(
            pending=pending,
            running=running,
            done=done,
            retrying=retrying,
            retry_at_ms=retry_at,
            last_error=None if error is None else error[0],
            units_ahead=ahead,
        )

    def failed_rows(self, batch_seq: int, after_line: int = 0, limit: int = 1000) -> list[FailedRow]:
        return [
            FailedRow(line, id_, reason, raw)
            for line, id_, reason, raw in self._all(
                "SELECT line, id, reason, raw FROM batch_failures "
                "WHERE batch_seq = ? AND line > ? ORDER BY line LIMIT ?",
                (batch_seq, after_line, limit),
            )
        ]

    # -- profiles ----------------------------------------------------------------------

    def get_profile(self, client_id: int, key: str, expire_before_ms: int = 0) -> Profile | None:
        # One read transaction: the profile, its ids and its provenance from one snapshot.
        with self._read() as db:
            db.execute("BEGIN")
            stored = resolve(db, client_id, key)
            row = db.execute(
                "SELECT c.code, p.attrs, p.modified_at FROM profiles p "
                "JOIN clients c ON c.id = p.client_id "
                "WHERE p.client_id = ? AND p.pkey = ? AND p.modified_at >= ?",
                (client_id, stored, expire_before_ms),
            ).fetchone()
            if row is None:
                return None
            code, attrs_json, modified = row
            attrs = json.loads(attrs_json)
            ids = [stored] + [
                alias
                for (alias,) in db.execute(
                    "SELECT alias FROM identities WHERE client_id = ? AND pkey = ? "
                    "ORDER BY linked_seq",
                    (client_id, stored),
                )
            ]
            writes = writes_of(db, write_numbers([attrs]))
        return build_profile(code, key, attrs, modified, ids, writes)

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
        with self._write() as db:
            stored = live_key(db, client.id, key, expire_before_ms)
            if stored is None:
                return None
            pc_id = pc_id_of(db, client.id, key, stored)
            if not values:
                return UpdateOutcome(pc_id, None)
            take_update_quota(db, client, now_ms, updates_per_day)
            seq = new_write(db, client.id, WriteKind.UPDATE, None, now_ms) * SEQ_SPAN + 1
            apply_values(db, client.id, stored, values, seq, now_ms, max_profile_bytes)
        return UpdateOutcome(pc_id, seq)

    def recent_updates(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        return [
            ((int(minute) + 1) * MINUTE_MS, int(updates))
            for minute, updates in self._all(
                "SELECT minute, updates FROM update_counts WHERE client_id = ? AND minute >= ? "
                "ORDER BY minute",
                (client_id, since_ms // MINUTE_MS),
            )
        ]

    def visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> str:
        tnt_key = KeyKind.PC_ID.key(visit.tnt_id)
        third_key = None
        if visit.third_party_id is not None:
            third_key = KeyKind.THIRD_PARTY_ID.key(visit.third_party_id)
        with self._write() as db:
            tnt_profile = live_key(db, client_id, tnt_key, expire_before_ms)
            third_exists = third_key is not None and (
                live_key(db, client_id, third_key, expire_before_ms) == third_key
            )
            plan = plan_link(tnt_key, tnt_profile, third_key, third_exists)
            target = plan.target
            if not plan.changes and not visit.values:
                touch(db, client_id, target, now_ms)
                return target
            base = new_write(db, client_id, WriteKind.DELIVERY, visit.request_id, now_ms)
            link_seq = base * SEQ_SPAN + 1
            if plan.create:
                db.execute(
                    "INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, "
                    "modified_at) VALUES (?, ?, '{}', ?, ?, ?)",
                    (client_id, target, link_seq, link_seq, now_ms),
                )
            if plan.rename:
                db.execute(
                    "UPDATE profiles SET pkey = ? WHERE client_id = ? AND pkey = ?",
                    (target, client_id, plan.rename),
                )
            if plan.absorb:
                absorb(db, client_id, target, plan.absorb, link_seq)
            if plan.alias:
                db.execute(
                    "INSERT INTO identities (client_id, alias, pkey, linked_seq) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (client_id, alias) DO UPDATE SET "
                    "pkey = excluded.pkey, linked_seq = excluded.linked_seq",
                    (client_id, plan.alias, target, link_seq),
                )
            if visit.values:
                apply_values(
                    db, client_id, target, visit.values, link_seq + 1, now_ms, max_profile_bytes
                )
            else:
                touch(db, client_id, target, now_ms)
        return target

    def delete_profile(
        self, client_id: int, key: str, now_ms: int, expire_before_ms: int = 0
    ) -> bool:
        with self._write() as db:
            stored = live_key(db, client_id, key, expire_before_ms)
            keys = {key}
            created = None
            if stored is not None:
                created = db.execute(
                    "SELECT created_seq FROM profiles WHERE client_id = ? AND pkey = ?",
                    (client_id, stored),
                ).fetchone()[0]
                keys.add(stored)
                keys.update(
                    alias
                    for (alias,) in db.execute(
                        "SELECT alias FROM identities WHERE client_id = ? AND pkey = ?",
                        (client_id, stored),
                    )
                )
                db.execute(
                    "DELETE FROM profiles WHERE client_id = ? AND pkey = ?", (client_id, stored)
                )
                db.execute(
                    "DELETE FROM identities WHERE client_id = ? AND pkey = ?", (client_id, stored)
                )
            # Rows of batches still queued are older than this delete; without queued
            # batches no row can be, and no tombstone is needed.
            if has_queued_rows(db, client_id):
                deleted_seq = new_write(db, client_id, WriteKind.DELETE, None, now_ms)
                db.executemany(
                    "INSERT INTO tombstones (client_id, pkey, deleted_seq, deleted_at, "
                    "created_seq) VALUES (?, ?, ?, ?, ?)",
                    [
                        (client_id, k, deleted_seq * SEQ_SPAN, now_ms, created)
                        for k in sorted(keys)
                    ],
                )
        return stored is not None

    def open_export(
        self, client_id: int, kind: KeyKind | None = None, expire_before_ms: int = 0
    ) -> SQLiteExport:
        return SQLiteExport(self._open(), client_id, kind, expire_before_ms)

    def expire_profiles(self, client_id: int, before_ms: int) -> int:
        with self._write() as db:
            count = db.execute(
                "DELETE FROM profiles WHERE client_id = ? AND modified_at < ?",
                (client_id, before_ms),
            ).rowcount
            if count:
                db.execute(
                    "DELETE FROM identities WHERE client_id = ? AND NOT EXISTS ("
                    "SELECT 1 FROM profiles p WHERE p.client_id = identities.client_id "
                    "AND p.pkey = identities.pkey)",
                    (client_id,),
                )
        return int(count)

    # -- housekeeping ------------------------------------------------------------------

    def purge(self, older_than_ms: int) -> int:
        with self._write() as db:
            old = "SELECT seq FROM batches WHERE finished_at IS NOT NULL AND accepted_at < ?"
            db.execute(f"DELETE FROM batch_units WHERE batch_seq IN ({old})", (older_than_ms,))
            db.execute(f"DELETE FROM batch_failures WHERE batch_seq IN ({old})", (older_than_ms,))
            db.execute(
                "DELETE FROM idempotency_keys WHERE accepted_at < min(?, "
                "CAST(strftime('%s', 'now') AS INTEGER) * 1000 - ?)",
                (older_than_ms, KEY_TTL_MS),
            )
            db.execute(
                "DELETE FROM tokens WHERE expires_at < ? OR revoked_at < ?",
                (older_than_ms, older_than_ms),
            )
            purged = db.execute(
                "DELETE FROM batches WHERE finished_at IS NOT NULL AND accepted_at < ?",
                (older_than_ms,),
            ).rowcount
            # A tombstone matters only while a queued row of its client is older than it.
            db.execute(
                "DELETE FROM tombstones WHERE deleted_seq < coalesce(("
                " SELECT min(u.batch_seq) FROM batch_units u JOIN batches b"
                " ON b.seq = u.batch_seq WHERE u.state <> 'done'"
                " AND b.client_id = tombstones.client_id), 1 << 62) * ?",
                (SEQ_SPAN,),
            )
            # Counts a day older than the purge horizon are outside every 24-hour window.
            db.execute(
                "DELETE FROM update_counts WHERE minute < ?",
                ((older_than_ms - DAY_MS) // MINUTE_MS,),
            )
            immediate = [str(k) for k in (WriteKind.UPDATE, WriteKind.DELIVERY, WriteKind.DELETE)]
            db.execute(
                "DELETE FROM writes WHERE kind IN (?, ?, ?) AND at < ?",
                (*immediate, older_than_ms),
            )
            return int(purged)

    def pending_units(self) -> int:
        return int(
            self._one("SELECT count(*) FROM batch_units WHERE state <> 'done'")[0]
        )
