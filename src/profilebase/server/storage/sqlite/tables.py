"""``TableAccess`` on SQLite: the schema from ``sqlite_master`` and ``PRAGMA table_info``,
snapshots on a connection of their own, AUTOINCREMENT counters, and online backups.

A snapshot is one read transaction: in WAL mode writers go on meanwhile and the
reader keeps seeing the database as it was when the snapshot began.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from profilebase.errors import ConfigError
from profilebase.server.storage.tables import (
    NOT_COPIED,
    Column,
    Progress,
    SharedTables,
    Table,
    after_clause,
    quoted,
)


def kind_of(declared: str) -> str:
    """The kind of a column from its declared type (SQLite's affinity rules)."""
    upper = declared.upper()
    if "INT" in upper:
        return "int"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if "BLOB" in upper or not upper:
        return "bytes"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "float"
    return "other"


#: SQLite keeps a unit's lines in ``unit_bodies`` (migration 0005), PostgreSQL in
#: ``batch_units.body``: a copy reads and writes them as ``batch_units.body`` on both.
KEPT_APART = "unit_bodies"


def selected(table: str, column: str) -> str:
    """The expression a copy reads ``column`` of ``table`` with."""
    if (table, column) == ("batch_units", "body"):
        return (
            "coalesce(body, (SELECT b.body FROM unit_bodies b WHERE b.batch_seq = "
            "batch_units.batch_seq AND b.unit_no = batch_units.unit_no)) AS body"
        )
    return quoted(column)


class SQLiteSnapshot:
    """One read transaction over the whole file."""

    def __init__(self, db: sqlite3.Connection, tables: Sequence[Table]) -> None:
        self.db = db
        db.execute("BEGIN")
        # The first read fixes the snapshot: the counts belong to it.
        self.counts = {
            t.name: int(db.execute(f"SELECT count(*) FROM {quoted(t.name)}").fetchone()[0])
            for t in tables
        }

    def count(self, table: Table) -> int:
        return self.counts[table.name]

    def rows(
        self, table: Table, columns: Sequence[str], after_key: tuple[Any, ...] | None
    ) -> Iterator[tuple[Any, ...]]:
        order = ", ".join(quoted(k) for k in table.key) or "rowid"
        listed = ", ".join(selected(table.name, c) for c in columns)
        sql = f"SELECT {listed} FROM {quoted(table.name)}"
        if after_key is not None and table.key:
            sql += after_clause(table.key, "?")
        yield from self.db.execute(sql + f" ORDER BY {order}", after_key or ())

    def close(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        finally:
            self.db.close()


class SQLiteTables(SharedTables):
    """``TableAccess`` for ``SQLiteStore``."""

    stores_nul = True
    path: str

    def _open(self) -> sqlite3.Connection:
        raise NotImplementedError  # SQLiteStore's

    def tables(self) -> list[Table]:
        found = []
        with self._read() as db:
            for name in self._table_names():
                if name in NOT_COPIED or name == KEPT_APART or name.startswith("sqlite_"):
                    continue
                info = db.execute(f"PRAGMA table_info({quoted(name)})").fetchall()
                columns = tuple(Column(str(row[1]), kind_of(str(row[2]))) for row in info)
                key = tuple(str(row[1]) for row in sorted(info, key=lambda r: r[5]) if row[5])
                references = frozenset(
                    str(row[2]) for row in db.execute(f"PRAGMA foreign_key_list({quoted(name)})")
                )
                found.append(Table(name, columns, key, references))
        return found

    def counters(self) -> dict[str, int]:
        if not self._has_table("sqlite_sequence"):
            return {}
        return {str(name): int(seq) for name, seq in self._all(self.sql["sqlite_counters"])}

    def snapshot(self, tables: Sequence[Table]) -> SQLiteSnapshot:
        return SQLiteSnapshot(self._open(), tables)

    def write_page(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        progress: Progress,
        clear_first: bool = False,
    ) -> None:
        marks = ", ".join("?" for _ in columns)
        insert = (
            f"INSERT INTO {quoted(table.name)} ({', '.join(quoted(c) for c in columns)}) "
            f"VALUES ({marks})"
        )
        with self._write() as db:
            if clear_first:
                db.execute(f"DELETE FROM {quoted(table.name)}")
            db.cursor().executemany(insert, rows)
            if table.name == "batch_units":  # the lines go where this backend keeps them
                db.execute(self.sql["sqlite_move_copied_bodies"])
                db.execute(self.sql["sqlite_clear_copied_bodies"])
            self._record_progress(db, progress)

    def finish_copy(self, counters: dict[str, int]) -> None:
        with self._write() as db:
            autoincrement = [
                str(name) for (name,) in db.execute(self.sql["sqlite_autoincrement_tables"])
            ]
            for name in autoincrement:
                largest = db.execute(f"SELECT max(rowid) FROM {quoted(name)}").fetchone()[0]
                value = max(counters.get(name, 0), int(largest or 0))
                if not value:
                    continue
                changed = db.execute(self.sql["sqlite_raise_counter"], (value, name)).rowcount
                if not changed:
                    db.execute(self.sql["sqlite_insert_counter"], (name, value))
            db.execute(self.sql["drop_copy_progress"])

    def backup(self, path: str) -> None:
        """SQLite's online backup API, in one step: one read transaction, so the copy is
        the database at one moment while writers go on. Written beside ``path`` first and
        renamed into place, so ``path`` is never a half-written file."""
        if os.path.exists(path):
            raise ConfigError(
                f"{path} exists already: give the backup a new file name (a backup never "
                "overwrites a file)."
            )
        partial = path + ".partial"
        source = self._open()
        try:
            target = sqlite3.connect(partial)
            try:
                source.backup(target)
                problem = target.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                target.close()
        except (sqlite3.Error, OSError) as exc:
            if os.path.exists(partial):
                os.unlink(partial)
            raise ConfigError(f"Cannot write the backup to {path}: {exc}.") from None
        finally:
            source.close()
        if problem != "ok":
            os.unlink(partial)
            raise ConfigError(f"The backup failed its integrity check ({problem}); try again.")
        os.replace(partial, path)
