"""`profilebase copy`: every table, every row, across backends and back; resumable after a
real kill; counters that go on past the copied values; refusals that say what to do."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import LiveServer, PostgresServer
from helpers import TEST_SECRET, batch_id_of, deliver, submit, update
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from profilebase import batchfile
from profilebase.cli import main
from profilebase.errors import CopyRefused
from profilebase.ids import check_id
from profilebase.models import KeyKind, Limits, now_ms
from profilebase.server import clients, tokens
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings
from profilebase.server.storage import Store, open_store, sqlite_path
from profilebase.server.transfer import Copy
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

# -- what is in a database, read without profilebase's own introspection ------------------


def table_names(url: str) -> list[str]:
    if url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(url)) as db:
            rows = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
    else:
        import psycopg

        with psycopg.connect(url) as db:
            rows = db.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            ).fetchall()
    return sorted(str(name) for (name,) in rows if name != "schema_migrations")


def normal(value: Any) -> Any:
    """A value compared across backends: JSON parsed, binary as bytes."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (but the schema's record), each as column -> value."""
    out: dict[str, list[dict[str, Any]]] = {}
    if url.startswith("sqlite"):
        db = sqlite3.connect(sqlite_path(url))
        execute = db.execute
    else:
        import psycopg

        db = psycopg.connect(url)  # type: ignore[assignment]
        execute = db.execute  # type: ignore[assignment]
    try:
        for name in table_names(url):
            cursor = execute(f'SELECT * FROM "{name}"')
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, map(normal, row), strict=True)) for row in cursor.fetchall()]
            out[name] = rows
    finally:
        db.close()
    # SQLite keeps a unit's lines apart, in unit_bodies; they are batch_units.body all the same.
    bodies = {(r["batch_seq"], r["unit_no"]): r["body"] for r in out.pop("unit_bodies", [])}
    for unit in out.get("batch_units", []):
        unit["body"] = unit["body"] or bodies.get((unit["batch_seq"], unit["unit_no"]))
    return {
        name: sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=repr))
        for name, rows in out.items()
    }


# -- databases -----------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/source.db"


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.clone(migrated=False)
    yield postgres.with_database(name)
    postgres.drop(name)


def opened(url: str) -> Store:
    store = open_store(url)
    store.migrate()
    return store


def copy(source: str, target: str, **options: Any) -> Any:
    a, b = opened(source), opened(target)
    try:
        return Copy(a, b, source, **options).run()
    finally:
        a.close()
        b.close()


#: The server secret of every server in these tests (a copy needs the source's secret).
SECRET = TEST_SECRET.key.decode()

LIMITS = Limits(
    max_batch_bytes=10**9, max_batch_rows=10**7, rows_per_day=10**9, max_profile_bytes=10**7
)


def accept(store: Store, body: bytes, code: str = "demo", unit_rows: int = 50) -> tuple[int, str]:
    client = store.get_client(code)
    assert client is not None
    intake = Intake(LIMITS, unit_rows)
    intake.feed(body)
    return store_batch(store, client, 2, intake.finish(), LIMITS, now_ms())


#: Tables the busy server below puts rows in (a table a later migration adds is compared
#: all the same; give it rows here so that the comparison means something).
FILLED = {
    "batch_failures", "batch_units", "batches", "clients", "identities", "idempotency_keys",
    "ingest_pacing", "profiles", "tokens", "tombstones", "update_counts", "writes",
}  # fmt: skip


def busy_server(url: str) -> str:
    """A server's database with something in every table; returns a token of client acme."""
    settings = Settings(database=url, workers=0, unit_rows=50, secret=SECRET)
    store = opened(url)
    prepare(store, settings)
    acme, _ = clients.create(store, "acme", True, now_ms())
    store.update_client("acme", limits={"rows_per_day": 12345, "business_hours": "always"})
    issued = tokens.issue(store, acme, TEST_SECRET, 3600, 0, now_ms())
    with (
        LiveServer(settings, store, workers=0) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        http.post(
            "/m2/demo/v2/profile/batchUpdate",
            content="batch=thirdPartyId,tier,city\ncrm-1,gold,München\ncrm-2,silver,東京\nbad+id,x\n",
            headers={"Idempotency-Key": "key-1"},
        )
        submit(http, b"batch=pcId,tier\nanon,bronze\n")
        Worker(store, settings).run(until_idle=True)
        deliver(http, {"requestId": "r1", "id": {"tntId": "t1", "thirdPartyId": "crm-1"}})
        update(http, mbox3rdPartyId="crm-2", profile_tier="platinum")
        queued = batch_id_of(submit(http, b"batch=thirdPartyId,n\nq-1,1\nq-2,2\n"))
        http.delete("/rest/v1/profiles/thirdPartyId/crm-2", params={"client": "demo"})  # tombstone
        submit(http, b"batch=thirdPartyId,n\nlater,1\n")
        cancelled = batch_id_of(submit(http, b"batch=thirdPartyId,n\nc-1,1\n"))
        http.post(f"/profilebase/v1/clients/demo/batches/{cancelled}/cancel", json={"by": "ops"})
    acme_batch = b"batch=thirdPartyId,n\n" + b"".join(b"a-%d,%d\n" % (i, i) for i in range(120))
    accept(store, acme_batch, "acme")
    # A worker pacing the clients leaves a unit running (its lease already run out) and a
    # pacing row.
    assert store.claim_unit("old-worker", now_ms(), 1, {1: 100, acme.id: 100}) is not None
    assert queued
    store.close()
    return issued.value


def test_a_busy_sqlite_server_copies_to_postgresql_and_back_identically(
    sqlite_url: str, postgres_url: str, tmp_path: Path
):
    """SQLite -> PostgreSQL -> SQLite: every table, every row, every value the same."""
    token = busy_server(sqlite_url)
    original = dump(sqlite_url)
    assert FILLED <= {name for name, rows in original.items() if rows}
    report = copy(sqlite_url, postgres_url)
    assert report.rows == {name: len(rows) for name, rows in original.items()}
    assert dump(postgres_url) == original
    back = f"sqlite:///{tmp_path}/back.db"
    copy(postgres_url, back)
    assert dump(back) == original

    # The copy serves: the token works, the queued batches complete, counters go on.
    # The copy's server runs with the source's secret, as deployment.md tells the operator.
    settings = Settings(
        database=postgres_url, workers=0, unit_rows=50, lease_seconds=0.001, secret=SECRET
    )
    store = opened(postgres_url)
    try:
        with (
            LiveServer(settings, store, workers=0) as server,
            httpx.Client(base_url=server.url) as http,
        ):
            auth = {"Authorization": f"Bearer {token}"}
            assert (
                http.get(
                    "/rest/v1/profiles/thirdPartyId/crm-1", params={"client": "acme"}, headers=auth
                ).status_code
                == 404
            )
            assert (
                http.get("/profilebase/v1/clients/acme", headers=auth).json()["limits"][
                    "rowsPerDay"
                ]
                == 12345
            )
            Worker(store, settings).run(until_idle=True)
            listed = http.get("/profilebase/v1/clients/demo/batches", params={"unfinished": "true"})
            assert listed.json()["batches"] == []
            fresh = batch_id_of(submit(http, b"batch=thirdPartyId,n\nnew,1\n"))
            top = max(row["seq"] for row in original["writes"])
            assert int(fresh.rsplit("-", 1)[1]) > top
            profile = http.get("/rest/v1/profiles/t1", params={"client": "demo"}).json()
            assert profile["profileAttributes"]["city"]["value"] == "München"
            assert profile["profileAttributes"]["tier"]["writtenBy"]["kind"] == "batch"
        clients.create(store, "another", False, now_ms())  # the clients counter went on too
    finally:
        store.close()


def test_postgresql_copies_to_sqlite_and_back(
    postgres_url: str, postgres: PostgresServer, tmp_path: Path
):
    busy_server(postgres_url)
    original = dump(postgres_url)
    middle = f"sqlite:///{tmp_path}/middle.db"
    copy(postgres_url, middle)
    assert dump(middle) == original
    name = postgres.clone(migrated=False)
    try:
        again = postgres.with_database(name)
        copy(middle, again)
        assert dump(again) == original
    finally:
        postgres.drop(name)


def test_a_purged_write_number_is_never_handed_out_again(sqlite_url: str, postgres_url: str):
    """The source's counter, not its largest remaining row, decides where the target goes on."""
    store = opened(sqlite_url)
    prepare(store, Settings(database=sqlite_url))
    client = store.get_client("demo")
    assert client is not None
    accept(store, b"batch=thirdPartyId,n\nx,1\n")
    Worker(store).run(until_idle=True)
    for _ in range(3):
        store.update_profile(client, "t:x", {"n": "2"}, now_ms(), 10**6, 10**6)
    last = store.update_profile(client, "t:x", {"n": "3"}, now_ms(), 10**6, 10**6)
    store.purge(now_ms() + 1)  # forgets the update writes, not their numbers
    store.close()
    assert last is not None and last.seq is not None
    copy(sqlite_url, postgres_url)
    target = opened(postgres_url)
    try:
        _, batch_id = accept(target, b"batch=thirdPartyId,n\ny,1\n")
        assert int(batch_id.rsplit("-", 1)[1]) > last.seq // 100_000_000
    finally:
        target.close()


# -- random UTF-8 -----------------------------------------------------------------------------

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)


@hypothesis_settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(TEXT.filter(lambda t: check_id(KeyKind.THIRD_PARTY_ID, t) is None), TEXT, TEXT),
        min_size=1,
        max_size=8,
        unique_by=lambda r: r[0],
    )
)
def test_random_utf8_round_trips_sqlite_postgresql_sqlite(
    rows: list[tuple[str, str, str]],
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresServer,
):
    """Ids, attribute names and values of any characters survive both copies unchanged."""
    folder = tmp_path_factory.mktemp("utf8")
    source = f"sqlite:///{folder}/a.db"
    store = opened(source)
    prepare(store, Settings(database=source))
    for identifier, name, value in rows:
        accept(store, batchfile.encode("thirdPartyId", [name], [[identifier, value]]))
    Worker(store).run(until_idle=True)
    store.close()
    original = dump(source)
    assert len(original["profiles"]) == len(rows)
    name = postgres.clone(migrated=False)
    try:
        middle = postgres.with_database(name)
        copy(source, middle)
        assert dump(middle) == original
        back = f"sqlite:///{folder}/b.db"
        copy(middle, back)
        assert dump(back) == original
    finally:
        postgres.drop(name)


# -- refusals -------------------------------------------------------------------------------


def test_a_non_empty_target_is_refused_unless_overwritten(sqlite_url: str, postgres_url: str):
    busy_server(sqlite_url)
    target = opened(postgres_url)
    target.ensure_client("someone")
    target.close()
    with pytest.raises(CopyRefused, match=r"not empty \(rows: clients 1\).*--overwrite"):
        copy(sqlite_url, postgres_url)
    copy(sqlite_url, postgres_url, overwrite=True)
    assert dump(postgres_url) == dump(sqlite_url)


def test_nul_is_refused_for_postgresql_with_the_row_named_or_replaced(
    sqlite_url: str, postgres_url: str
):
    store = opened(sqlite_url)
    prepare(store, Settings(database=sqlite_url))
    accept(store, b"batch=thirdPartyId,n\nnul,a%00b\nfine,1\n")
    Worker(store).run(until_idle=True)
    store.close()
    with pytest.raises(
        CopyRefused, match=r"Row \(1, 't:nul'\) of table profiles holds the character U\+0000"
    ):
        copy(sqlite_url, postgres_url)
    report = copy(sqlite_url, postgres_url, replace_nul=True)  # resumes the interrupted copy
    assert report.replaced_nul == 1 and report.resumed
    target = opened(postgres_url)
    try:
        profile = target.get_profile(1, "t:nul")
        assert profile is not None and profile.attributes["n"].value == "a\ufffdb"
    finally:
        target.close()


def test_another_sources_interrupted_copy_is_not_resumed(
    sqlite_url: str, postgres_url: str, tmp_path: Path
):
    busy_server(sqlite_url)
    target = opened(postgres_url)
    target.start_copy("sqlite:///elsewhere.db", [], wipe=False)  # type: ignore[attr-defined]
    target.write_page(  # type: ignore[attr-defined]
        next(t for t in target.tables() if t.name == "clients"),  # type: ignore[attr-defined]
        ["id", "code", "created_at"],
        [[7, "seven", 0]],
        __import__("profilebase.server.storage.tables", fromlist=["Progress"]).Progress(
            "clients", "sqlite:///elsewhere.db", (7,), 1, False
        ),
    )
    target.close()
    with pytest.raises(CopyRefused, match="interrupted copy from sqlite:///elsewhere.db"):
        copy(sqlite_url, postgres_url)


# -- a copy killed mid-way, resumed -----------------------------------------------------------


def copied_so_far(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        try:
            found = db.execute(
                "SELECT coalesce(sum(copied), 0), count(*) FILTER (WHERE done = 1) FROM copy_progress"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    assert found is not None
    return int(found[0])


def test_a_copy_killed_mid_way_resumes_without_duplicating(sqlite_url: str, postgres_url: str):
    """SIGKILL the copy process after some pages; the same command finishes the job."""
    store = opened(sqlite_url)
    prepare(store, Settings(database=sqlite_url))
    body = b"batch=thirdPartyId,a,b\n" + b"".join(b"id-%05d,v%d,w\n" % (i, i) for i in range(6000))
    accept(store, body, unit_rows=6000)
    Worker(store).run(until_idle=True)
    store.close()
    command = [
        sys.executable,
        "-m",
        "profilebase",
        "copy",
        "--from",
        sqlite_url,
        "--to",
        postgres_url,
        "--page-rows",
        "20",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200_000):
            if copied_so_far(postgres_url) >= 200 or process.poll() is not None:
                break
        assert process.poll() is None, "the copy finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    partial = copied_so_far(postgres_url)
    assert 0 < partial < 6000
    result = CliRunner().invoke(main, ["copy", "--from", sqlite_url, "--to", postgres_url])
    assert result.exit_code == 0, result.output
    assert "(resumed)" in result.stdout and "profiles: 6,000" in result.stdout
    assert dump(postgres_url) == dump(sqlite_url)


def test_copy_command_refuses_the_same_database_twice(sqlite_url: str):
    result = CliRunner().invoke(main, ["copy", "--from", sqlite_url, "--to", sqlite_url])
    assert result.exit_code == 2 and "same database" in result.output


def test_copy_command_reports_a_refusal_in_one_sentence(sqlite_url: str, tmp_path: Path):
    target = f"sqlite:///{tmp_path}/t.db"
    opened(target).ensure_client("x")
    result = CliRunner().invoke(main, ["copy", "--from", sqlite_url, "--to", target])
    assert (
        result.exit_code == 3 and "not empty" in result.output and "Traceback" not in result.output
    )
