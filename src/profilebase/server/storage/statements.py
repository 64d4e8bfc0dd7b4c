"""Named SQL queries, one file per dialect: ``storage/<dialect>/sql/queries.sql``.

A file is a list of blocks, each ``-- name: <name>``, then comment lines saying what
the query does, then one statement in the dialect's own parameter style (``?`` for
SQLite, ``%s`` for PostgreSQL; named parameters where a query binds a mapping). Every
dialect defines the same names, so the logic that runs them is written once and a new
backend is one folder (``storage/<dialect>/``: its SQL and its classes); a name
starting with the dialect's name (``sqlite_``, ``postgres_``) belongs to that
backend's own mechanics and has no twin.
tests/test_queries_sql.py checks the names against each other and the code, and that
every query prepares on its backend. The migrations (``NNNN_name.sql`` beside the
file) are separate: ``migrations.py`` applies them.

What stays composed in Python, and why:

- SQL over tables named at run time (``tables.py``, ``<dialect>/tables.py``: copying a
  database, counting rows, ``PRAGMA table_info``): identifiers cannot be parameters,
  so the statement is built around ``tables.quoted`` names.
- ``sqlite_upsert_decoded_rows``: the client, key prefix and time of a unit are
  written into the statement as literals (``str.format``) so that ``executemany`` can
  bind the decoded rows as they are, without building a tuple per row.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources

#: The line that starts a query block.
NAME = re.compile(r"^-- name: ([a-z0-9_]+)[ \t]*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """The queries of a file by name: each statement without its comment lines at either
    end, or a final semicolon. Raises ``ValueError`` for a name defined twice."""
    pieces = NAME.split(text)
    found: dict[str, str] = {}
    for name, block in zip(pieces[1::2], pieces[2::2], strict=True):
        if name in found:
            raise ValueError(f"The query {name!r} is defined twice.")
        lines = block.strip().splitlines()
        while lines and (lines[0].startswith("--") or not lines[0].strip()):
            lines.pop(0)
        while lines and (lines[-1].startswith("--") or not lines[-1].strip()):
            lines.pop()
        found[name] = "\n".join(lines).rstrip().removesuffix(";")
    return found


@functools.cache
def load(dialect: str) -> Mapping[str, str]:
    """The named queries of ``dialect`` ('sqlite' or 'postgres'), read once."""
    folder = resources.files("profilebase.server.storage").joinpath(dialect, "sql")
    return parse(folder.joinpath("queries.sql").read_text(encoding="utf-8"))
