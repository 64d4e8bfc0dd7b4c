"""The embedded backend: one SQLite file in WAL mode, one connection per thread.

SQLite has one writer at a time; every write transaction takes its turn in the
writers' queue (``writers``: a lock per process, a file lock across processes)
and starts with ``BEGIN IMMEDIATE``, so that readers never block and writers
wait for each other instead of failing. Unit decoding happens outside
transactions, so the write lock is held only for the database work itself.
Online writes (single updates, page calls, deletes) run on the store's writer
thread, those waiting together in one transaction, each in a savepoint (group
commit, ``writers.WriteGroups``); a fetch may be read on the event loop
(``get_profile_nowait``), on a connection that never waits.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec

from profilebase.errors import ConfigError, DatabaseUnavailable, StorageError, StorageFull
from profilebase.models import DAY_MS, Client, Profile, WriteKind
from profilebase.server.merge import DecodedRow, RowWriter, byte_size, merge_attrs
from profilebase.server.quota import MINUTE_MS
from profilebase.server.storage import migrations, statements
from profilebase.server.storage.base import UnitSpec, WouldWait
from profilebase.server.storage.batch_control import BatchControl
from profilebase.server.storage.clients import ClientQueries
from profilebase.server.storage.profiles import (
    ProfileQueries,
    profile_too_large,
    quota_refusal,
    shown_pc_id,
    window_with_one_more,
)
from profilebase.server.storage.queries import Connection
from profilebase.server.storage.records import ProfileRecord
from profilebase.server.storage.sqlite import checkpoints
from profilebase.server.storage.sqlite.apart import WriterLink
from profilebase.server.storage.sqlite.checkpoints import (
    BACKSTOP_PAGES,
    Checkpoints,
    checkpoint,
    no_autocheckpoint,
)
from profilebase.server.storage.sqlite.held import HeldWrites
from profilebase.server.storage.sqlite.imports import SQLiteImports
from profilebase.server.storage.sqlite.tables import SQLiteTables
from profilebase.server.storage.sqlite.writers import (
    BATCH_LOCK_SUFFIX,
    Call,
    WriteGroups,
    WriterQueue,
)

log = logging.getLogger("profilebase.server.storage")

#: The named queries of this backend (sql/queries.sql).
SQL = statements.load("sqlite")
T = TypeVar("T")

#: Online writes one group transaction takes at most (``SQLiteStore._run_group``).
GROUP_MOST = 64
#: Characters of stored JSON a fetch on the event loop reads at most (``get_profile_nowait``):
#: a larger profile is decoded in a thread, so that no request waits for it.
NOWAIT_PROFILE_CHARS = 64 * 1024

#: Retry-After of a refusal because another writer held the lock: it is usually soon free.
BUSY_RETRY = 2
#: SQLite result codes (primary, the low byte) that mean the file cannot be used right now.
UNUSABLE = {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_PERM,
}


_decode = msgspec.json.decode
_encode = msgspec.json.encode


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


#: Seconds a batch part leaves the write lock to writers waiting for it before the next
#: part of any worker may take it: they are woken at once but must be scheduled first.
ONLINE_TURN = 0.002

#: The page size of a new database file (SQLite's default). A commit writes every page it
#: changed to the WAL whole, and a checkpoint copies it back: a group of single updates on
#: random profiles changes one leaf page each, 16 KB of WAL apiece with 16 KB pages
#: (docs/design.md, "Pages of 4 KB"). A database made with other pages keeps them.
PAGE_BYTES = 4096
#: A worker checkpoints the WAL once its parts wrote this many bytes of profiles since
#: its last checkpoint: a quarter of the 16 MB past which a commit checkpoints by itself
#: (``checkpoints.AUTOCHECKPOINT_PAGES``), so that with a few
#: workers writing (and the pages' overhead) the WAL stays short, and other commits of the
#: store (claims, releases) seldom find it long enough to checkpoint it themselves.
CHECKPOINT_BYTES = 4 * 1024 * 1024


#: Bytes a unit's body is written in through blob I/O.
BLOB_PIECE = 1 << 20


def write_body(db: sqlite3.Connection, batch_seq: int, unit_no: int, body: bytes) -> None:
    """Store a unit's lines piece by piece (sqlite3 would copy them whole to bind them)."""
    rowid = db.execute(SQL["sqlite_insert_unit_body"], (batch_seq, unit_no, len(body))).lastrowid
    assert rowid is not None
    with db.blobopen("unit_bodies", "body", rowid) as blob:
        view = memoryview(body)
        for start in range(0, len(body), BLOB_PIECE):
            blob.write(view[start : start + BLOB_PIECE])


def read_body(db: sqlite3.Connection, batch_seq: int, unit_no: int) -> bytes:
    """A unit's lines, read straight into one bytes object."""
    found = db.execute(SQL["sqlite_unit_body_row"], (batch_seq, unit_no)).fetchone()
    if found is None:  # kept in the unit's row, as before migration 0005?
        kept = db.execute(SQL["sqlite_unit_body_inline"], (batch_seq, unit_no)).fetchone()
        if kept is None or kept[0] is None:
            raise StorageError(f"The lines of unit {batch_seq}/{unit_no} are missing.")
        return bytes(kept[0])
    with db.blobopen("unit_bodies", "body", found[0], readonly=True) as blob:
        return blob.read()


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE, then COMMIT on success, ROLLBACK otherwise."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")  # an error here is translated by _read


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
        sql = SQL["sqlite_upsert_decoded_rows"].format(
            client_id=int(self.client_id), prefix=prefix, now_ms=int(self.now_ms)
        )
        self.db.executemany(sql, rows)

    def flush(self) -> None:
        if self.pending:
            self.db.executemany(SQL["sqlite_upsert_profile"], self.pending)
            self.pending = []

    def tombstone_created(self, key: str, deleted_seq: int, created_seq: int) -> None:
        self.db.execute(
            SQL["set_tombstone_created"], (created_seq, self.client_id, key, deleted_seq)
        )

    def merged_size(self, key: str, row: DecodedRow) -> int:
        self.flush()
        found = self.db.execute(SQL["profile_attrs"], (self.client_id, key)).fetchone()
        return byte_size(row.attrs if found is None else merge_attrs(found[0], row.attrs))


class SQLiteStore(SQLiteTables, SQLiteImports, BatchControl, ClientQueries, ProfileQueries):
    """A ``Store`` on one SQLite database file."""

    backend = "sqlite"
    sql = SQL
    stores_nul = True

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
        self._writers = WriterQueue(path, timeout)
        #: Batch parts queue here first: one at a time joins the writers' queue.
        self._batch_writers = WriterQueue(path, timeout, BATCH_LOCK_SUFFIX)
        #: Online writes waiting at the same time share a transaction (group commit).
        self._groups = WriteGroups(self._run_group, GROUP_MOST)
        #: The connection of the group's transaction, on the writer thread.
        self._group_db: sqlite3.Connection | None = None
        #: What the group's single updates hold back until its commit (``held.py``).
        self._held: HeldWrites | None = None
        self._group_failure: BaseException | None = None
        #: Copies the WAL into the database after online writes, which do not.
        self._checkpoints = Checkpoints(self._read, self._writers.turn, timeout=timeout + 5)
        #: Bytes of profiles this store's parts wrote since its last checkpoint.
        self._unchecked = 0
        #: The database's page size, read as each connection opens (``_open``).
        self._page_bytes = PAGE_BYTES
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        #: The connection of reads that must not wait (``get_profile_nowait``), and its lock.
        self._nowait_db: sqlite3.Connection | None = None
        self._nowait = threading.Lock()
        #: Connections opened as ``_nowait_db`` so far (``changes_nowait``).
        self._nowait_opened = 0

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
            db.execute(f"PRAGMA page_size = {PAGE_BYTES}")  # only takes effect on a new file
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._page_bytes = checkpoints.page_bytes(db)  # PAGE_BYTES, unless made before
            autocheckpoint = checkpoints.pages(checkpoints.AUTOCHECKPOINT_PAGES, self._page_bytes)
            db.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
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
        """A write transaction: the writers' turn, then BEGIN IMMEDIATE, COMMIT on success,
        ROLLBACK otherwise; the turn ends with the transaction."""
        if self._groups.on_writer_thread():  # its group holds the turn: this would wait for ever
            raise RuntimeError("a write transaction opened by an online write")
        with self._read() as db, self._writers.turn(), _transaction(db):
            yield db

    def submit_write(self, call: Callable[..., T], *args: Any) -> Future[T]:
        return self._groups.submit(functools.partial(call, *args))

    def writer_apart(self, answer_timeout: float, log_format: str = "text") -> WriterLink | None:
        if self.path == ":memory:":  # a database no other process can open
            return None
        return WriterLink(
            self.path, self.synchronous, self.timeout, answer_timeout, GROUP_MOST, log_format
        )

    def serve_groups_here(self) -> None:
        """Make this thread the writer thread (``apart.serve_writes``)."""
        self._groups.serve_here()

    def run_group_here(self, calls: list[Call]) -> None:
        """Run ``calls`` as one group on this thread, the writer thread, and settle them."""
        self._run_group(lambda: calls)

    def _write_at_once(self, work: Callable[[Any], T]) -> T:
        """An online write: on the writer thread, in a savepoint of its group's transaction;
        from any other thread, handed to the writer thread and waited for."""
        if not self._groups.on_writer_thread():
            return self._groups.submit(lambda: self._write_at_once(work)).result()
        db = self._group_db
        if db is None:
            raise RuntimeError("an online write ran on the writer thread outside a group")
        mark = self._held_of(db).mark()
        db.execute("SAVEPOINT online_write")
        try:
            result = work(db)
        except Exception as exc:
            outage = isinstance(exc, sqlite3.Error) and storage_error(exc, self.path) is not None
            if outage or not db.in_transaction:  # the group fails with it (_run_group)
                self._group_failure = exc
                raise
            try:
                db.execute("ROLLBACK TO online_write")
                db.execute("RELEASE online_write")
            except sqlite3.Error as undo_failed:  # the group fails with it, nothing written
                self._group_failure = undo_failed
                raise undo_failed from exc
            self._held_of(db).undo(mark)
            raise
        db.execute("RELEASE online_write")
        return result

    def _live_key(
        self, db: Connection, client_id: int, key: str, expire_before_ms: int
    ) -> str | None:
        """As the shared one (the stored key ``key`` finds, None if no profile or an expired
        one, which is deleted), in one statement where nothing expires."""
        stored, modified = db.execute(
            SQL["sqlite_live_key"], {"client_id": client_id, "key": key}
        ).fetchone()
        return (
            str(stored) if self._alive(db, client_id, stored, modified, expire_before_ms) else None
        )

    def _alive(
        self,
        db: Connection,
        client_id: int,
        stored: str,
        modified: int | None,
        expire_before_ms: int,
    ) -> bool:
        """Whether the profile ``stored`` (last active at ``modified``, None if there is
        none) is live; an expired one is deleted."""
        if modified is None:
            return False
        return not (
            modified < expire_before_ms
            and self._expire_keys(db, client_id, [stored], expire_before_ms)
        )

    def _lock_for_write(self, db: Connection, client_id: int, keys: Sequence[str]) -> None:
        """Nothing to lock: ``BEGIN IMMEDIATE`` made this transaction the only writer, so
        the client's writes are ordered and its profiles stay as read until the commit."""

    # -- single updates in a group (held.py) -----------------------------------------------

    def _held_of(self, db: Connection) -> HeldWrites:
        """The held-back rows of the group whose transaction ``db`` runs: every online
        write on SQLite runs in one (``_write_at_once``)."""
        if self._held is None or db is not self._group_db:
            raise RuntimeError("an online write ran outside its group's transaction")
        return self._held

    def _find_to_update(
        self, db: Connection, client_id: int, key: str, expire_before_ms: int
    ) -> tuple[str, str | None] | None:
        """As the shared one, in one statement where nothing expires."""
        stored, modified, latest = db.execute(
            SQL["sqlite_find_to_update"], {"client_id": client_id, "key": key}
        ).fetchone()
        if not self._alive(db, client_id, stored, modified, expire_before_ms):
            return None
        shown = shown_pc_id(key, stored)
        if shown is None and latest is not None:
            shown = str(latest)[2:]
        return str(stored), shown

    def _new_write(
        self, db: Connection, client_id: int, kind: WriteKind, ref: str | None, now_ms: int
    ) -> int:
        """As the shared one; a run of single updates sharing a write ends here."""
        self._held_of(db).end_run()
        return super()._new_write(db, client_id, kind, ref, now_ms)

    def _update_seq(self, db: Connection, client_id: int, now_ms: int) -> int:
        """The next row of the group's run of this client's single updates, or the first
        row of a new write that starts one."""
        held = self._held_of(db)
        seq = held.next_in_run(client_id)
        if seq is None:
            seq = super()._update_seq(db, client_id, now_ms)
            held.start_run(client_id, seq)
        return seq

    def _take_update_quota(
        self, db: Connection, client: Client, now_ms: int, updates_per_day: int
    ) -> tuple[tuple[int, int], ...]:
        """As the shared one, with the stored window read once per group and client, and
        the updates counted written at the group's end (``_write_held``)."""
        held = self._held_of(db)
        day_start = (now_ms - DAY_MS) // MINUTE_MS
        stored = held.windows.get((client.id, day_start))
        if stored is None:
            used, oldest = db.execute(SQL["update_window"], (client.id, day_start)).fetchone()
            stored = held.windows[(client.id, day_start)] = (int(used), oldest)
        mine = list(held.counted_since(client.id, day_start))
        stored_used, stored_oldest = stored
        used = stored_used + len(mine)
        oldest = min(
            [*mine, *([] if stored_oldest is None else [int(stored_oldest)])], default=None
        )
        if used + 1 > updates_per_day:
            rows = db.execute(SQL["update_counts_since"], (client.id, day_start)).fetchall()
            rows += [(minute, 1) for minute in mine]
            raise quota_refusal(client, rows, updates_per_day, now_ms)
        held.counted.append((client.id, now_ms // MINUTE_MS))
        return window_with_one_more(used, oldest, now_ms)

    def _merge_values(self, db: Connection, params: dict[str, Any], max_profile_bytes: int) -> None:
        """In one statement: the merge returns the profile's size, and one over its limit
        raises after it. Every online write on SQLite runs in a savepoint of its group
        (``_write_at_once``), which then undoes the merge."""
        found = db.execute(SQL["merge_values"], params).fetchone()
        if found is not None and found[0] > max_profile_bytes:
            raise profile_too_large(found[0], max_profile_bytes)

    def _write_held(self, db: sqlite3.Connection, held: HeldWrites) -> None:
        """Write what the group held back: its updates' counts, one row per minute."""
        totals = held.totals()
        if totals:
            db.executemany(SQL["sqlite_count_updates"], totals)

    def _run_group(self, take: Callable[[], list[Call]]) -> None:
        """One group's transaction (``WriteGroups``, on the writer thread): the writers'
        turn, ``BEGIN IMMEDIATE``, every call ``take`` hands out, ``COMMIT``; then each
        call's future is settled, refusals included. A call that raises failed alone
        (``_write_at_once`` rolled its savepoint back). An outage (``storage_error``:
        busy, disk full, I/O), a transaction SQLite rolled back, or a failed commit fails
        every other call of the group, and nothing of it is written; waiting for the lock
        past the timeout fails every call waiting. The commit leaves the WAL to
        ``Checkpoints`` (``checkpoints.py``)."""
        calls: list[Call] = []
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with (
                self._read() as db,
                no_autocheckpoint(db, self._page_bytes, BACKSTOP_PAGES),
                self._writers.turn(),
                _transaction(db),
            ):
                held = HeldWrites()
                self._group_db, self._group_failure, self._held = db, None, held
                try:
                    calls = take()
                    for future, call in calls:
                        try:
                            outcomes.append((future, call(), None))
                        except Exception as exc:
                            if self._group_failure is not None:
                                raise self._group_failure from None
                            outcomes.append((future, None, exc))
                    self._write_held(db, held)
                finally:
                    self._group_db, self._held = None, None
        except BaseException as exc:
            own = {id(future): error for future, _, error in outcomes if error is not None}
            for future, _ in calls or take():
                if not future.done():
                    future.set_exception(own.get(id(future), exc))
            if not isinstance(exc, Exception):
                raise
            return
        # Refusals too only once the group is committed: what a reply reads next (the
        # quota's counts of a refused update) then includes the writes before it.
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        if self.path != ":memory:":  # one connection, and no WAL
            self._checkpoints.wrote(len(calls))

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        with self._read() as db:  # hands the connection back rolled back
            db.execute("BEGIN")
            yield db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        with self._nowait:
            if self._nowait_db is not None:
                idle.append(self._nowait_db)
                self._nowait_db = None
        self._groups.close()
        self._checkpoints.close()
        self._writers.close()
        self._batch_writers.close()
        for db in idle:
            try:
                db.close()
            except sqlite3.Error:
                pass

    # -- fetch ---------------------------------------------------------------------------

    def get_profile(self, client_id: int, key: str, expire_before_ms: int = 0) -> Profile | None:
        with self._read() as db:  # one statement: one snapshot
            record = self._profile_document(db, client_id, key, expire_before_ms, None)
        return None if record is None else record.profile()

    def get_profile_nowait(
        self, client_id: int, key: str, expire_before_ms: int = 0
    ) -> ProfileRecord | None:
        """The fetch, on a connection of its own that never waits: no busy timeout (in WAL
        a reader waits for no writer; SQLite answers busy only while a checkpoint or a
        recovery rewrites the WAL's index), and one caller at a time. Busy, another
        caller, any error or a large profile: ``WouldWait``, and the thread's path reads
        it (and reports an outage as that path does)."""
        return self._on_nowait_connection(
            lambda db: self._profile_document(
                db, client_id, key, expire_before_ms, NOWAIT_PROFILE_CHARS
            )
        )

    def changes_nowait(self) -> tuple[int, int]:
        """SQLite's ``data_version`` on the connection of ``get_profile_nowait``, which
        never writes: it changes when any connection of any process commits. With it, the
        number of that connection (a new one starts again from a small number)."""
        return self._on_nowait_connection(
            lambda db: (self._nowait_opened, db.execute("PRAGMA data_version").fetchone()[0])
        )

    def _on_nowait_connection(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """``read`` on the connection of reads that never wait. Every read made there must
        run its statements to the end (``fetchall``, or a statement of one row): one left
        unfinished keeps its snapshot open, and ``data_version`` would stop moving."""
        if not self._nowait.acquire(blocking=False):
            raise WouldWait
        try:
            if self._closed or self.path == ":memory:":
                raise WouldWait
            db = self._nowait_db
            try:
                if db is None:  # opened without the pragmas of _open, which may wait
                    db = self._nowait_db = sqlite3.connect(
                        self.path, isolation_level=None, check_same_thread=False, timeout=0
                    )
                    self._nowait_opened += 1
                return read(db)
            except (sqlite3.Error, StorageError):
                self._nowait_db = None
                if db is not None:
                    db.close()
                raise WouldWait from None
        finally:
            self._nowait.release()

    def _profile_document(
        self,
        db: sqlite3.Connection,
        client_id: int,
        key: str,
        expire_before_ms: int,
        most_chars: int | None,
    ) -> ProfileRecord | None:
        """The profile ``key`` finds, with its ids and provenance, in one statement;
        ``WouldWait`` if its stored JSON is longer than ``most_chars``."""
        found = db.execute(
            SQL["sqlite_profile_document"],
            {"client_id": client_id, "key": key, "before": expire_before_ms},
        ).fetchall()  # to the end: the statement's snapshot ends with it
        if not found:
            return None
        code, stored, attrs_json, modified, aliases, writes = found[0]
        if most_chars is not None and len(attrs_json) > most_chars:
            raise WouldWait
        return ProfileRecord(
            code,
            key,
            _decode(attrs_json),
            modified,
            [stored, *_decode(aliases)],
            {seq: (kind, ref) for seq, kind, ref in _decode(writes)},
        )

    def _export_connection(self) -> sqlite3.Connection:
        return self._open()

    def _list(self, items: Sequence[object]) -> str:
        """A JSON array, which the queries read with ``json_each`` (encoded by msgspec:
        a fraction of ``json.dumps``'s time, on every online write's path)."""
        return _encode(items).decode()

    def _run_script(self, db: Connection, script: str) -> None:
        for statement in migrations.split_statements(script):
            db.execute(statement)

    # -- units ---------------------------------------------------------------------------

    @contextmanager
    def _part_write(self, size: int) -> Iterator[sqlite3.Connection]:
        """Batch parts take turns among themselves first, so that at most one waits in the
        writers' queue; after a part, writers waiting there go first (``ONLINE_TURN``)
        rather than the next part (docs/design.md#concurrency-on-sqlite). A part's commit
        does not checkpoint the WAL inside the writers' turn: the worker does after it,
        once its parts wrote some ``CHECKPOINT_BYTES`` (``size`` is this part's)."""
        with self._read() as db:
            with self._batch_writers.turn():
                with (
                    no_autocheckpoint(db, self._page_bytes),
                    self._writers.turn(),
                    _transaction(db),
                ):
                    yield db
                if self._writers.others_waiting():
                    time.sleep(ONLINE_TURN)
            self._unchecked += size
            if self._unchecked >= CHECKPOINT_BYTES:
                self._unchecked = 0
                checkpoint(db)

    @contextmanager
    def _bulk_write(self) -> Iterator[sqlite3.Connection]:
        """Storing a batch's units (tens of MB) checkpoints them after the writers' turn,
        so that workers may claim them meanwhile."""
        with self._read() as db:
            with no_autocheckpoint(db, self._page_bytes), self._writers.turn(), _transaction(db):
                yield db
            checkpoint(db)

    def _store_units(self, db: Connection, seq: int, units: Sequence[UnitSpec]) -> int:
        stored = 0
        for unit_no, unit in enumerate(units):
            db.execute(SQL["sqlite_insert_unit"], (seq, unit_no, unit.first_line, unit.row_count))
            write_body(cast(sqlite3.Connection, db), seq, unit_no, unit.body)
            stored += 1
        return stored

    def _lease_unit(
        self, db: Connection, owner: str, now_ms: int, lease_ms: int, paced: list[int]
    ) -> Sequence[Any] | None:
        found = db.execute(
            SQL["claim_unit"],
            (owner, now_ms + lease_ms, now_ms, now_ms, now_ms, json.dumps(paced)),
        ).fetchone()
        if found is None:
            return None
        seq, unit_no, first_line, row_count, attempts = found
        batch = db.execute(SQL["sqlite_claimed_batch"], (seq,)).fetchone()
        body = read_body(cast(sqlite3.Connection, db), seq, unit_no)
        return (seq, unit_no, first_line, row_count, body, attempts, *batch)

    def _unit_body(self, db: Connection, seq: int, unit_no: int, inline: Any) -> bytes:
        if inline:
            return bytes(inline)
        return read_body(cast(sqlite3.Connection, db), seq, unit_no)

    def _forget_unit_body(self, db: Connection, seq: int, unit_no: int) -> None:
        db.execute(SQL["sqlite_forget_unit_body"], (seq, unit_no))

    def _row_writer(
        self, db: Connection, client_id: int, now_ms: int, stored: set[str]
    ) -> RowWriter:
        return _Writer(cast(sqlite3.Connection, db), client_id, now_ms)

    def _transient(self, error: BaseException) -> str | None:
        """SQLite's errors that waiting cures: a lock held too long, the file unreadable
        or unwritable for now, the disk full, memory short."""
        if not isinstance(error, sqlite3.Error):
            return None
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF  # the primary result code
        return TRANSIENT_CODES.get(code)
