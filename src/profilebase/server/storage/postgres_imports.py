"""PostgreSQL's SQL for applying profile imports (``imports.py``).

The unit's row is locked first, then its existing profiles in key order, then new
ones are inserted in key order: the order ``apply_unit`` takes its locks in.
"""

from __future__ import annotations

from collections.abc import Sequence

from profilebase.models import FailedRow
from profilebase.server.storage.imports import ImportQueries, ImportRow
from profilebase.server.storage.postgres_profiles import NUL_REASON, has_nul, row_has_nul


class PostgresImports(ImportQueries):
    """Profiles are locked in key order; text cannot hold U+0000."""

    IN_KEYS = "= ANY(?)"
    LOCK_UNIT = " FOR UPDATE"
    LOCK_PROFILES = " ORDER BY pkey FOR UPDATE"
    ATTRS = "attrs::text"
    SIZE = "octet_length(attrs::text)"
    UPSERT = """
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES (?, ?, ?::jsonb, ?, ?, ?)
ON CONFLICT (client_id, pkey) DO UPDATE SET
    attrs = CASE WHEN profiles.max_seq < excluded.created_seq
                 THEN profiles.attrs || excluded.attrs
                 ELSE pb_merge(profiles.attrs, excluded.attrs) END,
    created_seq = least(profiles.created_seq, excluded.created_seq),
    max_seq = greatest(profiles.max_seq, excluded.max_seq),
    modified_at = greatest(profiles.modified_at, excluded.modified_at)
"""

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
