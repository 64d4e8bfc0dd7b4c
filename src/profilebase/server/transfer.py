"""Copying everything a server holds to another database, on any backend: ``profilebase copy``.

The tables come from the databases themselves (``storage/tables.py``), so whatever
migrations add is copied too. Steps:

1. Both databases are migrated; they must then have applied the same migrations.
2. Every table of the source must exist on the target with every column.
3. Start or resume: a target holding a copy's progress from the same source goes
   on from there; otherwise the target must be empty, unless ``overwrite`` says to
   delete its rows first.
4. One snapshot of the source is read (its row counts taken inside it), table by
   table in dependency order, rows in key order, in pages. Each page is written
   to the target together with the key it reached, in one transaction: a copy
   killed at any moment resumes after its last page, and nothing is written twice.
5. The target's counters are set past every copied value and past the source's
   own counters (a purged write's number is never handed out again), and the row
   counts of both sides are compared.

The source keeps serving reads throughout; writes it takes after the snapshot
began are not in the copy (docs/deployment.md: stop writers first).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from profilebase.errors import CopyRefused
from profilebase.server.storage import Store
from profilebase.server.storage.tables import (
    Progress,
    Snapshot,
    Table,
    TableAccess,
    copy_order,
)

#: Rows per page unless told otherwise.
PAGE_ROWS = 2000
#: A page ends early once its values hold this many characters (profiles are up to 2 MB).
PAGE_CHARS = 8_000_000
#: What replaces U+0000 on a backend that cannot store it, with ``replace_nul``.
NUL_REPLACEMENT = "\ufffd"

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CopyReport:
    """What a copy did."""

    #: Rows of each table on the target at the end (equal to the source's).
    rows: dict[str, int]
    #: True when the copy went on from an interrupted one.
    resumed: bool
    #: Values whose U+0000 was replaced (``replace_nul``).
    replaced_nul: int

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def access(store: Store, role: str) -> TableAccess:
    if not isinstance(store, TableAccess):
        raise CopyRefused(f"The {role} database's backend cannot be copied.")
    return store


class Copy:
    """One run of a copy from ``source`` into ``target``."""

    def __init__(
        self,
        source: Store,
        target: Store,
        source_name: str,
        *,
        overwrite: bool = False,
        page_rows: int = PAGE_ROWS,
        replace_nul: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.source = access(source, "source")
        self.target = access(target, "target")
        self.source_name = source_name
        self.overwrite = overwrite
        self.page_rows = max(1, page_rows)
        self.replace_nul = replace_nul
        self.on_progress = on_progress or (lambda table, done, total: None)
        self.replaced = 0
        self.target_tables: dict[str, Table] = {}

    def run(self) -> CopyReport:
        """Steps 1 to 5 of the module docstring."""
        tables = self.check_schema()
        resumed = self.start(tables)
        progress = {p.table: p for p in self.target.copy_progress()}
        snapshot = self.source.snapshot(tables)
        try:
            expected = {t.name: snapshot.count(t) for t in tables}
            total = sum(expected.values())
            done = sum(p.copied for p in progress.values() if p.table in expected)
            self.on_progress("", done, total)
            for table in copy_order(tables):
                done = self.copy_table(snapshot, table, progress.get(table.name), done, total)
        finally:
            snapshot.close()
        found = self.target.row_counts(tables)
        wrong = {
            name: (rows, found[name]) for name, rows in expected.items() if found[name] != rows
        }
        if wrong:
            listed = "; ".join(
                f"{name}: {rows:,} in the source, {there:,} in the target"
                for name, (rows, there) in sorted(wrong.items())
            )
            raise CopyRefused(
                f"The copy does not match its source ({listed}): the source changed between "
                "runs. Stop every server and worker writing to the source, then copy again "
                "with --overwrite."
            )
        self.target.finish_copy(self.source.counters())
        return CopyReport(found, resumed, self.replaced)

    def check_schema(self) -> list[Table]:
        """Steps 1 and 2: the same migrations, every source column on the target."""
        mine, theirs = self.source.schema_versions(), self.target.schema_versions()
        if mine != theirs:
            raise CopyRefused(
                "The two databases have different migrations (source "
                f"{sorted(mine)}, target {sorted(theirs)}): copy with the profilebase release "
                "that last migrated the source."
            )
        target_tables = self.target_tables = {t.name: t for t in self.target.tables()}
        tables = self.source.tables()
        for table in tables:
            there = target_tables.get(table.name)
            missing = [c.name for c in table.columns if there is None or not there.column(c.name)]
            if missing:
                raise CopyRefused(
                    f"The target has no column(s) {', '.join(missing)} of table {table.name}: "
                    "both databases need the same schema (profilebase migrate)."
                )
        return tables

    def start(self, tables: Sequence[Table]) -> bool:
        """Step 3; True when an interrupted copy is resumed."""
        if self.overwrite:
            self.target.start_copy(self.source_name, tables, wipe=True)
            return False
        progress = self.target.copy_progress()
        if progress:
            sources = {p.source for p in progress}
            if sources != {self.source_name}:
                raise CopyRefused(
                    "The target holds an interrupted copy from "
                    f"{', '.join(sorted(sources))}: run that copy again to finish it, or give "
                    "--overwrite to start this one afresh."
                )
            return True
        counts = self.target.row_counts(tables)
        filled = {name: rows for name, rows in counts.items() if rows}
        if filled:
            listed = ", ".join(f"{name} {rows:,}" for name, rows in sorted(filled.items()))
            raise CopyRefused(
                f"The target database is not empty (rows: {listed}). Copy into an empty "
                "database, or give --overwrite to delete the target's rows first."
            )
        self.target.start_copy(self.source_name, tables, wipe=False)
        return False

    def copy_table(
        self, snapshot: Snapshot, table: Table, progress: Progress | None, done: int, total: int
    ) -> int:
        """Step 4 for one table; returns the rows copied so far in all."""
        if progress is not None and progress.done:
            return done
        keyed = bool(table.key)
        # A table without a key cannot say where it stopped: it is copied again whole.
        after = progress.after_key if progress is not None and keyed else None
        copied = progress.copied if progress is not None and keyed else 0
        if progress is not None and not keyed:
            done -= progress.copied
        clear_first = progress is not None and not keyed
        columns = [*table.key, *(c.name for c in table.columns if c.name not in table.key)]
        kinds = [self.kind(table, name) for name in columns]
        page: list[list[Any]] = []
        chars = 0
        for row in snapshot.rows(table, columns, after):
            values = [self.value(table, row, i, kinds[i]) for i in range(len(row))]
            page.append(values)
            chars += sum(len(v) for v in values if isinstance(v, str | bytes))
            if len(page) >= self.page_rows or chars >= PAGE_CHARS:
                after = tuple(row[: len(table.key)]) if keyed else None
                copied += len(page)
                done += len(page)
                self.target.write_page(
                    table, columns, page, self.progress(table, after, copied, False), clear_first
                )
                self.on_progress(table.name, done, total)
                page, chars, clear_first = [], 0, False
        copied += len(page)
        done += len(page)
        self.target.write_page(
            table, columns, page, self.progress(table, after, copied, True), clear_first
        )
        self.on_progress(table.name, done, total)
        return done

    def progress(
        self, table: Table, after: tuple[Any, ...] | None, copied: int, done: bool
    ) -> Progress:
        return Progress(table.name, self.source_name, after, copied, done)

    def kind(self, table: Table, name: str) -> tuple[str, str]:
        """The column's kind on the source and on the target."""
        source = table.column(name)
        target = self.target_tables.get(table.name)
        there = target.column(name) if target is not None else None
        return (source.kind if source else "other", there.kind if there else "other")

    def value(self, table: Table, row: Sequence[Any], index: int, kinds: tuple[str, str]) -> Any:
        """A source value as the target stores it: JSON text compact where the target keeps
        text, U+0000 refused (or replaced) where the target cannot store it."""
        value = row[index]
        if not isinstance(value, str):
            return value
        source_kind, target_kind = kinds
        if source_kind == "json" and target_kind != "json":
            value = json.dumps(json.loads(value), ensure_ascii=False, separators=(",", ":"))
        if self.target.stores_nul:
            return value
        if target_kind == "json":
            if "u0000" not in value or not holds_nul(json.loads(value)):
                return value
            return self.nul(table, row, index, json.dumps(scrub(json.loads(value))))
        if "\x00" not in value:
            return value
        return self.nul(table, row, index, value.replace("\x00", NUL_REPLACEMENT))

    def nul(self, table: Table, row: Sequence[Any], index: int, replaced: Any) -> Any:
        if self.replace_nul:
            self.replaced += 1
            return replaced
        key = ", ".join(repr(v) for v in row[: len(table.key)]) or "?"
        raise CopyRefused(
            f"Row ({key}) of table {table.name} holds the character U+0000 (NUL), which the "
            "target (PostgreSQL) cannot store. Remove it on the source (for a profile: update "
            "or delete it) and run the copy again, which resumes; or copy with --replace-nul "
            f"to store {NUL_REPLACEMENT} in its place."
        )


def holds_nul(document: Any) -> bool:
    """True if a decoded JSON document has U+0000 in a key or a string."""
    if isinstance(document, str):
        return "\x00" in document
    if isinstance(document, list):
        return any(holds_nul(item) for item in document)
    if isinstance(document, dict):
        return any("\x00" in key or holds_nul(item) for key, item in document.items())
    return False


def scrub(document: Any) -> Any:
    """The document with every U+0000 replaced."""
    if isinstance(document, str):
        return document.replace("\x00", NUL_REPLACEMENT)
    if isinstance(document, list):
        return [scrub(item) for item in document]
    if isinstance(document, dict):
        return {scrub(key): scrub(item) for key, item in document.items()}
    return document
