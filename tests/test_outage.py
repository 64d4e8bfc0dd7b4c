"""A database that goes away, is locked, read-only or full: requests get 503 (or 507) with
Retry-After in their endpoint's format within database_timeout, /readyz says so while
/healthz stays up, a refused batch writes nothing, nothing accepted is lost, and service
resumes by itself when the database is back. Real databases, real `profilebase serve`
processes; the PostgreSQL outage is a TCP relay that is cut and restored."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, PostgresServer
from helpers import batch_id_of, run_sql, xml_fields
from proxy import Outage
from test_crash import ServerProcess, wait_until

from profilebase.server.settings import Settings
from profilebase.server.storage import open_store
from profilebase.server.storage.sqlite import SQLiteStore
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

pytestmark = pytest.mark.slow

UPDATE = "/m2/demo/v2/profile/batchUpdate"
BATCH = b"batch=thirdPartyId,tier\ncrm-1,gold\ncrm-2,silver\n"
#: database_timeout of the servers under test (libpq waits at least 2 s to connect).
TIMEOUT = "2"
UNAVAILABLE = "The database is unavailable right now; nothing was changed."


def batch_count(database_url: str) -> int:
    return int(run_sql(database_url, "SELECT count(*) FROM batches")[0][0])


def assert_refused(response: httpx.Response, status: int = 503, xml: bool = True) -> str:
    """A refusal in the endpoint's format, with Retry-After and an error id; its message."""
    assert response.status_code == status, response.text
    message = xml_fields(response)["message"] if xml else response.json()["message"]
    assert re.search(r"\(error id [0-9A-Za-z._-]{1,64}\)$", message), message
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
    for word in ("sqlite", "psycopg", "Error", "SELECT", "pool", "/tmp"):
        assert word not in response.text, response.text
    return message


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


# -- PostgreSQL: the server loses its database ----------------------------------------------


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.clone()
    yield postgres.with_database(name)
    postgres.drop(name)


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the relay's."""
    parts = urllib.parse.urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return parts._replace(
        netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    ).geturl()


@pytest.mark.parametrize("hang", [False, True], ids=["refused", "hanging"])
def test_postgres_outage_answers_503_and_service_resumes(
    pg_database: str, tmp_path: Path, hang: bool
):
    """PostgreSQL refuses connections (down) or accepts and never answers (hung): every
    request answers 503 with Retry-After in its format within database_timeout, /readyz is
    503 and /healthz 200; once it is back, /readyz is 200 within 10 s, new batches are
    accepted, and the batch accepted before the outage and the one after both complete
    exactly while the refused one left no trace."""
    port = urllib.parse.urlsplit(pg_database).port or 5432
    relay = Outage(port)
    server = ServerProcess(
        through(pg_database, relay.port),
        tmp_path / "server.log",
        workers="0",
        database_timeout=TIMEOUT,
    )
    direct = open_store(pg_database)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            before = http.post(UPDATE, content=BATCH)
            assert before.status_code == 200
            relay.cut(hang=hang)

            refused, seconds = timed(lambda: http.post(UPDATE, content=b"batch=pcId,a\np-1,x\n"))
            print(f"batchUpdate refused after {seconds:.1f} s")
            assert UNAVAILABLE in assert_refused(refused)
            fetch = http.get("/rest/v1/profiles/thirdPartyId/crm-1", params={"client": "demo"})
            assert UNAVAILABLE in assert_refused(fetch, xml=False)
            single = http.get("/m2/demo/profile/update", params={"mbox3rdPartyId": "crm-1"})
            assert_refused(single)
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "unavailable" in ready.json()["message"]
            assert "retry-after" in ready.headers
            assert http.get("/healthz").status_code == 200

            relay.restore()
            back = time.monotonic()
            wait_until(lambda: http.get("/readyz").status_code == 200, timeout=10, interval=0.2)
            print(f"ready again {time.monotonic() - back:.1f} s after the database returned")
            after = http.post(UPDATE, content=b"batch=thirdPartyId,tier\ncrm-3,bronze\n")
            assert after.status_code == 200
        assert batch_count(pg_database) == 2
        Worker(direct, Settings(database=pg_database)).run(until_idle=True)
        for reply, size in [(before, 2), (after, 1)]:
            batch = direct.get_batch(1, batch_id_of(reply))
            assert batch is not None and batch.finished_at is not None
            assert batch.counts.successful == batch.batch_size == size
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        server.kill()
        relay.close()
        direct.close()


def test_a_migration_missing_makes_readyz_503(database_url: str, tmp_path: Path):
    """A database whose schema lacks a migration is not ready: /readyz names it and says how
    to fix it; once it is recorded again the server is ready."""
    server = ServerProcess(database_url, tmp_path / "server.log", workers="0")
    try:
        assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
        last = run_sql(database_url, "SELECT max(version) FROM schema_migrations")[0][0]
        run_sql(database_url, f"DELETE FROM schema_migrations WHERE version = {last}")
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503
        assert f"1 migration(s) missing ({last:04d}_" in ready.json()["message"]
        assert "profilebase migrate" in ready.json()["message"]
        run_sql(
            database_url,
            "INSERT INTO schema_migrations (version, name, applied_at) "
            f"VALUES ({last}, 'back', '2026-01-01')",
        )
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        server.kill()


def test_pending_migrations_of_an_empty_and_a_migrated_database(empty_database: str):
    """Every migration is pending on an empty database, none once migrated."""
    store = open_store(empty_database)
    try:
        pending = store.pending_migrations()
        assert pending and pending[0].startswith("0001_")
        assert store.migrate() == pending
        assert store.pending_migrations() == []
    finally:
        store.close()


# -- SQLite: locked, read-only, full --------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/outage.db"
    store = open_store(url)
    prepare(store, Settings(database=url))
    store.close()
    return url


def test_sqlite_locked_by_another_writer_answers_503(sqlite_url: str, tmp_path: Path):
    """Another process holds the write lock (BEGIN IMMEDIATE) past database_timeout: writes
    answer 503 with Retry-After, reads and /readyz go on; once the lock is released the next
    batch is accepted and the refused ones left nothing."""
    server = ServerProcess(sqlite_url, tmp_path / "server.log", workers="0", database_timeout="1")
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            holder.execute("BEGIN IMMEDIATE")
            refused, seconds = timed(lambda: http.post(UPDATE, content=BATCH))
            print(f"refused after {seconds:.1f} s")
            assert "busy" in assert_refused(refused)
            assert_refused(http.get("/m2/demo/profile/update", params={"mbox3rdPartyId": "x"}))
            delivery = http.post(
                "/rest/v1/delivery",
                params={"client": "demo", "sessionId": "s1"},
                json={"context": {"channel": "web"}, "id": {"thirdPartyId": "crm-9"}},
            )
            assert_refused(delivery, xml=False)
            assert http.get("/readyz").status_code == 200  # readers never wait in WAL mode
            missing = http.get("/rest/v1/profiles/thirdPartyId/crm-1", params={"client": "demo"})
            assert missing.status_code == 404
            holder.execute("ROLLBACK")
            assert http.post(UPDATE, content=BATCH).status_code == 200
    finally:
        holder.close()
        server.kill()
    assert batch_count(sqlite_url) == 1


def make_unwritable(path: Path) -> Callable[[], None]:
    """Make the file unwritable for the server for real; return how to undo it.

    As root, permissions do not stop a write: the file is made immutable (chattr +i),
    which stops root too. Otherwise it loses its write permission.
    """
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None:
            pytest.skip("running as root without chattr: no way to make a file unwritable")
        done = subprocess.run([chattr, "+i", str(path)], capture_output=True)
        if done.returncode:
            pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
        return lambda: subprocess.run([chattr, "-i", str(path)], check=True)
    mode = path.stat().st_mode
    path.chmod(0o444)
    return lambda: path.chmod(mode)


def test_sqlite_file_that_cannot_be_written_answers_503(sqlite_url: str, tmp_path: Path):
    """The database file cannot be written: the server starts and reads, writes answer 503
    with nothing written; once the file is writable again, writes resume by themselves."""
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    writable_again = make_unwritable(path)
    server = ServerProcess(sqlite_url, tmp_path / "server.log", workers="0", database_timeout="1")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/readyz").status_code == 200
            assert UNAVAILABLE in assert_refused(http.post(UPDATE, content=BATCH))
            writable_again()
            assert http.post(UPDATE, content=BATCH).status_code == 200
    finally:
        server.kill()
        writable_again()
    log = (tmp_path / "server.log").read_text()
    assert "readonly" in log  # the operator's log says what the database said
    assert batch_count(sqlite_url) == 1


class CappedSQLiteStore(SQLiteStore):
    """A real SQLite store whose connections may not grow the file past ``pages`` pages
    (``PRAGMA max_page_count``): SQLite then fails writes with SQLITE_FULL, as on a full
    disk."""

    pages = 0

    def _open(self) -> sqlite3.Connection:
        db = super()._open()
        db.execute(f"PRAGMA max_page_count = {self.pages}")
        return db


def test_sqlite_full_answers_507_and_writes_nothing(sqlite_url: str):
    """A batch that does not fit in what is left of the "disk" answers 507 with our message,
    and leaves no batch and no unit behind; a small one still fits."""
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        used = db.execute("PRAGMA page_count").fetchone()[0]
    store = CappedSQLiteStore(path, timeout=1)
    store.pages = used + 4  # 64 KB to spare
    settings = Settings(database=sqlite_url, workers=0, database_timeout=1)
    big = b"batch=thirdPartyId,tier\n" + b"".join(
        b"crm-%06d,%s\n" % (i, b"g" * 40) for i in range(5000)
    )
    try:
        with (
            LiveServer(settings, store, workers=0) as live,
            httpx.Client(base_url=live.url, timeout=60) as http,
        ):
            full = http.post(UPDATE, content=big)
            message = assert_refused(full, status=507)
            assert message.startswith("The database has no room to write; nothing was changed.")
            assert batch_count(sqlite_url) == 0
            assert run_sql(sqlite_url, "SELECT count(*) FROM batch_units") == [(0,)]
            assert http.post(UPDATE, content=BATCH).status_code == 200
    finally:
        store.close()
