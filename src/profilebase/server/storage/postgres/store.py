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

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from functools import partial
from json.encoder import encode_basestring as json_string
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from profilebase.errors import (
    BadRequest,
    BatchRejected,
    ConfigError,
    DatabaseUnavailable,
    StorageError,
    StorageFull,
)
from profilebase.models import DAY_MS, SEQ_SPAN, Client, FailedRow, KeyKind, Profile, WriteKind
from profilebase.server.merge import DecodedRow, RowWriter, byte_size, dump_attrs, merge_attrs
from profilebase.server.quota import MINUTE_MS
from profilebase.server.storage import redact, statements
from profilebase.server.storage.base import UnitSpec, UpdateOutcome, Visit, WouldWait
from profilebase.server.storage.batch_control import BatchControl
from profilebase.server.storage.clients import ClientQueries
from profilebase.server.storage.imports import ImportRow
from profilebase.server.storage.links import plan_link
from profilebase.server.storage.postgres.groups import SHARED, Entry, WriteGroups
from profilebase.server.storage.postgres.imports import PostgresImports
from profilebase.server.storage.postgres.loop_reads import LoopReads
from profilebase.server.storage.postgres.tables import PostgresTables
from profilebase.server.storage.profiles import ProfileQueries, window_with_one_more
from profilebase.server.storage.queries import Connection
from profilebase.server.storage.records import ProfileRecord

#: How often applying a unit is tried again after a lost race (a deadlock cannot
#: happen with the lock order above; a concurrent creation can, rarely).
APPLY_ATTEMPTS = 8

#: The most online writes one group commits at once (groups.py).
GROUP_WRITES = 64
#: Threads of a process that run groups of online writes, one client's at a time each
#: (groups.py): a client's groups run one after another whatever their number. As many as
#: the request threads that used to make the writes (``REQUEST_THREADS``): a client whose
#: group waits for its lock (a batch being stored, another node's group) holds one.
GROUP_LEADERS = 8
#: How often an online write (a group of them, or a delete) is run again after the
#: database undid its transaction to break a deadlock (class 40), before it answers 503.
ONLINE_ATTEMPTS = 3
#: Connections a process opens for fetches on its event loop (``loop_reads.py``), beside
#: its pool of ``postgres_pool_size``: four served as many fetches as eight.
LOOP_CONNECTIONS = 4

#: A pooled connection that answered within this many seconds is lent without a check
#: to work that can start over if it was lost meanwhile (``PostgresStore._trusting``).
TRUSTED_SECONDS = 1.0

#: SQLSTATEs of a session the server ended: shutting down (or told to), starting up.
SESSION_ENDED = {"57P01", "57P02", "57P03"}

T = TypeVar("T")

log = logging.getLogger("profilebase.server.storage")

#: The named queries of this backend (sql/queries.sql).
SQL = statements.load("postgres")


#: PostgreSQL's text and jsonb cannot hold U+0000; SQLite can. Rows, ids and values
#: carrying it are refused with this reason rather than stored differently.
NUL_REASON = (
    "PostgreSQL cannot store the character U+0000 (NUL): remove it from the id, the "
    "attribute names and the values"
)


def has_nul(*texts: str) -> bool:
    return any("\x00" in text for text in texts)


def row_has_nul(identifier: str, attrs: str) -> bool:
    """True if a decoded row's id, names or values hold U+0000 (JSON spells it \\u0000)."""
    if "\x00" in identifier:
        return True
    if "u0000" not in attrs:
        return False
    return any(has_nul(name, entry[0]) for name, entry in json.loads(attrs).items())


def refuse_nul(*texts: str) -> None:
    if has_nul(*texts):
        raise BadRequest(NUL_REASON + ".")


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


def undone(error: BaseException | None) -> bool:
    """Whether ``error`` is the database undoing a transaction to break a deadlock or a
    serialization failure (class 40; psycopg files them under ``OperationalError``)."""
    return isinstance(error, psycopg.Error) and (error.sqlstate or "").startswith("40")


def busy_error(exc: psycopg.Error, url: str) -> DatabaseUnavailable:
    """What an online write answers once the database undid it to break a deadlock (or a
    serialization failure, class 40) ``ONLINE_ATTEMPTS`` times: nothing of it was written."""
    return DatabaseUnavailable(
        "The database was busy: this write and others waited for each other's locks, and "
        "the database undid this one; nothing was changed. Send it again.",
        retry_after=1,
        detail=f"PostgreSQL at {redact(url)}: {str(exc).strip()} (SQLSTATE {exc.sqlstate})",
    )


#: A unit's lines are read in pieces of this size: libpq keeps its input buffer as large
#: as the largest message a connection ever received, for as long as the connection
#: lives, and the pool keeps connections for a long time.
BODY_PIECE = 4 << 20


def connection_lost(db: psycopg.Connection, error: psycopg.Error, unsure: bool = True) -> bool:
    """Whether ``error`` lost the connection (rather than refusing a statement on it); an
    error with no SQLSTATE on a connection still open counts as ``unsure`` says."""
    state = error.sqlstate or ""
    if db.closed or db.broken or state[:2] == "08" or state in SESSION_ENDED:
        return True
    return unsure and not state


def read_body(db: psycopg.Connection, batch_seq: int, unit_no: int, length: int) -> bytes:
    """A unit's lines, ``length`` bytes, fetched a piece at a time."""
    pieces = []
    cursor = db.cursor(binary=True)
    for start in range(1, length + 1, BODY_PIECE):  # substring counts from 1
        found = cursor.execute(
            SQL["postgres_unit_body_piece"], (start, BODY_PIECE, batch_seq, unit_no)
        ).fetchone()
        if found is None:
            raise StorageError(f"The lines of unit {batch_seq}/{unit_no} are missing.")
        pieces.append(bytes(found[0]))
    return b"".join(pieces)


def shown_pc_id(key: str, stored: str, latest: str | None) -> str | None:
    """The tntId a single update's reply shows: the key asked for or the stored one if a
    tntId, else ``latest``, the tntId key linked last (as ``_pc_id_of`` chooses)."""
    for candidate in (key, stored, latest):
        if candidate is not None and candidate.startswith(KeyKind.PC_ID.prefix):
            return candidate[2:]
    return None


class _Stale(Exception):
    """A connection lent without a check was lost before its first statement answered."""


class _GroupLost(Exception):
    """A write failed outside a savepoint: its group's transaction is lost."""

    def __init__(self, entry: Entry[Any]) -> None:
        super().__init__()
        self.entry = entry


class _PipelineLost(Exception):
    """A statement failed in a pipeline of a group: the group runs again without them."""


class _Retry(Exception):
    """A profile this transaction took for new was created by another one meanwhile, or
    a delete of one it created committed unseen (``check_no_delete_missed``)."""


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
            SQL["set_tombstone_created"], (created_seq, self.client_id, key, deleted_seq)
        )

    def merged_size(self, key: str, row: DecodedRow) -> int:
        attrs = "{}"
        if key in self.stored:  # locked in step 1, so this is exact
            found = self.db.execute(SQL["profile_attrs"], (self.client_id, key)).fetchone()
            attrs = found[0] if found else attrs
        for earlier in self.pending.get(key, ()):
            attrs = merge_attrs(attrs, earlier.attrs)
        return byte_size(merge_attrs(attrs, row.attrs))

    def flush(self) -> None:
        """Steps 2 and 3: insert the new profiles in key order, then update the locked ones.

        One change per profile: the unit's rows for it merged, with their lowest and
        highest seq. The new profiles are copied in (``COPY``, half the database's work of
        an ``INSERT`` from a JSON array, which the locked ones still take): one created by
        another transaction meanwhile makes the copy fail, and the unit starts again with
        it locked, as a conflict of the ``INSERT`` did (``_Retry``).
        """
        new: list[tuple[str, str, int, int]] = []
        old: list[str] = []
        for key, rows in self.pending.items():
            attrs = rows[0].attrs
            for later in rows[1:]:  # rows come in line order: seqs ascend
                attrs = merge_attrs(attrs, later.attrs)
            if key in self.stored:
                old.append(f"[{json_string(key)},{attrs},{rows[0].seq},{rows[-1].seq}]")
            else:
                new.append((key, attrs, rows[0].seq, rows[-1].seq))
        if new:
            new.sort()  # code point order: the order of UTF-8 bytes, COLLATE "C"'s
            try:
                with self.db.cursor().copy(SQL["postgres_copy_profiles"]) as copy:
                    for key, attrs, low, high in new:
                        copy.write_row((self.client_id, key, attrs, low, high, self.now_ms))
            except pg_errors.UniqueViolation:
                raise _Retry() from None
            check_no_delete_missed(self.db, self.client_id, [(key, low) for key, _, low, _ in new])
        if old:
            self.db.execute(
                SQL["postgres_update_profiles"],
                (self.now_ms, "[" + ",".join(old) + "]", self.client_id),
            )


def check_no_delete_missed(
    db: Connection, client_id: int, created: Sequence[tuple[str, int]]
) -> None:
    """Raise ``_Retry`` if a delete of one of the profiles just ``created`` (key, and the
    seq of the oldest row written into it, or of the newest tombstone of it the unit saw)
    committed after the unit read the tombstones: its rows older than the delete would
    outlive it.

    Nothing locks a profile that does not exist yet, so a delete that found none (and
    left a tombstone) may commit between the unit's read and its insert. A delete that
    comes later waits for the insert (``PostgresStore._wait_for_creation``), so once the
    insert is in, this read sees every delete that does not wait for it. A tombstone the
    unit saw is older than every row it wrote into that profile (older rows were
    skipped), so one newer than a written row is one it missed; the part runs again."""
    if not created or db.execute(SQL["client_has_tombstones"], (client_id,)).fetchone() is None:
        return
    keys = [key for key, _ in created]
    lows = [low for _, low in created]
    found = db.execute(
        SQL["postgres_tombstone_missed"], {"client": client_id, "keys": keys, "lows": lows}
    ).fetchone()
    if found is not None:
        raise _Retry()


class PostgresStore(PostgresTables, PostgresImports, BatchControl, ClientQueries, ProfileQueries):
    """A ``Store`` on a PostgreSQL database shared by any number of processes."""

    backend = "postgres"
    sql = SQL
    stores_nul = False
    lost_races = (_Retry, pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
    apply_attempts = APPLY_ATTEMPTS

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
            check=self._check,
            timeout=timeout,
            reconnect_timeout=timeout,
            name="profilebase",
            open=True,
        )
        #: When each pooled connection last answered (``_check``).
        self.answered: weakref.WeakKeyDictionary[psycopg.Connection, float] = (
            weakref.WeakKeyDictionary()
        )
        #: ``unchecked.ok``: this thread's next connection may be lent unchecked (``_check``).
        self.unchecked = threading.local()
        self.groups = WriteGroups(self._run_group, GROUP_WRITES, GROUP_LEADERS)
        #: Fetches awaited on the event loop, over connections of their own.
        self.loop_reads = LoopReads(url, LOOP_CONNECTIONS, timeout, self._connect_options())
        #: The connection of the group this thread is running, if any (``_write``), and
        #: what the group found of the running write's keys, if still true (``_try_group``).
        self.in_group = threading.local()

    def _connect_options(self) -> dict[str, Any]:
        """libpq options bounding how long a connection attempt or a lost peer can hang us,
        and the session's settings.

        ``connect_timeout`` is whole seconds (libpq waits at least 2); ``tcp_user_timeout``
        drops a connection whose sent data goes unacknowledged that long (a network
        partition), where libpq would otherwise wait for the kernel's many minutes.

        ``jit`` is off: PostgreSQL compiles a statement whose estimated cost passes
        ``jit_above_cost``, which a single update's estimate did among 5 million profiles
        before they were first analyzed (250 ms of compiling for a statement that runs in
        well under 1 ms). Nothing here runs long enough to gain from it. The options of the
        URL (or ``PGOPTIONS``) are kept, with this one after them.
        """
        given = conninfo_to_dict(self.url).get("options") or os.environ.get("PGOPTIONS", "")
        return {
            "connect_timeout": max(2, round(self.timeout)),
            "tcp_user_timeout": max(1000, int(self.timeout * 1000)),
            "options": f"{given} -c jit=off".strip(),
        }

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; losing the database becomes ``DatabaseUnavailable`` (503)."""
        try:
            with self.pool.connection(timeout=self.timeout) as db:
                yield db
                self.answered[db] = time.monotonic()
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

    def _check(self, db: psycopg.Connection) -> None:
        """The pool's check of a connection before lending it: a round trip, as much as a
        fetch's own statement. Skipped for a connection that answered within
        ``TRUSTED_SECONDS`` when the borrower says it can start over (``_trusting``)."""
        if getattr(self.unchecked, "ok", False):
            if time.monotonic() - self.answered.get(db, -TRUSTED_SECONDS) < TRUSTED_SECONDS:
                return
        try:
            ConnectionPool.check_connection(db)
        except psycopg.Error:
            self._lost_while_idle()
            raise

    def _lost_while_idle(self) -> None:
        """A pooled connection was lost while idle: the server restarted or ended its
        sessions, most likely every idle one. Checking them all now replaces them at once;
        lent one at a time, each broken one would fail its check, and the pool backs off
        a second, then two, four... between failed checks (past ``database_timeout`` with
        a few broken connections)."""
        log.info("a pooled connection was lost while idle; checking every idle one")
        self.pool.check()

    def _trusting(self, work: Callable[[], T]) -> T:
        """``work`` on a connection lent unchecked if it answered lately (``_check``); run
        again, on a checked one, if the connection turned out lost before its first statement
        answered (``_stale``): nothing had reached the database."""
        self.unchecked.ok = True
        try:
            return work()
        except _Stale:
            pass
        finally:
            self.unchecked.ok = False
        self._lost_while_idle()
        return work()

    def _stale(self, db: psycopg.Connection, answered: bool, error: Exception) -> None:
        """Raise ``_Stale`` if ``error`` says that a connection lent unchecked was lost
        before it ``answered`` anything (work run by ``_trusting`` then starts over)."""
        if not answered and getattr(self.unchecked, "ok", False):
            if isinstance(error, psycopg.Error) and connection_lost(db, error):
                raise _Stale() from error

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection]:
        with self._connection() as db:
            yield db

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Connection]:
        with self._connection() as db, db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield db

    def _part_attempt(self, apply: Callable[[], T]) -> T:
        """A part on a connection lent unchecked if it answered lately (``_trusting``): the
        check is a round trip, as long as one of the part's own few. A part whose ``BEGIN``
        finds the connection lost starts over on a checked one (``_part_write``)."""
        return self._trusting(apply)

    @contextmanager
    def _part_write(self, size: int) -> Iterator[psycopg.Connection]:
        """A part's transaction; a connection lost before its ``BEGIN`` answered had
        nothing of the part, which then starts over (``_stale``, in ``_part_attempt``)."""
        with self._connection() as db, ExitStack() as transaction:
            try:
                transaction.enter_context(db.transaction())  # sends BEGIN
            except psycopg.OperationalError as exc:
                self._stale(db, False, exc)
                raise
            yield db

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside a transaction (committed unless an exception escapes).

        Within a group of online writes (``_grouped``), a savepoint of the group's
        transaction instead: a write that fails undoes only itself."""
        group: psycopg.Connection | None = getattr(self.in_group, "db", None)
        if group is None:
            with self._connection() as db, db.transaction():
                yield db
            return
        try:
            with group.transaction():
                yield group
        except psycopg.OperationalError as exc:
            raise storage_error(exc, self.url) or exc from exc

    def close(self) -> None:
        self.groups.close(self.timeout)
        self.pool.close()

    def _export_connection(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, autocommit=True, **self._connect_options())
        except psycopg.OperationalError as exc:
            raise storage_error(exc, self.url) or DatabaseUnavailable(detail=str(exc)) from exc

    def _list(self, items: Sequence[object]) -> list[object]:
        """A Python list, which psycopg binds as an array."""
        return list(items)

    def _run_script(self, db: Connection, script: str) -> None:
        db.execute(script.encode())  # bytes: a script, run as written

    # -- the online path ---------------------------------------------------------------------

    def get_profile(self, client_id: int, key: str, expire_before_ms: int = 0) -> Profile | None:
        """One statement, ``postgres_profile_document``: a statement sees one snapshot, so
        it needs no transaction, and a fetch makes one round trip instead of the shared
        path's six (a read-only transaction of four SELECTs)."""
        if not self._can_store(key):
            return None
        params = {"client": client_id, "key": key, "since": expire_before_ms, "span": SEQ_SPAN}

        def read() -> Any:
            with self._read() as db:
                try:
                    return db.execute(SQL["postgres_profile_document"], params).fetchone()
                except psycopg.OperationalError as exc:
                    self._stale(db, False, exc)
                    raise

        record = self._document_profile(key, self._trusting(read))
        return None if record is None else record.profile()

    async def get_profile_async(
        self, client_id: int, key: str, expire_before_ms: int = 0
    ) -> ProfileRecord | None:
        """The fetch's statement on the event loop (``loop_reads.py``): ``WouldWait`` on any
        error, and the fetch is made from a thread."""
        if not self._can_store(key):
            return None
        params = {"client": client_id, "key": key, "since": expire_before_ms, "span": SEQ_SPAN}
        row = await self.loop_reads.one_row(SQL["postgres_profile_document"], params)
        return self._document_profile(key, row)

    async def changes_async(self) -> str:
        """The server's current snapshot (``pg_current_snapshot``: the oldest transaction
        still running, one past the newest that has ended, and those running in between).
        A transaction that writes takes an id. A snapshot taken while it runs has it listed
        as running or at or past its end bound; one taken after it committed has that bound
        past it and does not list it. So equal snapshots mean that no writing transaction
        committed between them, in any database of the server: a write elsewhere makes the
        replies be read again for nothing, on the safe side. ``WouldWait`` on a standby."""
        row = await self.loop_reads.one_row(SQL["postgres_changes"], {})
        if row is None:
            raise WouldWait
        return cast(str, row[0])

    async def close_async(self) -> None:
        await self.loop_reads.close()

    @staticmethod
    def _document_profile(key: str, row: Any) -> ProfileRecord | None:
        """The profile of a row of ``postgres_profile_document`` (None: no row)."""
        if row is None:
            return None
        code, attrs, modified, stored, aliases, seqs, kinds, refs = row
        writes = dict(zip(seqs or (), zip(kinds or (), refs or (), strict=True), strict=True))
        return ProfileRecord(code, key, json.loads(attrs), modified, [stored, *aliases], writes)

    def recent_updates(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        """The shared read, on a connection lent unchecked (``_trusting``): a single update's
        reply reads them for its quota headers. A read can start over whatever failed."""
        shared = super().recent_updates

        def read() -> list[tuple[int, int]]:
            try:
                return shared(client_id, since_ms)
            except DatabaseUnavailable as exc:
                lost = isinstance(exc.__cause__, psycopg.OperationalError)
                if lost and getattr(self.unchecked, "ok", False):
                    raise _Stale() from exc
                raise

        return self._trusting(read)

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
        """In a group of the client's online writes (``_submit_update``)."""
        args = (client, key, values, now_ms, updates_per_day, max_profile_bytes)
        return self._submit_update(*args, expire_before_ms).result()

    def submit_write(self, call: Callable[..., T], *args: Any) -> Future[T] | None:
        """Single updates and page calls are queued in a group of their client's online
        writes, which a leader thread runs (``groups.py``); anything else is made from a
        thread (None)."""
        if call == self.update_profile:
            return cast("Future[T]", self._submit_update(*args))
        if call == self.visit:
            return cast("Future[T]", self._submit_visit(*args))
        return None

    def _submit_update(
        self,
        client: Client,
        key: str,
        values: Mapping[str, str],
        now_ms: int,
        updates_per_day: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> Future[UpdateOutcome | None]:
        """``update_profile`` queued in a group of the client's online writes: one
        statement when nothing is in the way (``postgres_quick_update``), sent in a
        pipeline with the group's others, else the shared path, which says what is."""
        args = (client, key, values, now_ms, updates_per_day, max_profile_bytes)
        shared = super().update_profile

        def send() -> Callable[[], object] | object:
            if not (values and self._can_store(key)):
                return SHARED
            self._refuse_unstorable(*values, *values.values())
            return self._send_quick_update(*args, expire_before_ms)

        return self.groups.submit(client.id, [key], send, lambda: shared(*args, expire_before_ms))

    def _send_quick_update(
        self,
        client: Client,
        key: str,
        values: Mapping[str, str],
        now_ms: int,
        updates_per_day: int,
        max_profile_bytes: int,
        expire_before_ms: int,
    ) -> Callable[[], object]:
        """Send the update as one statement; return what reads its answer: the outcome, or
        ``SHARED`` (nothing written) if something needs the shared path: no live profile,
        the quota full, or a size that needs an exact check."""
        db = self.in_group.db
        # The values as stored, with a seq of 20 digits: at least as long as any.
        bound = byte_size(dump_attrs({name: [v, 10**19, now_ms] for name, v in values.items()}))
        params = {
            "client": client.id,
            "key": key,
            "since": expire_before_ms,
            "bound": bound,
            "max_bytes": max_profile_bytes,
            "day_start": (now_ms - DAY_MS) // MINUTE_MS,
            "per_day": updates_per_day,
            "minute": now_ms // MINUTE_MS,
            "kind": str(WriteKind.UPDATE),
            "now": now_ms,
            "span": SEQ_SPAN,
            "values": json.dumps(values),
        }
        cursor = db.execute(SQL["postgres_quick_update"], params)

        def finish() -> object:
            found = cursor.fetchone()
            if found is None or found[1] is None:
                return SHARED
            stored, write, latest, before = found
            used, oldest = json.loads(before)
            return UpdateOutcome(
                shown_pc_id(key, stored, latest),
                int(write) * SEQ_SPAN + 1,
                window_with_one_more(int(used), oldest, now_ms),
            )

        return finish

    def visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> str:
        """In a group of the client's online writes (``_submit_visit``)."""
        return self._submit_visit(
            client_id, visit, now_ms, max_profile_bytes, expire_before_ms
        ).result()

    def _submit_visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> Future[str]:
        """``visit`` queued in a group of the client's online writes: two statements for
        a call that creates, renames and absorbs no profile and carries no ECID or
        customerIds (``_quick_visit``), else the shared path."""
        args = (client_id, visit, now_ms, max_profile_bytes, expire_before_ms)
        shared = super().visit

        def send() -> Callable[[], object] | object:
            if visit.aliases:
                return SHARED
            third = visit.third_party_id or ""
            self._refuse_unstorable(visit.tnt_id, third, *visit.values, *visit.values.values())
            done = self._quick_visit(*args)  # its answer says nothing: the key is known
            return SHARED if done is None else lambda: done

        keys = [KeyKind.PC_ID.key(visit.tnt_id), *visit.aliases]
        if visit.third_party_id is not None:
            keys.append(KeyKind.THIRD_PARTY_ID.key(visit.third_party_id))
        return self.groups.submit(client_id, keys, send, lambda: shared(*args))

    def _quick_visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int,
    ) -> str | None:
        """The call's stored key once done, or None (nothing written) if it needs the
        shared path: a profile to create, rename, absorb or expire, or a size to check
        exactly. Plans with ``plan_link`` from what its ids find (``postgres_keys_found``)."""
        db = self.in_group.db
        tnt_key = KeyKind.PC_ID.key(visit.tnt_id)
        third_key = None
        if visit.third_party_id is not None:
            third_key = KeyKind.THIRD_PARTY_ID.key(visit.third_party_id)
        keys = [tnt_key, *([third_key] if third_key else [])]
        known = self.in_group.known  # what the group found of its keys, if still true
        if not all(key in known for key in keys):
            params = {"client": client_id, "keys": keys}
            known = {row[0]: row[1:] for row in db.execute(SQL["postgres_keys_found"], params)}
        found = {key: known[key] for key in keys}
        if any(exists and modified < expire_before_ms for _, exists, modified, _ in found.values()):
            return None  # an expired profile: the shared path deletes it
        tnt_stored, tnt_live = found[tnt_key][:2]
        third_exists = third_key is not None and found[third_key][:2] == (third_key, True)
        plan = plan_link(tnt_key, tnt_stored if tnt_live else None, third_key, third_exists)
        if plan.create or plan.rename or plan.absorb:
            return None
        size = next(int(size) for stored, _, _, size in found.values() if stored == plan.target)
        values = visit.values
        if values:
            bound = dump_attrs({name: [v, 10**19, now_ms] for name, v in values.items()})
            if size + byte_size(bound) > max_profile_bytes:
                return None
        elif plan.alias is None:
            self._touch(db, client_id, plan.target, now_ms)
            return plan.target
        write = {
            "client": client_id,
            "kind": str(WriteKind.DELIVERY),
            "ref": visit.request_id,
            "now": now_ms,
            "alias": plan.alias,
            "target": plan.target,
            "span": SEQ_SPAN,
            "values": json.dumps(values) if values else None,
        }
        db.execute(SQL["postgres_quick_visit"], write)
        return plan.target

    def _run_group(self, client_id: int, entries: list[Entry[Any]]) -> None:
        """One transaction for a group of a client's online writes (``groups.py``).

        The writes that name no key an earlier write of the group named send their
        statements in a pipeline (``Entry.send``), a run of them at a time, waiting for the
        server once per run rather than once per write (``_run_pipeline``); the others run
        one at a time.

        A write that fails in a savepoint of its own (the shared path's ``_write``) undoes
        only itself. One that fails in a statement outside one (a quick path) aborts the
        transaction: it keeps its error, and the others run again in a new transaction.
        A statement that fails in a pipeline cannot be told from the others of its run:
        the whole group then runs again without pipelines, where one that fails again is
        found.

        A transaction the database undid to break a deadlock (class 40: a unit or another
        node's group locking the other way, or a program of the operator's) is no write's
        fault: the group runs again, ``ONLINE_ATTEMPTS`` times in all, then its writes
        answer 503 (``busy_error``). A write undone so in its own savepoint answers 503
        alone.
        """
        remaining = list(entries)
        pipelined = True
        attempts = 1  # transactions the database undid to break a deadlock, plus one
        try:
            while remaining:
                try:
                    lost = self._trusting(partial(self._try_group, client_id, remaining, pipelined))
                except _PipelineLost:
                    pipelined = False
                    lost = None
                except psycopg.OperationalError as exc:
                    if not undone(exc):
                        raise
                    attempts += 1  # a deadlock: no write's own fault
                    if attempts > ONLINE_ATTEMPTS:
                        for entry in remaining:
                            entry.result, entry.error = None, busy_error(exc, self.url)
                        return
                    lost = None
                else:
                    if lost is None:
                        break
                    if undone(lost.error) and attempts < ONLINE_ATTEMPTS:
                        attempts += 1  # undone outside a savepoint: it runs again too
                    else:
                        remaining.remove(lost)
                for entry in remaining:
                    entry.result, entry.error = None, None
        finally:  # a write undone in its own savepoint, or left out after its attempts
            for entry in entries:
                if undone(entry.error):
                    entry.error = busy_error(cast(psycopg.Error, entry.error), self.url)

    def _try_group(
        self, client_id: int, entries: list[Entry[Any]], pipelined: bool
    ) -> Entry[Any] | None:
        """Run ``entries`` in one transaction and commit; the entry whose failure aborted
        the transaction (rolled back), or None once committed.

        The client's row and the profiles every write names are locked first, those in
        key order as a unit locks them: one write after another, the group would otherwise
        take profile locks out of that order, and a unit waiting the other way would
        deadlock with it. Each write then locks what it needs again (held already, unless
        an earlier write of the group moved an id)."""
        keys = sorted({key for entry in entries for key in entry.keys if self._can_store(key)})
        answered = False
        with self._connection() as db:
            try:
                with db.transaction():
                    locking = {"client": client_id, "keys": keys}
                    with db.pipeline():  # one round trip for both locks
                        db.execute(SQL["lock_client"], (client_id,))
                        locked = db.execute(SQL["postgres_lock_keys"], locking)
                    answered = True
                    found = {row[0]: row[1:] for row in locked}
                    self.in_group.db = db
                    named: set[str] = set()  # the keys earlier writes named, and their profiles
                    run: list[Entry[Any]] = []  # writes to send in one pipeline
                    for entry in entries:
                        # What the group found of a write's keys holds while no earlier
                        # write named them or their profiles: writes change only those.
                        mine = {*entry.keys, *(found[key][0] for key in entry.keys if key in found)}
                        again = bool(mine & named)
                        named |= mine
                        if pipelined and not again:
                            run.append(entry)
                            continue
                        self._run_pipeline(db, run, found)
                        run = []
                        self.in_group.known = {} if again else found
                        self._run_entry(db, entry, entry.one_at_a_time)
                    self._run_pipeline(db, run, found)
            except _GroupLost as lost:
                return lost.entry
            except psycopg.OperationalError as exc:
                self._stale(db, answered, exc)
                raise
            finally:
                self.in_group.db, self.in_group.known = None, {}
        return None

    def _run_pipeline(self, db: psycopg.Connection, run: list[Entry[Any]], found: Any) -> None:
        """Send the statements of ``run`` (writes whose keys no other write of the group
        named before) in one pipeline, read their answers, then run the shared call of
        each that needs it. Raises ``_PipelineLost`` if a statement failed."""
        if not run:
            return
        self.in_group.known = found
        sent: list[object] = []
        try:
            with db.pipeline() as pipeline:
                for entry in run:
                    try:
                        sent.append(entry.send())
                    except psycopg.Error:
                        raise
                    except Exception as exc:  # noqa: BLE001 - refused before any statement
                        entry.error = exc
                        sent.append(None)
                pipeline.sync()
                outcomes = [finish() if callable(finish) else finish for finish in sent]
        except Exception as exc:
            if isinstance(exc, psycopg.Error) and connection_lost(db, exc, unsure=False):
                raise
            # A statement refused (psycopg files a cancelled statement, a lock or
            # deadlock, a value past a limit under OperationalError too), or an answer
            # not understood: which write it was cannot be told here.
            raise _PipelineLost() from exc
        self.in_group.known = {}
        for entry, outcome in zip(run, outcomes, strict=True):
            if entry.error is not None:
                continue
            if outcome is SHARED:
                self._run_entry(db, entry, entry.shared)
            else:
                entry.result = outcome

    @staticmethod
    def _run_entry(db: psycopg.Connection, entry: Entry[Any], call: Callable[[], Any]) -> None:
        """``entry.result = call()``, or its error; raises ``_GroupLost`` if that error
        aborted the transaction."""
        try:
            entry.result = call()
        except Exception as exc:  # noqa: BLE001 - its caller gets it
            entry.error = exc
            if db.info.transaction_status == TransactionStatus.INERROR:
                raise _GroupLost(entry) from exc

    # -- units ---------------------------------------------------------------------------

    def _write_at_once(self, work: Callable[[Any], T]) -> T:
        """An online write outside a group (a delete): run again if the database undid it
        to break a deadlock, ``ONLINE_ATTEMPTS`` times in all, then 503 (``busy_error``).
        In a group, ``_run_group`` decides."""
        if getattr(self.in_group, "db", None) is not None:
            return super()._write_at_once(work)
        for attempt in range(1, ONLINE_ATTEMPTS + 1):
            try:
                return super()._write_at_once(work)
            except psycopg.OperationalError as exc:
                if not undone(exc):
                    raise
                if attempt == ONLINE_ATTEMPTS:
                    raise busy_error(exc, self.url) from exc
                log.info("an online write was undone to break a deadlock (%s); again", exc)
        raise AssertionError("unreachable")

    def _wait_for_creation(self, db: Connection, client_id: int, key: str) -> None:
        """A delete waits for a unit copying ``key``'s profile in and not committed yet: a
        placeholder of the profile, inserted unless one exists and deleted at once, waits
        for that unit's insert of the same key; the delete then reads the unit's profile.
        A unit that copies the key in after this waits for the delete instead, and sees
        its tombstone (``check_no_delete_missed``)."""
        if db.execute(SQL["postgres_profile_placeholder"], (client_id, key)).fetchone():
            db.execute(SQL["delete_profile"], (client_id, key))

    def _created_profiles(
        self, db: Connection, client_id: int, created: Sequence[tuple[str, int]]
    ) -> None:
        check_no_delete_missed(db, client_id, created)

    def _store_units(self, db: Connection, seq: int, units: Sequence[UnitSpec]) -> int:
        stored = 0
        with db.cursor().copy(SQL["postgres_copy_units"]) as copy:
            copy.set_types(["int8", "int4", "int4", "int4", "bytea"])
            for unit_no, unit in enumerate(units):
                copy.write_row((seq, unit_no, unit.first_line, unit.row_count, unit.body))
                stored += 1
        return stored

    def _lease_unit(
        self, db: Connection, owner: str, now_ms: int, lease_ms: int, paced: list[int]
    ) -> Sequence[Any] | None:
        params = {"now": now_ms, "owner": owner, "expires": now_ms + lease_ms, "paced": paced}
        pg = cast(psycopg.Connection[Any], db)
        found = pg.cursor(binary=True).execute(SQL["claim_unit"], params).fetchone()
        if found is None:
            return None
        body = read_body(pg, found[0], found[1], found[4] or 0)
        return (*found[:4], body, *found[5:])

    def _row_writer(
        self, db: Connection, client_id: int, now_ms: int, stored: set[str]
    ) -> RowWriter:
        return _Writer(cast(psycopg.Connection[Any], db), client_id, now_ms, stored)

    # -- what PostgreSQL cannot store: U+0000 ----------------------------------------------

    def _can_store(self, key: str) -> bool:
        return not has_nul(key)

    def _refuse_unstorable(self, *texts: str) -> None:
        refuse_nul(*texts)

    def _refuse_header(self, names: Sequence[str]) -> None:
        if has_nul(*names):
            raise BatchRejected(
                f"The header cannot be stored: {NUL_REASON} (an attribute name holds %00)."
            )

    def _storable_rows(
        self, rows: Sequence[DecodedRow], failures: Sequence[FailedRow]
    ) -> tuple[Sequence[DecodedRow], Sequence[FailedRow]]:
        refused = [row for row in rows if row_has_nul(row.id, row.attrs)]
        if not refused:
            return rows, failures
        kept = [row for row in rows if row not in refused]
        stopped = (FailedRow(row.line, row.id, NUL_REASON) for row in refused)
        return kept, sorted([*failures, *stopped], key=lambda failure: failure.line)

    def import_refusals(
        self, rows: Sequence[ImportRow], failures: Sequence[FailedRow]
    ) -> tuple[list[ImportRow], list[FailedRow]]:
        good, refused = [], list(failures)
        for row in rows:
            if has_nul(*row.aliases) or row_has_nul(row.key, row.attrs):
                refused.append(FailedRow(row.line, row.key[2:], NUL_REASON))
            else:
                good.append(row)
        return good, refused

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
