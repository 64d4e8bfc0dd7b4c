"""How SQLite writes an import unit's profiles and links (``imports.py``): ``executemany``."""

from __future__ import annotations

from collections.abc import Sequence

from profilebase.server.storage.imports import Change, ImportQueries
from profilebase.server.storage.queries import Connection


class SQLiteImports(ImportQueries):
    """One writer at a time (``BEGIN IMMEDIATE``): nothing needs locking."""

    def _upsert(self, db: Connection, client_id: int, ordered: Sequence[Change]) -> None:
        db.cursor().executemany(
            self.sql["sqlite_upsert_profile"],
            [(client_id, c.key, c.attrs, c.min_seq, c.max_seq, c.modified_ms) for c in ordered],
        )

    def _link(self, db: Connection, client_id: int, links: Sequence[tuple[str, str, int]]) -> None:
        db.cursor().executemany(
            self.sql["sqlite_link_imported"], [(client_id, *link) for link in links]
        )
