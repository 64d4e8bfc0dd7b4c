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

from profilebase.errors import ConfigError, DatabaseUnavailable, StorageError, StorageFull
from profilebase.models import Counts, FailedRow, KeyKind, Limits
from profilebase.server.merge import (
    ProfileState,
    Tombstone,
    byte_size,
    group_tombstones,
    merge_attrs,
)
from profilebase.server.storage import migrations, sqlite_profiles
from profilebase.server.storage.base import DecodedRow, NewBatch, UnitClaim
from profilebase.server.storage.batch_control import BatchControl
from profilebase.server.storage.clients import ClientQueries
from profilebase.server.storage.queries import (
    V1_WAITS_FOR_EARLIER_BATCHES,
    Connection,
    SharedQueries,
    SnapshotExport,
    not_applied,
)
from profilebase.server.storage.records import claim_from_row
from profilebase.server.storage.sqlite_imports import SQLiteImports
from profilebase.server.storage.sqlite_profiles import (
    UPSERT_PROFILE,
    aliases_of,
    expire_keys,
    json_list,
)
from profilebase.server.storage.sqlite_tables import SQLiteTables

#: Retry-After of a refusal because another writer held the lock: it is usually soon free.
BUSY_RETRY = 2
#: SQLite result codes (primary, the low byte) that mean the file cannot be used right now.
UNUSABLE = {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_PERM,
}


def primary_code(exc: sqlite3.Error) -> int:
    """SQLite's primary result code of an error (SQLITE_IOERR for SQLITE_IOERR_WRITE)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def storage_error(exc: sqlite3.Error, path: str) -> StorageError | None:
    """The ``StorageError`` an SQLite error means, or None when it is no outage.

    Busy or locked past the busy timeout: ``DatabaseUnavailable`` (another writer held
    the database longer than ``database_timeout``). Read-only, unopenable, or an I/O
    error: ``DatabaseUnavailable`` too. Disk (or ``max_page_count``) full:
    ``StorageFull``. In every case the transaction was rolled back: nothing was written.
    """
    code = primary_code(exc)
    name = getattr(exc, "sqlite_errorname", "")
    detail = f"SQLite database {path}: {exc} ({name or 'no code'})"
    if code in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}:
        return DatabaseUnavailable(
            "The database is busy: another write held it longer than the server waits "
            "(database_timeout); nothing was changed. Try again in a few seconds.",
            retry_after=BUSY_RETRY,
            detail=detail,
        )
    if code == sqlite3.SQLITE_FULL:
        return StorageFull(detail=detail)
    if code in UNUSABLE:
        return DatabaseUnavailable(detail=detail)
    return None


#: SQLite's primary result codes of errors that may pass, with what the status says.
TRANSIENT_CODES = {
    sqlite3.SQLITE_BUSY: "the database was locked by another writer",
    sqlite3.SQLITE_LOCKED: "the database was locked by another writer",
    sqlite3.SQLITE_NOMEM: "the database ran out of memory",
    sqlite3.SQLITE_READONLY: "the database file could not be written",
    sqlite3.SQLITE_IOERR: "the database file could not be read or written",
    sqlite3.SQLITE_FULL: "the database had no room to write",
    sqlite3.SQLITE_CANTOPEN: "the database file could not be opened",
    sqlite3.SQLITE_PROTOCOL: "the database was locked by another writer",
}


#: Bytes a unit's body is written in through blob I/O.
BLOB_PIECE = 1 << 20


def write_body(db: sqlite3.Connection, batch_seq: int, unit_no: int, body: bytes) -> None:
    """Store a unit's lines piece by piece (sqlite3 would copy them whole to bind them)."""
    rowid = db.execute(
        "INSERT INTO unit_bodies (batch_seq, unit_no, body) VALUES (?, ?, zeroblob(?))",
        (batch_seq, unit_no, len(body)),
    ).lastrowid
    assert rowid is not None
    with db.blobopen("unit_bodies", "body", rowid) as blob:
        view = memoryview(body)
        for start in range(0, len(body), BLOB_PIECE):
            blob.write(view[start : start + BLOB_PIECE])


def read_body(db: sqlite3.Connection, batch_seq: int, unit_no: int) -> bytes:
    """A unit's lines, read straight into one bytes object."""
    found = db.execute(
        "SELECT rowid FROM unit_bodies WHERE batch_seq = ? AND unit_no = ?", (batch_seq, unit_no)
    ).fetchone()
    if found is None:  # kept in the unit's row, as before migration 0005?
        kept = db.execute(
            "SELECT body FROM batch_units WHERE batch_seq = ? AND unit_no = ?", (batch_seq, unit_no)
        ).fetchone()
        if kept is None or kept[0] is None:
            raise StorageError(f"The lines of unit {batch_seq}/{unit_no} are missing.")
        return bytes(kept[0])
    with db.blobopen("unit_bodies", "body", found[0], readonly=True) as blob:
        return blob.read()


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


class SQLiteStore(SQLiteTables, SQLiteImports, BatchControl, ClientQueries, SharedQueries):
    """A ``Store`` on one SQLite database file."""

    def _unit_body(self, db: Any, seq: int, unit_no: int, inline: Any) -> bytes:
        return bytes(inline) if inline else read_body(db, seq, unit_no)

    def _forget_unit_body(self, db: Any, seq: int, unit_no: int) -> None:
        db.execute("DELETE FROM unit_bodies WHERE batch_seq = ? AND unit_no = ?", (seq, unit_no))

    backend = "sqlite"
    steps = sqlite_profiles

    def __init__(self, path: str, synchronous: str = "NORMAL", timeout: float = 5.0) -> None:
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"Cannot create the directory for {path}: {exc}.") from None
        self.path = path
        self.synchronous = synchronous.upper()
        #: Seconds a transaction waits for the write lock before giving up (busy timeout).
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    # -- connections -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.timeout
            )
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(
                detail=f"cannot open SQLite database {self.path}: {exc}"
            ) from exc
        try:
            db.execute("PRAGMA page_size = 16384")  # only takes effect on a new file
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        except sqlite3.Error as exc:
            db.close()
            raise storage_error(exc, self.path) or DatabaseUnavailable(
                detail=f"cannot open SQLite database {self.path}: {exc}"
            ) from exc
        db.create_function("pb_merge", 2, merge_attrs, deterministic=True)
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection from the pool (threads come and go; connections stay few).

        An error that means the database cannot be used now becomes a ``StorageError``
        (``storage_error``); the connection it happened on is closed rather than kept
        if it may stay broken (opened read-only, or on a file that went away), so that
        service resumes by itself once the file is usable again.
        """
        with self._lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open()
        keep = True
        try:
            yield db
        except sqlite3.Error as exc:
            error = storage_error(exc, self.path)
            if error is None:
                raise
            keep = primary_code(exc) not in UNUSABLE
            raise error from exc
        finally:
            if db.in_transaction:  # never hand back a connection that holds a lock
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    keep = False
            with self._lock:
                if self._closed or not keep:
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
                    db.execute("ROLLBACK")  # an error here is translated by _read

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._read() as db:
            return db.execute(sql, params).fetchall()

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        with self._read() as db:  # hands the connection back rolled back
            db.execute("BEGIN")
            yield db

    def _lock_batch(self, db: Connection, batch_seq: int) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already made this the only writer."""

    def _lock_for_write(self, db: Connection, client_id: int, keys: Sequence[str]) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already made this the only writer."""

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

    def pending_migrations(self) -> list[str]:
        with self._read() as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            ).fetchone()
            rows = db.execute("SELECT version FROM schema_migrations") if found else []
            applied = [version for (version,) in rows]
        return [m.file_name for m in migrations.pending("sqlite", applied)]

    def migrate(self) -> list[str]:
        if not self.pending_migrations():
            return []  # nothing to write: a read-only file still serves reads
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
                applied.append(migration.file_name)
        return applied

    # -- batches -----------------------------------------------------------------------

    def accept_batch(self, batch: NewBatch, now_ms: int, limits: Limits) -> tuple[int, str]:
        with self._write() as db:
            earlier = self._replayed(db, batch)
            if earlier is not None:
                return earlier
            seq, batch_id = self._take_seq(db, batch, now_ms, limits)
            units = 0
            for unit_no, unit in enumerate(batch.units):
                db.execute(
                    "INSERT INTO batch_units (batch_seq, unit_no, first_line, row_count) "
                    "VALUES (?, ?, ?, ?)",
                    (seq, unit_no, unit.first_line, unit.row_count),
                )
                write_body(db, seq, unit_no, unit.body)
                units += 1
            self._record_batch(db, seq, batch_id, batch, units, now_ms)
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
                # v1 rows depend on which profiles exist at their seq (merge.py).
                f" AND {V1_WAITS_FOR_EARLIER_BATCHES}"
                # A paced client's units wait for its not_before.
                "  AND NOT EXISTS (SELECT 1 FROM ingest_pacing p"
                "   WHERE p.client_id = b.client_id AND p.not_before > ?"
                "   AND p.client_id IN (SELECT value FROM json_each(?)))"
                " ORDER BY u.batch_seq, u.unit_no LIMIT 1) "
                "RETURNING batch_seq, unit_no, first_line, row_count, attempts",
                (owner, now_ms + lease_ms, now_ms, now_ms, now_ms, json.dumps(list(paced))),
            ).fetchone()
            if found is None:
                return None
            batch = db.execute(
                "SELECT b.client_id, b.version, b.key_kind, b.header, c.limits "
                "FROM batches b JOIN clients c ON c.id = b.client_id WHERE b.seq = ?",
                (found[0],),
            ).fetchone()
            db.execute(
                "UPDATE batches SET started_at = coalesce(started_at, ?) WHERE seq = ?",
                (now_ms, found[0]),
            )
            seq, unit_no, first_line, row_count, attempts = found
            body = read_body(db, seq, unit_no)
            claim = claim_from_row(
                (seq, unit_no, first_line, row_count, body, attempts, *batch), owner
            )
            self._pace(db, claim, paced, now_ms)
        return claim

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
        prefix = claim.key_kind.prefix
        row_keys = sorted({prefix + row.id for row in rows})
        keys = json_list(row_keys)
        with self._write() as db:
            ours = db.execute(
                "SELECT applied_through FROM batch_units WHERE batch_seq = ? AND unit_no = ? "
                "AND state = 'running' AND lease_owner = ?",
                (claim.batch_seq, claim.unit_no, claim.owner),
            ).fetchone()
            if ours is None:
                return None
            if ours[0] is not None:  # an earlier part applied the lines up to ours[0]
                rows, failures = not_applied(rows, failures, ours[0])
                row_keys = sorted({prefix + row.id for row in rows})
                keys = json_list(row_keys)
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
                tombstones = group_tombstones(
                    db.execute(
                        "SELECT pkey, deleted_seq, created_seq FROM tombstones "
                        "WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?)) "
                        "ORDER BY pkey, deleted_seq",
                        (claim.client_id, keys),
                    )
                )
            writer = _Writer(db, claim.client_id, now_ms)
            return self._apply_and_finish(
                db,
                claim,
                rows,
                failures,
                (existing, tombstones, aliases),
                writer,
                max_profile_bytes,
                now_ms,
                through_line,
            )

    def _unit_done(self, db: Connection, claim: UnitClaim) -> None:
        db.execute(
            "DELETE FROM unit_bodies WHERE batch_seq = ? AND unit_no = ?",
            (claim.batch_seq, claim.unit_no),
        )

    def _transient(self, error: BaseException) -> str | None:
        """SQLite's errors that waiting cures: a lock held too long, the file unreadable
        or unwritable for now, the disk full, memory short."""
        if not isinstance(error, sqlite3.Error):
            return None
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the primary result code
        return TRANSIENT_CODES.get(code)

    # -- profiles ----------------------------------------------------------------------

    def open_export(
        self, client_id: int, kind: KeyKind | None = None, expire_before_ms: int = 0
    ) -> SnapshotExport:
        return SnapshotExport(self, self._open(), "BEGIN", client_id, kind, expire_before_ms)
