"""The embedded backend, SQLite: the store (``store.py``), how it writes an import unit
(``imports.py``), its catalog for copies and backups (``tables.py``), and its SQL
(``sql/queries.sql`` and the migrations ``sql/NNNN_name.sql``)."""

from profilebase.server.storage.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
