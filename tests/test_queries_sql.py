"""The named queries of both dialects (storage/<dialect>/sql/queries.sql) match each other and
the code, and every one of them is valid SQL on a migrated database of its backend."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from profilebase.server.storage import open_store, statements

STORAGE = Path(statements.__file__).parent
DIALECTS = ("sqlite", "postgres")
#: How the code names a query: ``self.sql["name"]`` or ``SQL["name"]``.
USE = re.compile(r"""\b(?:sql|SQL)\["([a-z0-9_]+)"\]""")


def used_names() -> set[str]:
    return {name for path in STORAGE.rglob("*.py") for name in USE.findall(path.read_text())}


def own(dialect: str) -> set[str]:
    """The names of a dialect's own mechanics: they start with its name."""
    return {name for name in statements.load(dialect) if name.startswith(dialect + "_")}


def test_both_dialects_define_the_same_names():
    """Every name without a dialect's prefix is defined by both files, and a prefixed name
    only by its own dialect."""
    sqlite, postgres = (set(statements.load(d)) - own(d) for d in DIALECTS)
    assert sqlite == postgres, (
        f"only in sqlite: {sorted(sqlite - postgres)}; only in postgres: {sorted(postgres - sqlite)}"
    )
    for dialect in DIALECTS:
        others = [d for d in DIALECTS if d != dialect]
        strays = {n for n in statements.load(dialect) for o in others if n.startswith(o + "_")}
        assert not strays, f"{dialect} defines another dialect's queries: {sorted(strays)}"


def test_every_query_is_used_and_every_used_query_exists():
    """The code runs every query the files define, and names none they lack."""
    defined = set().union(*(statements.load(d) for d in DIALECTS))
    used = used_names()
    assert used, "the pattern finds no use of a named query: the test is broken"
    assert sorted(defined - used) == [], "defined but never used"
    assert sorted(used - defined) == [], "used but not defined"


def test_a_query_file_parses_into_named_statements():
    """Comment lines around a statement and a final semicolon are not part of it; a name
    defined twice is an error."""
    text = "-- header\n\n-- name: one\n-- what it does\nSELECT 1;\n-- section --\n\n-- name: two\nSELECT ?\n"
    assert statements.parse(text) == {"one": "SELECT 1", "two": "SELECT ?"}
    with pytest.raises(ValueError, match="'one' is defined twice"):
        statements.parse(text + "-- name: one\nSELECT 2\n")


def sqlite_parameters(sql: str) -> tuple[object, ...] | dict[str, object]:
    """NULLs for every parameter of a SQLite statement: ``:name``, ``?N`` or ``?``."""
    names = re.findall(r"(?<![:\w]):([a-z_]+)", sql)
    if names:
        return dict.fromkeys(names)
    numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
    return (None,) * (max(numbered) if numbered else sql.count("?"))


def postgres_prepared(sql: str) -> str:
    """A psycopg statement with ``$n`` parameters, for ``PREPARE``: ``%s``, ``%b`` and each
    distinct ``%(name)s`` become ``$1``, ``$2``…; ``%%`` becomes ``%``."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "%%":
            return "%"
        key = match.group(1) or f"#{len(numbers)}"
        numbers.setdefault(key, len(numbers) + 1)
        return f"${numbers[key]}"

    return re.sub(r"%%|%\((\w+)\)s|%[sb]", number, sql)


#: Statements PostgreSQL cannot PREPARE (utility statements): they are run instead, on the
#: test's own fresh database, where they change nothing that matters.
POSTGRES_RUN = re.compile(r"^(BEGIN|COMMIT|CREATE|DROP|COPY)\b")


def test_every_query_prepares_on_its_backend(database_url: str):
    """Each query of the backend's file is valid against the migrated schema: SQLite
    EXPLAINs it with NULL parameters, PostgreSQL PREPAREs it (utility statements run)."""
    store = open_store(database_url)
    try:
        store.migrate()
        dialect = "sqlite" if database_url.startswith("sqlite") else "postgres"
        queries = dict(statements.load(dialect))
        failures = []
        if dialect == "sqlite":
            db = store._open()  # type: ignore[attr-defined]  # with pb_merge
            db.execute(queries["create_copy_progress"])
            for name, sql in queries.items():
                text = sql.format(client_id=0, prefix="p:", now_ms=0) if "{prefix}" in sql else sql
                try:
                    db.execute("EXPLAIN " + text, sqlite_parameters(text))
                except Exception as exc:
                    failures.append(f"{name}: {exc}")
            db.close()
        else:
            import psycopg

            with psycopg.connect(database_url, autocommit=True) as db:
                db.execute(queries["create_copy_progress"])
                # Utility statements last, DROP the very last: the rest needs its table.
                order = sorted(
                    queries.items(), key=lambda q: (bool(POSTGRES_RUN.match(q[1])), "DROP" in q[1])
                )
                for number, (name, sql) in enumerate(order):
                    try:
                        if sql.startswith("COPY") and "FROM STDIN" in sql:
                            with db.cursor().copy(sql):
                                pass  # no rows
                        elif POSTGRES_RUN.match(sql):
                            db.execute(sql)
                            if sql.startswith("BEGIN"):
                                db.execute(queries["end_snapshot"])
                        else:
                            db.execute(f"PREPARE q{number} AS {postgres_prepared(sql)}")
                    except psycopg.Error as exc:
                        failures.append(f"{name}: {str(exc).strip()}")
        assert failures == []
        assert len(queries) > 100  # the file was read, not an empty mapping
    finally:
        store.close()
