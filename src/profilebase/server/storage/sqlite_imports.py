"""SQLite's SQL for applying profile imports (``imports.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from profilebase.server.storage.imports import ImportQueries
from profilebase.server.storage.sqlite_profiles import json_list


class SQLiteImports(ImportQueries):
    """One writer at a time (``BEGIN IMMEDIATE``): nothing needs locking."""

    IN_KEYS = "IN (SELECT value FROM json_each(?))"
    ATTRS = "attrs"
    SIZE = "length(CAST(attrs AS BLOB))"
    UPSERT = """
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (client_id, pkey) DO UPDATE SET
    attrs = CASE WHEN profiles.max_seq < excluded.created_seq
                 THEN json_patch(profiles.attrs, excluded.attrs)
                 ELSE pb_merge(profiles.attrs, excluded.attrs) END,
    created_seq = min(profiles.created_seq, excluded.created_seq),
    max_seq = max(profiles.max_seq, excluded.max_seq),
    modified_at = max(profiles.modified_at, excluded.modified_at)
"""

    def keys_param(self, keys: Sequence[str]) -> str:
        return json_list(list(keys))
