"""Whole tables, for copying a database to another backend and for backups.

``TableAccess`` is what ``transfer.py`` asks of a store: the migrated tables as
the database itself describes them (never a list kept here, so a table or column
that a later migration adds is copied without a change), a snapshot to read them
from in key order, page writes that record their progress in the same
transaction, and the counters (identity sequences, SQLite's AUTOINCREMENT) that
must go on past every copied value. ``sqlite/tables.py`` and
``postgres/tables.py`` implement it for their backend.
"""

from __future__ import annotations

import graphlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from profilebase.server.storage.queries import Connection, SharedQueries

#: Tables no copy carries: the schema's own record, the copy's, and SQLite's internals.
NOT_COPIED = frozenset({"schema_migrations", "copy_progress"})


@dataclass(frozen=True)
class Column:
    """A column and the kind of value it holds, as far as copying cares."""

    name: str
    #: ``int``, ``float``, ``text``, ``json``, ``bytes`` or ``other``.
    kind: str


@dataclass(frozen=True)
class Table:
    """A table as the database describes it."""

    name: str
    columns: tuple[Column, ...]
    #: The primary key's columns, in key order; () when the table has none.
    key: tuple[str, ...]
    #: Tables this one's foreign keys reference: they are copied first.
    references: frozenset[str] = frozenset()

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Progress:
    """How far a copy into this database got with one table."""

    table: str
    source: str
    #: The key of the last row copied (JSON list), or None before the first page.
    after_key: tuple[Any, ...] | None
    copied: int
    done: bool


class Snapshot(Protocol):
    """A consistent read of a whole database, table by table."""

    def count(self, table: Table) -> int:
        """Rows of ``table`` in the snapshot."""
        ...

    def rows(
        self, table: Table, columns: Sequence[str], after_key: tuple[Any, ...] | None
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of ``table`` (``columns`` of them, key columns first) in key order,
        after ``after_key`` if given; JSON values as text, binary values as bytes."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TableAccess(Protocol):
    """Whole-table reads and writes of one database (both backends' stores have them)."""

    #: False where text cannot hold U+0000 (PostgreSQL).
    stores_nul: bool

    def tables(self) -> list[Table]:
        """The migrated tables, copy bookkeeping excluded, in name order."""
        ...

    def schema_versions(self) -> set[int]:
        """The versions of the migrations applied to this database."""
        ...

    def counters(self) -> dict[str, int]:
        """Per table, the last value its counter handed out (identity, AUTOINCREMENT)."""
        ...

    def snapshot(self, tables: Sequence[Table]) -> Snapshot:
        """Start a consistent read; its counts are taken at once, inside it."""
        ...

    def row_counts(self, tables: Sequence[Table]) -> dict[str, int]:
        """Rows of each table now."""
        ...

    def copy_progress(self) -> list[Progress]:
        """What a copy into this database did so far; [] if none is under way."""
        ...

    def start_copy(self, source: str, tables: Sequence[Table], wipe: bool) -> None:
        """Record that a copy from ``source`` begins; with ``wipe``, delete every row of
        ``tables`` first, in the same transaction."""
        ...

    def write_page(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        progress: Progress,
        clear_first: bool = False,
    ) -> None:
        """Insert ``rows`` and record ``progress``, in one transaction; ``clear_first``
        deletes the table's rows before (a table without a key is copied again whole)."""
        ...

    def finish_copy(self, counters: dict[str, int]) -> None:
        """Set each table's counter at least to ``counters[table]`` and to its largest
        value, and forget the copy's progress."""
        ...

    def backup(self, path: str) -> None:
        """Write a consistent copy of the database to the file ``path``."""
        ...


def copy_order(tables: Sequence[Table]) -> list[Table]:
    """Tables in dependency order (referenced before referencing), ties by name."""
    by_name = {table.name: table for table in tables}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for table in sorted(tables, key=lambda t: t.name):
        sorter.add(table.name, *sorted(r for r in table.references if r in by_name))
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order += ready
        sorter.done(*ready)
    return [by_name[name] for name in order]


def key_text(key: Sequence[Any]) -> str:
    return json.dumps(list(key))


def key_of(text: str | None) -> tuple[Any, ...] | None:
    return None if text is None else tuple(json.loads(text))


def quoted(name: str) -> str:
    """An identifier as SQL writes it, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def after_clause(key: Sequence[str], placeholder: str) -> str:
    """``WHERE (k1, k2) > (?, ?)``: the rows after a key, in key order."""
    columns = ", ".join(quoted(k) for k in key)
    marks = ", ".join(placeholder for _ in key)
    return f" WHERE ({columns}) > ({marks})"


class SharedTables(SharedQueries):
    """The parts of ``TableAccess`` every backend shares: the progress table, the schema
    versions, and clearing and counting tables."""

    def copy_progress(self) -> list[Progress]:
        if not self._has_table("copy_progress"):
            return []
        return [
            Progress(name, source, key_of(after), int(copied), bool(done))
            for name, source, after, copied, done in self._all(self.sql["copy_progress"])
        ]

    def start_copy(self, source: str, tables: Sequence[Table], wipe: bool) -> None:
        with self._write() as db:
            db.execute(self.sql["create_copy_progress"])
            if wipe:
                for table in reversed(copy_order(tables)):
                    db.execute(f"DELETE FROM {quoted(table.name)}")
                db.execute(self.sql["forget_copy_progress"])

    def row_counts(self, tables: Sequence[Table]) -> dict[str, int]:
        with self._read() as db:
            return {
                t.name: int(db.execute(f"SELECT count(*) FROM {quoted(t.name)}").fetchone()[0])
                for t in tables
            }

    def _record_progress(self, db: Connection, progress: Progress) -> None:
        db.execute(
            self.sql["record_copy_progress"],
            (
                progress.table,
                progress.source,
                None if progress.after_key is None else key_text(progress.after_key),
                progress.copied,
                int(progress.done),
            ),
        )

    def schema_versions(self) -> set[int]:
        return {int(v) for (v,) in self._all(self.sql["schema_versions"])}

    def _has_table(self, name: str) -> bool:
        return any(name == table for table in self._table_names())

    def _table_names(self) -> list[str]:
        """Every table of the database, bookkeeping included."""
        return [str(name) for (name,) in self._all(self.sql["table_names"])]
