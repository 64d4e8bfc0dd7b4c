"""The shared backend, PostgreSQL: the store (``store.py``), the group commit of its online
writes (``groups.py``), how it writes an import unit (``imports.py``), its catalog for copies
(``tables.py``), and its SQL
(``sql/queries.sql`` and the migrations ``sql/NNNN_name.sql``)."""

from profilebase.server.storage.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
