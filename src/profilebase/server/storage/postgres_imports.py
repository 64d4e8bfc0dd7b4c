"""PostgreSQL's SQL for applying profile imports (``imports.py``).

The unit's row is locked first, then its existing profiles in key order, then new
ones are inserted in key order: the order ``apply_unit`` takes its locks in.

A unit's profiles and links are each written by one statement: they travel as one
JSON array, as a batch unit's changes do (``postgres.py``), since PostgreSQL parses
one document faster than it runs thousands of statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring as json_string

from profilebase.models import FailedRow
from profilebase.server.storage.imports import Change, ImportQueries, ImportRow
from profilebase.server.storage.postgres_profiles import NUL_REASON, has_nul, row_has_nul
from profilebase.server.storage.queries import Connection


class PostgresImports(ImportQueries):
    """Profiles are locked in key order; text cannot hold U+0000."""

    IN_KEYS = "= ANY(?)"
    LOCK_UNIT = " FOR UPDATE"
    LOCK_PROFILES = " ORDER BY pkey FOR UPDATE"
    ATTRS = "attrs::text"
    SIZE = "octet_length(attrs::text)"

    #: Every change of a unit, from a JSON array of [pkey, attrs, min seq, max seq, ms].
    UPSERT_ALL = """
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
SELECT ?, c.value ->> 0, c.value -> 1, (c.value ->> 2)::bigint, (c.value ->> 3)::bigint,
       (c.value ->> 4)::bigint
FROM jsonb_array_elements(?::jsonb) AS c
ORDER BY (c.value ->> 0) COLLATE "C"
ON CONFLICT (client_id, pkey) DO UPDATE SET
    attrs = CASE WHEN profiles.max_seq < excluded.created_seq
                 THEN profiles.attrs || excluded.attrs
                 ELSE pb_merge(profiles.attrs, excluded.attrs) END,
    created_seq = least(profiles.created_seq, excluded.created_seq),
    max_seq = greatest(profiles.max_seq, excluded.max_seq),
    modified_at = greatest(profiles.modified_at, excluded.modified_at)
"""
    #: Every link of a unit, from a JSON array of [alias, pkey, seq].
    LINK_ALL = """
INSERT INTO identities (client_id, alias, pkey, linked_seq)
SELECT ?, c.value ->> 0, c.value ->> 1, (c.value ->> 2)::bigint
FROM jsonb_array_elements(?::jsonb) AS c
ORDER BY (c.value ->> 0) COLLATE "C"
"""

    def _upsert(self, db: Connection, client_id: int, ordered: Sequence[Change]) -> None:
        changes = ",".join(
            f"[{json_string(c.key)},{c.attrs},{c.min_seq},{c.max_seq},{c.modified_ms}]"
            for c in ordered
        )
        db.execute(self._sql(self.UPSERT_ALL), (client_id, f"[{changes}]"))

    def _link(self, db: Connection, client_id: int, links: Sequence[tuple[str, str, int]]) -> None:
        found = ",".join(
            f"[{json_string(alias)},{json_string(key)},{seq}]" for alias, key, seq in links
        )
        db.execute(self._sql(self.LINK_ALL + self.LINK_CONFLICT), (client_id, f"[{found}]"))

    def keys_param(self, keys: Sequence[str]) -> list[str]:
        return list(keys)

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
