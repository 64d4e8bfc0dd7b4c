"""``TableAccess`` on PostgreSQL: the schema from the catalog, REPEATABLE READ snapshots read
through server-side cursors, identity sequences, and COPY for writing pages.

Backups of PostgreSQL are PostgreSQL's own business (``pg_dump``, base backups):
docs/deployment.md gives the procedure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from profilebase.errors import ConfigError
from profilebase.server.storage import redact
from profilebase.server.storage.tables import (
    NOT_COPIED,
    Column,
    Progress,
    SharedTables,
    Table,
    after_clause,
    quoted,
)

KINDS = {
    "smallint": "int",
    "integer": "int",
    "bigint": "int",
    "text": "text",
    "character varying": "text",
    "character": "text",
    "json": "json",
    "jsonb": "json",
    "bytea": "bytes",
    "real": "float",
    "double precision": "float",
    "numeric": "float",
}


class PostgresSnapshot:
    """One REPEATABLE READ, read-only transaction on a connection of its own."""

    def __init__(self, url: str, tables: Sequence[Table]) -> None:
        self.db = psycopg.connect(url)
        self.db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.db.read_only = True
        # The first query fixes the snapshot: the counts belong to it.
        self.counts = {
            t.name: int(self.db.execute(f"SELECT count(*) FROM {quoted(t.name)}").fetchone()[0])  # type: ignore[index]
            for t in tables
        }
        self.cursors = 0

    def count(self, table: Table) -> int:
        return self.counts[table.name]

    def rows(
        self, table: Table, columns: Sequence[str], after_key: tuple[Any, ...] | None
    ) -> Iterator[tuple[Any, ...]]:
        selected = [
            f"{quoted(c)}::text" if (table.column(c) or Column(c, "")).kind == "json" else quoted(c)
            for c in columns
        ]
        sql = f"SELECT {', '.join(selected)} FROM {quoted(table.name)}"
        if after_key is not None and table.key:
            sql += after_clause(table.key, "%s")
        if table.key:
            sql += " ORDER BY " + ", ".join(quoted(k) for k in table.key)
        self.cursors += 1
        with self.db.cursor(name=f"copy_{self.cursors}") as cursor:
            cursor.itersize = 2000
            cursor.execute(sql.encode(), after_key or ())
            for row in cursor:
                yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)

    def close(self) -> None:
        try:
            self.db.rollback()
        finally:
            self.db.close()


class PostgresTables(SharedTables):
    """``TableAccess`` for ``PostgresStore``."""

    stores_nul = False
    url: str

    def tables(self) -> list[Table]:
        found = []
        with self._read() as db:
            for name in self._table_names():
                if name in NOT_COPIED:
                    continue
                columns = tuple(
                    Column(str(column), KINDS.get(str(kind), "other"))
                    for column, kind in db.execute(self.sql["postgres_columns"], (name,))
                )
                qualified = quoted(name)
                key = tuple(
                    str(k) for (k,) in db.execute(self.sql["postgres_primary_key"], (qualified,))
                )
                references = frozenset(
                    str(r).strip('"')
                    for (r,) in db.execute(self.sql["postgres_references"], (qualified,))
                )
                found.append(Table(name, columns, key, references))
        return found

    def counters(self) -> dict[str, int]:
        found = {}
        with self._read() as db:
            for table, column in db.execute(self.sql["postgres_counted_columns"]).fetchall():
                value = db.execute(self.sql["postgres_counter"], (quoted(table), column)).fetchone()
                if value is not None and value[0] is not None:
                    found[str(table)] = int(value[0])
        return found

    def snapshot(self, tables: Sequence[Table]) -> PostgresSnapshot:
        return PostgresSnapshot(self.url, tables)

    def write_page(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        progress: Progress,
        clear_first: bool = False,
    ) -> None:
        # COPY writes identity columns as given, like OVERRIDING SYSTEM VALUE.
        copy = f"COPY {quoted(table.name)} ({', '.join(quoted(c) for c in columns)}) FROM STDIN"
        with self._write() as db:
            if clear_first:
                db.execute(f"DELETE FROM {quoted(table.name)}".encode())
            with db.cursor().copy(copy.encode()) as writer:
                for row in rows:
                    writer.write_row(row)
            self._record_progress(db, progress)

    def finish_copy(self, counters: dict[str, int]) -> None:
        with self._write() as db:
            for table, column in db.execute(self.sql["postgres_counted_columns"]).fetchall():
                largest = db.execute(
                    f"SELECT max({quoted(column)}) FROM {quoted(table)}".encode()
                ).fetchone()
                value = max(counters.get(str(table), 0), int((largest or [0])[0] or 0))
                if value:
                    db.execute(self.sql["postgres_set_counter"], (quoted(table), column, value))
            db.execute(self.sql["drop_copy_progress"])

    def backup(self, path: str) -> None:
        raise ConfigError(
            "profilebase backup copies SQLite databases; back up PostgreSQL with its own "
            f"tools: pg_dump --format=custom --file {path} '{redact(self.url)}' "
            "(restore with pg_restore), or a base backup; see docs/deployment.md."
        )
