"""The shared backend: PostgreSQL through psycopg 3 and a connection pool.

Any number of server and worker processes on any number of machines share one
database, and the database is the only thing they coordinate through:

- A worker claims a unit with ``FOR UPDATE SKIP LOCKED`` and a lease; one that
  dies loses its lease and another worker takes the unit over. Applying a unit
  first locks its unit row and checks the lease, so a worker that was taken
  over can never commit beside the new owner.
- A client's writes take their seq while holding the client's row lock, so a
  client's writes become visible in seq order: nothing with a lower seq can
  appear after a higher one was seen (the v1 claim condition relies on it).
- Applying a unit takes its profile locks in one order, deadlock-free:

  1. lock the unit's existing profiles in key order (``FOR UPDATE``), and read
     what ``apply_rows`` needs to decide each row;
  2. insert the new profiles in key order, ``ON CONFLICT DO NOTHING``; one that
     another worker created meanwhile sends the transaction round again, now
     with that profile locked in step 1 (rare: two units creating one profile);
  3. update the locked profiles, merging per attribute (``pb_merge``, or plain
     ``||`` when every incoming seq is newer than the whole profile).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from json.encoder import encode_basestring as json_string
from typing import Any, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from profilebase.errors import (
    BatchRejected,
    ConfigError,
    DatabaseUnavailable,
    StorageError,
    StorageFull,
)
from profilebase.models import Client, Counts, FailedRow, KeyKind, Limits, Profile
from profilebase.server.merge import (
    ProfileState,
    byte_size,
    group_tombstones,
    merge_attrs,
)
from profilebase.server.storage import migrations, redact
from profilebase.server.storage import postgres_profiles as profiles
from profilebase.server.storage.base import DecodedRow, NewBatch, UnitClaim, UpdateOutcome, Visit
from profilebase.server.storage.batch_control import BatchControl
from profilebase.server.storage.clients import ClientQueries
from profilebase.server.storage.postgres_imports import PostgresImports
from profilebase.server.storage.postgres_tables import PostgresTables
from profilebase.server.storage.queries import (
    V1_WAITS_FOR_EARLIER_BATCHES,
    Connection,
    SnapshotExport,
    not_applied,
)
from profilebase.server.storage.records import claim_from_row

log = logging.getLogger("profilebase.server.storage")

#: Key of the advisory lock that lets one process at a time migrate the schema.
MIGRATION_LOCK = 0x7062_6D67  # "pbmg"
#: How often applying a unit is tried again after a lost race (a deadlock cannot
#: happen with the lock order above; a concurrent creation can, rarely).
APPLY_ATTEMPTS = 8

CLAIM = f"""
WITH candidate AS (
    SELECT u.batch_seq, u.unit_no
    FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
    WHERE u.state <> 'done'
      AND ((u.state = 'pending' AND u.not_before <= %(now)s)
           OR (u.state = 'running' AND u.lease_expires < %(now)s))
      AND {V1_WAITS_FOR_EARLIER_BATCHES}
      -- A paced client's units wait for its not_before.
      AND NOT EXISTS (SELECT 1 FROM ingest_pacing p WHERE p.client_id = b.client_id
                      AND p.not_before > %(now)s AND p.client_id = ANY(%(paced)s))
    ORDER BY u.batch_seq, u.unit_no
    LIMIT 1
    FOR UPDATE OF u SKIP LOCKED
)
UPDATE batch_units u
SET state = 'running', lease_owner = %(owner)s, lease_expires = %(expires)s,
    attempts = u.attempts + 1
FROM candidate n, batches b JOIN clients c ON c.id = b.client_id
WHERE u.batch_seq = n.batch_seq AND u.unit_no = n.unit_no AND b.seq = u.batch_seq
RETURNING u.batch_seq, u.unit_no, u.first_line, u.row_count, octet_length(u.body), u.attempts,
          b.client_id, b.version, b.key_kind, b.header, c.limits
"""

LOCK_PROFILES = """
SELECT pkey, created_seq, max_seq, octet_length(attrs::text)
FROM profiles WHERE client_id = %s AND pkey = ANY(%b)
ORDER BY pkey FOR UPDATE
"""

#: A unit's changes travel as one JSON array of [pkey, attrs, min seq, max seq]: the
#: attributes are JSON already, and PostgreSQL parses one document faster than
#: psycopg builds arrays.
CHANGES = "jsonb_array_elements(%s::jsonb) AS c"

INSERT_PROFILES = f"""
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
SELECT %s, c.value ->> 0, c.value -> 1, (c.value ->> 2)::bigint, (c.value ->> 3)::bigint, %s
FROM {CHANGES}
ORDER BY (c.value ->> 0) COLLATE "C"
ON CONFLICT (client_id, pkey) DO NOTHING
RETURNING pkey
"""

UPDATE_PROFILES = f"""
UPDATE profiles p SET
    attrs = CASE WHEN p.max_seq < n.min_seq THEN p.attrs || n.attrs
                 ELSE pb_merge(p.attrs, n.attrs) END,
    created_seq = least(p.created_seq, n.min_seq),
    max_seq = greatest(p.max_seq, n.max_seq),
    modified_at = greatest(p.modified_at, %s)
FROM (SELECT c.value ->> 0 AS pkey, c.value -> 1 AS attrs, (c.value ->> 2)::bigint AS min_seq,
             (c.value ->> 3)::bigint AS max_seq FROM {CHANGES}) AS n
WHERE p.client_id = %s AND p.pkey = n.pkey
"""


def storage_error(exc: psycopg.Error, url: str) -> StorageError | None:
    """The ``StorageError`` a psycopg error means, or None when it is no outage.

    Lost or refused connections (no SQLSTATE, class 08), a server shutting down or
    starting (57P01-57P03), too many connections or too little memory (class 53) and
    lock timeouts (55P03) are ``DatabaseUnavailable``: nothing was committed, the same
    request succeeds later. A full disk (53100) is ``StorageFull``. Serialization
    failures and deadlocks (class 40) are left to the code that retries them.
    """
    state = exc.sqlstate or ""
    detail = f"PostgreSQL at {redact(url)}: {str(exc).strip()} (SQLSTATE {state or 'none'})"
    if state == "53100":
        return StorageFull(detail=detail)
    if state.startswith("40"):
        return None
    if not state or state[:2] in {"08", "53"} or state in {"57P01", "57P02", "57P03", "55P03"}:
        return DatabaseUnavailable(detail=detail)
    return None


#: SQLSTATE classes and codes of errors that may pass, with what the batch status says.
TRANSIENT_CLASSES = {
    "08": "the database was unavailable",  # connection exception
    "40": "the database was busy",  # serialization failure, deadlock
    "53": "the database was short of resources",  # disk full, out of memory, connections
    "57": "the database was unavailable",  # shutting down, cannot connect now, cancelled
    "58": "the database was unavailable",  # system (I/O) error
}
TRANSIENT_STATES = {
    "53100": "the database had no room to write",
    "55P03": "the database was busy",  # lock_not_available (lock_timeout)
    "57014": "a database statement timed out",  # query_canceled (statement_timeout)
}


#: A unit's lines are read in pieces of this size: libpq keeps its input buffer as large
#: as the largest message a connection ever received, for as long as the connection
#: lives, and the pool keeps connections for a long time.
BODY_PIECE = 4 << 20


def read_body(db: psycopg.Connection, batch_seq: int, unit_no: int, length: int) -> bytes:
    """A unit's lines, ``length`` bytes, fetched a piece at a time."""
    pieces = []
    cursor = db.cursor(binary=True)
    for start in range(1, length + 1, BODY_PIECE):  # substring counts from 1
        found = cursor.execute(
            "SELECT substring(body FROM %s FOR %s) FROM batch_units "
            "WHERE batch_seq = %s AND unit_no = %s",
            (start, BODY_PIECE, batch_seq, unit_no),
        ).fetchone()
        if found is None:
            raise StorageError(f"The lines of unit {batch_seq}/{unit_no} are missing.")
        pieces.append(bytes(found[0]))
    return b"".join(pieces)


class _Retry(Exception):
    """A profile this transaction took for new was created by another one meanwhile."""


class _Writer:
    """Collects a unit's accepted rows per profile and writes them all at the end (``flush``)."""

    def __init__(self, db: psycopg.Connection, client_id: int, now_ms: int, stored: set[str]):
        self.db, self.client_id, self.now_ms, self.stored = db, client_id, now_ms, stored
        self.pending: dict[str, list[DecodedRow]] = {}

    def write(self, key: str, row: DecodedRow, create: bool) -> None:
        self.pending.setdefault(key, []).append(row)

    def write_all(self, rows: Sequence[DecodedRow], prefix: str) -> None:
        for row in rows:
            self.pending.setdefault(prefix + row.id, []).append(row)

    def tombstone_created(self, key: str, deleted_seq: int, created_seq: int) -> None:
        self.db.execute(
            "UPDATE tombstones SET created_seq = %s "
            "WHERE client_id = %s AND pkey = %s AND deleted_seq = %s",
            (created_seq, self.client_id, key, deleted_seq),
        )

    def merged_size(self, key: str, row: DecodedRow) -> int:
        attrs = "{}"
        if key in self.stored:  # locked in step 1, so this is exact
            found = self.db.execute(
                "SELECT attrs::text FROM profiles WHERE client_id = %s AND pkey = %s",
                (self.client_id, key),
            ).fetchone()
            attrs = found[0] if found else attrs
        for earlier in self.pending.get(key, ()):
            attrs = merge_attrs(attrs, earlier.attrs)
        return byte_size(merge_attrs(attrs, row.attrs))

    def flush(self) -> None:
        """Steps 2 and 3: insert the new profiles in key order, then update the locked ones.

        One change per profile: the unit's rows for it merged, with their lowest and
        highest seq.
        """
        new: list[str] = []
        old: list[str] = []
        for key, rows in self.pending.items():
            attrs = rows[0].attrs
            for later in rows[1:]:  # rows come in line order: seqs ascend
                attrs = merge_attrs(attrs, later.attrs)
            change = f"[{json_string(key)},{attrs},{rows[0].seq},{rows[-1].seq}]"
            (old if key in self.stored else new).append(change)
        if new:
            inserted = self.db.execute(
                INSERT_PROFILES, (self.client_id, self.now_ms, "[" + ",".join(new) + "]")
            ).fetchall()
            if len(inserted) != len(new):
                raise _Retry()
        if old:
            self.db.execute(
                UPDATE_PROFILES, (self.now_ms, "[" + ",".join(old) + "]", self.client_id)
            )


class PostgresStore(PostgresTables, PostgresImports, BatchControl, ClientQueries):
    """A ``Store`` on a PostgreSQL database shared by any number of processes."""

    backend = "postgres"
    placeholder = "%s"
    steps = profiles

    def __init__(self, url: str, pool_size: int = 10, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        try:  # one plain connection first: its error says exactly what is wrong
            psycopg.connect(url, **self._connect_options()).close()
        except psycopg.Error as exc:
            raise ConfigError(
                f"Cannot connect to PostgreSQL at {redact(url)}: {str(exc).strip()}"
            ) from None
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, **self._connect_options()},
            # A connection that broke while idle (the server restarted) is replaced before
            # it is handed out; a failed reconnection is given up after ``timeout`` and
            # tried again by the next request, so service resumes soon after an outage.
            check=ConnectionPool.check_connection,
            timeout=timeout,
            reconnect_timeout=timeout,
            name="profilebase",
            open=True,
        )

    def _connect_options(self) -> dict[str, Any]:
        """libpq options bounding how long a connection attempt or a lost peer can hang us.

        ``connect_timeout`` is whole seconds (libpq waits at least 2); ``tcp_user_timeout``
        drops a connection whose sent data goes unacknowledged that long (a network
        partition), where libpq would otherwise wait for the kernel's many minutes.
        """
        return {
            "connect_timeout": max(2, round(self.timeout)),
            "tcp_user_timeout": max(1000, int(self.timeout * 1000)),
        }

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; losing the database becomes ``DatabaseUnavailable`` (503)."""
        try:
            with self.pool.connection(timeout=self.timeout) as db:
                yield db
        except PoolTimeout as exc:
            raise DatabaseUnavailable(
                detail=f"no connection to PostgreSQL at {redact(self.url)} within "
                f"{self.timeout:g} s (database_timeout): {exc}; the server is down or "
                "unreachable, or every pooled connection is busy (postgres_pool_size)"
            ) from None
        except psycopg.OperationalError as exc:
            error = storage_error(exc, self.url)
            if error is None:
                raise
            raise error from exc

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection]:
        with self._connection() as db:
            yield db

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection]:
        with self._connection() as db, db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield db

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside a transaction (committed unless an exception escapes)."""
        with self._connection() as db, db.transaction():
            yield db

    def _lock_batch(self, db: Connection, batch_seq: int) -> None:
        db.execute("SELECT 1 FROM batches WHERE seq = %s FOR UPDATE", (batch_seq,))

    def _lock_for_write(self, db: Connection, client_id: int, keys: Sequence[str]) -> None:
        pg = cast(psycopg.Connection[Any], db)
        profiles.lock_client(pg, client_id)
        profiles.lock_profiles(pg, client_id, [profiles.resolve(pg, client_id, k) for k in keys])

    def close(self) -> None:
        self.pool.close()

    # -- schema and clients ------------------------------------------------------------

    def pending_migrations(self) -> list[str]:
        with self._read() as db:
            table = db.execute("SELECT to_regclass('schema_migrations')").fetchone()
            applied: list[int] = []
            if table is not None and table[0] is not None:
                applied = [v for (v,) in db.execute("SELECT version FROM schema_migrations")]
        return [m.file_name for m in migrations.pending("postgres", applied)]

    def migrate(self) -> list[str]:
        applied = []
        for migration in migrations.load("postgres"):
            with self._write() as db:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = db.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
                ).fetchone()
                if done:
                    continue
                db.execute(migration.sql.encode())  # bytes: a script, run as written
                db.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied.append(migration.file_name)
        return applied

    # -- batches -----------------------------------------------------------------------

    def accept_batch(self, batch: NewBatch, now_ms: int, limits: Limits) -> tuple[int, str]:
        if profiles.has_nul(*batch.names):
            raise BatchRejected(
                f"The header cannot be stored: {profiles.NUL_REASON} (an attribute name holds %00)."
            )
        with self._write() as db:
            # The client's row lock orders its writes: idempotency key, quota, seq, commit.
            db.execute("SELECT 1 FROM clients WHERE id = %s FOR UPDATE", (batch.client.id,))
            earlier = self._replayed(db, batch)
            if earlier is not None:
                return earlier
            seq, batch_id = self._take_seq(db, batch, now_ms, limits)
            units = 0
            with db.cursor().copy(
                "COPY batch_units (batch_seq, unit_no, first_line, row_count, body) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "int4", "int4", "int4", "bytea"])
                for unit_no, unit in enumerate(batch.units):
                    copy.write_row((seq, unit_no, unit.first_line, unit.row_count, unit.body))
                    units += 1
            self._record_batch(db, seq, batch_id, batch, units, now_ms)
        return seq, batch_id

    def claim_unit(
        self, owner: str, now_ms: int, lease_ms: int, paced: Mapping[int, int] | None = None
    ) -> UnitClaim | None:
        with self._write() as db:
            found = (
                db.cursor(binary=True)
                .execute(
                    CLAIM,
                    {
                        "now": now_ms,
                        "owner": owner,
                        "expires": now_ms + lease_ms,
                        "paced": list(paced or {}),
                    },
                )
                .fetchone()
            )
            if found is None:
                return None
            db.execute(
                "UPDATE batches SET started_at = %s WHERE seq = %s AND started_at IS NULL",
                (now_ms, found[0]),
            )
            body = read_body(db, found[0], found[1], found[4] or 0)
            claim = claim_from_row((*found[:4], body, *found[5:]), owner)
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
        refused = [row for row in rows if profiles.row_has_nul(row.id, row.attrs)]
        if refused:
            rows = [row for row in rows if row not in refused]
            failures = sorted(
                [
                    *failures,
                    *(FailedRow(row.line, row.id, profiles.NUL_REASON) for row in refused),
                ],
                key=lambda failure: failure.line,
            )
        for attempt in range(1, APPLY_ATTEMPTS + 1):
            try:
                with self._write() as db:
                    return self._apply(
                        db,
                        claim,
                        rows,
                        failures,
                        now_ms,
                        max_profile_bytes,
                        expire_before_ms,
                        through_line,
                    )
            except (_Retry, pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                log.info("unit %s/%s lost a race (%r); again", claim.batch_seq, claim.unit_no, exc)
                if attempt == APPLY_ATTEMPTS:
                    raise  # transient (transient_reason): the worker retries the unit later
        raise AssertionError("unreachable")

    def _apply(
        self,
        db: psycopg.Connection,
        claim: UnitClaim,
        rows: Sequence[DecodedRow],
        failures: Sequence[FailedRow],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int,
        through_line: int | None,
    ) -> Counts | None:
        ours = db.execute(
            "SELECT applied_through FROM batch_units WHERE batch_seq = %s AND unit_no = %s "
            "AND state = 'running' AND lease_owner = %s FOR UPDATE",
            (claim.batch_seq, claim.unit_no, claim.owner),
        ).fetchone()
        if ours is None:
            return None
        rows, failures = not_applied(rows, failures, ours[0])
        prefix = claim.key_kind.prefix
        keys = sorted({prefix + row.id for row in rows})
        aliases = profiles.aliases_of(db, claim.client_id, keys)
        stored_keys = sorted({aliases.get(key, key) for key in keys})
        if expire_before_ms:
            expired = profiles.expire_keys(db, claim.client_id, stored_keys, expire_before_ms)
            aliases = {k: v for k, v in aliases.items() if v not in expired}
        existing = {
            pkey: ProfileState(created, latest, size)
            for pkey, created, latest, size in db.execute(
                LOCK_PROFILES, (claim.client_id, stored_keys)
            )
        }
        # Read after the locks: a delete that held one of these profiles is visible now.
        tombstones = group_tombstones(
            db.execute(
                "SELECT pkey, deleted_seq, created_seq FROM tombstones "
                "WHERE client_id = %s AND pkey = ANY(%b) ORDER BY pkey, deleted_seq",
                (claim.client_id, keys),
            )
        )
        writer = _Writer(db, claim.client_id, now_ms, set(existing))
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

    def _recordable(self, text: str) -> str:
        """PostgreSQL's text cannot hold U+0000: a failed row's id, reason and raw line
        are recorded with each NUL replaced by U+FFFD, as invalid bytes already are."""
        return text.replace("\x00", "\ufffd")

    def _transient(self, error: BaseException) -> str | None:
        """psycopg's errors that waiting cures, by SQLSTATE class: the connection lost or
        refused, resources short, the server shutting down, a lock or serialization
        conflict. A program limit (class 54) is a value the database refuses: not one."""
        if isinstance(error, PoolTimeout | psycopg.InterfaceError):
            return "the database was unavailable"
        if isinstance(error, _Retry):
            return "the database was busy"
        if not isinstance(error, psycopg.Error):
            return None
        state = error.sqlstate or ""
        if not state:  # raised by psycopg itself: the connection broke
            return (
                "the database was unavailable"
                if isinstance(error, psycopg.OperationalError)
                else None
            )
        return TRANSIENT_STATES.get(state) or TRANSIENT_CLASSES.get(state[:2])

    # -- profiles ----------------------------------------------------------------------

    def get_profile(self, client_id: int, key: str, expire_before_ms: int = 0) -> Profile | None:
        if profiles.has_nul(key):  # no stored key can hold it
            return None
        return super().get_profile(client_id, key, expire_before_ms)

    # PostgreSQL cannot hold U+0000: a key holding it finds nothing, values are refused.

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
        if profiles.has_nul(key):
            return None
        profiles.refuse_nul(*values, *values.values())
        return super().update_profile(
            client, key, values, now_ms, updates_per_day, max_profile_bytes, expire_before_ms
        )

    def visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> str:
        profiles.refuse_nul(
            visit.tnt_id, visit.third_party_id or "", *visit.values, *visit.values.values()
        )
        return super().visit(client_id, visit, now_ms, max_profile_bytes, expire_before_ms)

    def delete_profile(
        self, client_id: int, key: str, now_ms: int, expire_before_ms: int = 0
    ) -> bool:
        if profiles.has_nul(key):
            return False
        return super().delete_profile(client_id, key, now_ms, expire_before_ms)

    def open_export(
        self, client_id: int, kind: KeyKind | None = None, expire_before_ms: int = 0
    ) -> SnapshotExport:
        try:
            db = psycopg.connect(self.url, autocommit=True, **self._connect_options())
        except psycopg.OperationalError as exc:
            raise storage_error(exc, self.url) or DatabaseUnavailable(detail=str(exc)) from exc
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        return SnapshotExport(self, db, begin, client_id, kind, expire_before_ms)
