"""How PostgreSQL writes an import unit's profiles and links (``imports.py``).

The unit's row is locked first, then its existing profiles in key order, then new
ones are inserted in key order: the order ``apply_unit`` takes its locks in.

A unit's profiles and links are each written by one statement: they travel as one
JSON array, as a batch unit's changes do (``store.py``), since PostgreSQL parses
one document faster than it runs thousands of statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring as json_string

from profilebase.server.storage.imports import Change, ImportQueries
from profilebase.server.storage.queries import Connection


class PostgresImports(ImportQueries):
    """Profiles are locked in key order, and written as one JSON document per unit."""

    def _upsert(self, db: Connection, client_id: int, ordered: Sequence[Change]) -> None:
        changes = ",".join(
            f"[{json_string(c.key)},{c.attrs},{c.min_seq},{c.max_seq},{c.modified_ms}]"
            for c in ordered
        )
        db.execute(self.sql["postgres_upsert_imported"], (client_id, f"[{changes}]"))

    def _link(self, db: Connection, client_id: int, links: Sequence[tuple[str, str, int]]) -> None:
        found = ",".join(
            f"[{json_string(alias)},{json_string(key)},{seq}]" for alias, key, seq in links
        )
        db.execute(self.sql["postgres_link_imported"], (client_id, f"[{found}]"))
