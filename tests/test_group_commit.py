"""Online writes that wait together (single updates, page calls) keep every guarantee.

They share one write transaction (group commit: on SQLite ``storage/sqlite/writers.py``,
on PostgreSQL a group per client, ``storage/postgres/groups.py``), each in a savepoint of
its own. Each test holds the database's write lock (SQLite) or every client's row
(PostgreSQL) from outside the server until all its requests wait, so that they really wait
together, then lets go; real HTTP, real databases.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from helpers import attributes, deliver, update, xml_fields

from profilebase.errors import RequestTooLarge
from profilebase.models import DAY_MS, SEQ_SPAN, KeyKind, now_ms
from profilebase.server import clients
from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.storage.base import Visit
from profilebase.server.storage.sqlite import SQLiteStore
from profilebase.server.storage.sqlite.store import SQL

#: Requests sent together: no more than the server's request threads (PostgreSQL's wait
#: in them).
TOGETHER = 8


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Long enough that writes held back by the test never time out.
    return Settings(database=database_url, workers=0, unit_rows=50, database_timeout=60)


def waiting(store: Store, database_url: str) -> int:
    """Online writes of the server that wait for the write lock (or the client's row)."""
    if database_url.startswith("sqlite"):
        return int(store._groups.waiting())  # type: ignore[attr-defined]
    with psycopg.connect(database_url, autocommit=True) as db:
        found = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
    if not found or not found[0]:  # a group's leader waits on the lock for all of it
        return 0
    return int(store.groups.waiting())  # type: ignore[attr-defined]


@contextmanager
def writes_held(database_url: str) -> Iterator[None]:
    """Hold every online write back from outside the server until the block ends."""
    if database_url.startswith("sqlite"):
        db = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")
            db.close()
        return
    with psycopg.connect(database_url) as pg:
        pg.execute("SELECT 1 FROM clients FOR UPDATE")
        try:
            yield
        finally:
            pg.rollback()


def together(
    store: Store, database_url: str, requests: list[Callable[[], httpx.Response]]
) -> list[httpx.Response]:
    """Send ``requests`` at once while writes are held; let go once all of them wait."""
    with ThreadPoolExecutor(len(requests)) as pool:
        with writes_held(database_url):
            futures = [pool.submit(request) for request in requests]
            deadline = time.monotonic() + 30
            while waiting(store, database_url) < len(requests):
                assert time.monotonic() < deadline, "the requests never all waited"
                assert not any(f.done() for f in futures), [f.result() for f in futures if f.done()]
                time.sleep(0.01)
        return [future.result() for future in futures]


def updates_counted(store: Store) -> int:
    demo = store.get_client("demo")
    assert demo is not None
    return sum(n for _, n in store.recent_updates(demo.id, now_ms() - DAY_MS))


def create_profiles(http: httpx.Client, *names: str) -> None:
    for name in names:
        assert deliver(http, {"id": {"thirdPartyId": name}}).status_code == 200


def test_a_write_that_fails_in_a_group_fails_alone(
    http: httpx.Client, store: Store, database_url: str
):
    """Among writes that wait together, the one over the size limit is refused with its
    reason and leaves nothing, not even its count in the quota; an update of no profile
    is 404; every other update and page call is applied and answered after it is."""
    clients.change(store, "demo", limits={"max_profile_bytes": "300"})
    create_profiles(http, *(f"g{n}" for n in range(6)))
    requests: list[Callable[[], httpx.Response]] = [
        lambda n=n: update(http, mbox3rdPartyId=f"g{n}", profile_a=f"v{n}")  # type: ignore[misc]
        for n in range(5)
    ]
    requests.append(lambda: update(http, mbox3rdPartyId="g5", profile_big="x" * 400))
    requests.append(lambda: update(http, mbox3rdPartyId="nobody", profile_a="v"))
    requests.append(
        lambda: deliver(
            http,
            {
                "id": {"thirdPartyId": "g-new"},
                "execute": {"pageLoad": {"profileParameters": {"page": "home"}}},
            },
        )
    )
    replies = together(store, database_url, requests)

    assert [r.status_code for r in replies] == [200] * 5 + [413, 404, 200]
    assert "over the limit of 300 bytes" in xml_fields(replies[5])["message"]
    for n in range(5):
        assert attributes(http, f"g{n}") == {"a": f"v{n}"}
    assert attributes(http, "g5") == {}
    assert attributes(http, "nobody") is None
    assert attributes(http, "g-new") == {"page": "home"}
    assert updates_counted(store) == 5


def test_the_update_quota_is_exact_when_updates_wait_together(
    http: httpx.Client, store: Store, database_url: str
):
    """updates_per_day 3, eight updates waiting together: exactly three are applied, the
    other five are 429 with the reason, and the replies count down to zero."""
    clients.change(store, "demo", limits={"updates_per_day": "3"})
    names = [f"q{n}" for n in range(TOGETHER)]
    create_profiles(http, *names)
    replies = together(
        store,
        database_url,
        [
            lambda name=name: update(http, mbox3rdPartyId=name, profile_a="set")  # type: ignore[misc]
            for name in names
        ],
    )

    codes = [r.status_code for r in replies]
    assert sorted(codes) == [200] * 3 + [429] * 5
    refused = [r for r in replies if r.status_code == 429]
    assert all("updates_per_day" in xml_fields(r)["message"] for r in refused)
    assert all(r.headers["x-ratelimit-remaining"] == "0" for r in refused)
    remaining = sorted(r.headers["x-ratelimit-remaining"] for r in replies if r.status_code == 200)
    assert remaining == ["0", "1", "2"]
    applied = [name for name, r in zip(names, replies, strict=True) if r.status_code == 200]
    for name in names:
        assert attributes(http, name) == ({"a": "set"} if name in applied else {})
    assert updates_counted(store) == 3


def test_updates_of_one_profile_that_wait_together_are_all_kept(
    http: httpx.Client, store: Store, database_url: str
):
    """Updates of one attribute sent one after another, each answered: the last answered
    value is the stored one, and every reply's write is visible to a fetch right after."""
    create_profiles(http, "ryw")
    replies: dict[int, httpx.Response] = {}
    lock = threading.Lock()

    def write_and_read(n: int) -> httpx.Response:
        reply = update(http, mbox3rdPartyId="ryw", **{f"profile_own{n}": f"v{n}"})
        seen = attributes(http, "ryw") or {}
        with lock:
            replies[n] = reply
        # Read-your-writes: the update answered is there for the next fetch.
        assert seen.get(f"own{n}") == f"v{n}"
        return reply

    results = together(
        store,
        database_url,
        [lambda n=n: write_and_read(n) for n in range(TOGETHER)],  # type: ignore[misc]
    )
    assert all(r.status_code == 200 for r in results)
    stored = attributes(http, "ryw")
    assert stored == {f"own{n}": f"v{n}" for n in range(TOGETHER)}


def test_read_your_writes_under_concurrent_writers(http: httpx.Client, store: Store):
    """Eight writers, each updating its own profile and fetching it at once, twenty times:
    every fetch shows the value just answered."""
    names = [f"w{n}" for n in range(TOGETHER)]
    create_profiles(http, *names)

    def writer(name: str) -> list[Any]:
        wrong = []
        for round_no in range(20):
            reply = update(http, mbox3rdPartyId=name, profile_round=str(round_no))
            assert reply.status_code == 200, reply.text
            seen = attributes(http, name)
            if seen != {"round": str(round_no)}:
                wrong.append((round_no, seen))
        return wrong

    with ThreadPoolExecutor(TOGETHER) as pool:
        assert [w for found in pool.map(writer, names) for w in found] == []
    assert updates_counted(store) == 20 * TOGETHER


@pytest.mark.parametrize(
    "name", ["ids_of_profiles", "latest_tnt_alias", "sqlite_profile_document", "resolve_alias"]
)
def test_sqlite_reads_of_a_profiles_aliases_use_an_index_of_the_profile(tmp_path: Path, name: str):
    """A fetch and a single update read the aliases of one profile through the
    (client, profile) index: without statistics SQLite chose the primary key's client
    prefix, reading every alias of the client (16 ms a fetch at 50,000 linked tntIds)."""
    store = SQLiteStore(str(tmp_path / "plan.db"))
    try:
        store.migrate()
        sql = SQL[name]
        params: Any = (1, '["t:x"]') if "json_each(?)" in sql else (1, "t:x")
        if ":client_id" in sql:
            params = {"client_id": 1, "key": "t:x", "before": 0}
        with sqlite3.connect(tmp_path / "plan.db") as db:
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
        identities = [step for step in plan if "identities" in step or " i USING" in step]
        assert identities, plan
        # By the profile (its index), or one alias (the primary key, whole).
        by_profile = (
            "INDEX identities_profile (client_id=? AND pkey=?",
            "(client_id=? AND alias=?)",
        )
        assert all(any(way in step for way in by_profile) for step in identities), plan
    finally:
        store.close()


# -- what a SQLite group holds back until its commit (storage/sqlite/held.py) --------------


@contextmanager
def one_group(store: SQLiteStore) -> Iterator[list[Future[Any]]]:
    """The writes submitted in the block run as one group: the write lock is held from
    outside until the block ends, so the writer thread takes all of them at once."""
    futures: list[Future[Any]] = []
    with writes_held(f"sqlite:///{store.path}"):
        yield futures
        deadline = time.monotonic() + 30
        while store._groups.waiting() < len(futures) - 1:  # the first one may be taken
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    the_store = SQLiteStore(str(tmp_path / "held.db"), timeout=30)
    the_store.migrate()
    yield the_store
    the_store.close()


def in_writer(store: SQLiteStore, futures: list[Future[Any]], call: Callable[[], Any]) -> None:
    futures.append(store.submit_write(call))


def seqs_of(store: SQLiteStore, client_id: int, key: str) -> dict[str, int]:
    """Each attribute's seq, as stored."""
    with sqlite3.connect(store.path) as db:
        (attrs,) = db.execute(
            "SELECT attrs FROM profiles WHERE client_id = ? AND pkey = ?", (client_id, key)
        ).fetchone()
    return {name: entry[1] for name, entry in json.loads(attrs).items()}


def writes_rows(store: SQLiteStore) -> list[tuple[int, str]]:
    with sqlite3.connect(store.path) as db:
        return [
            (int(s), str(k)) for s, k in db.execute("SELECT seq, kind FROM writes ORDER BY seq")
        ]


#: A profile size limit no test here reaches.
BIG = 10_000


def test_updates_in_a_group_share_writes_until_another_write_takes_a_seq(
    sqlite_store: SQLiteStore,
):
    """Single updates of one client in a row share one writes row, each under a seq of
    its own and with a writtenBy id of its own; a page call between them ends the run, so
    an update after it gets a larger seq and wins the attribute they both set; another
    client's update starts its own run."""
    store, now = sqlite_store, now_ms()
    demo, other = store.ensure_client("demo"), store.ensure_client("other")
    for client in (demo, other):
        store.visit(client.id, Visit("tnt-a", "a", {}, "r0"), now, 10_000)
    key = KeyKind.THIRD_PARTY_ID.key("a")
    before = len(writes_rows(store))

    def update_a(client: Any, value: str, name: str = "x") -> Callable[[], Any]:
        return functools.partial(store.update_profile, client, key, {name: value}, now, 100, BIG)

    with one_group(store) as futures:
        in_writer(store, futures, update_a(demo, "1", "y"))
        in_writer(store, futures, update_a(demo, "2", "z"))
        in_writer(
            store,
            futures,
            functools.partial(
                store.visit, demo.id, Visit("tnt-a", "a", {"x": "page"}, "r1"), now, 10_000
            ),
        )
        in_writer(store, futures, update_a(demo, "3"))
        in_writer(store, futures, update_a(other, "o"))
    outcomes = [f.result() for f in futures]

    seqs = [o.seq for o in outcomes if o is not None and not isinstance(o, str)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    # Two runs of demo's updates around the page call's write, one of other's.
    added = writes_rows(store)[before:]
    assert [kind for _, kind in added] == ["update", "delivery", "update", "update"]
    assert seqs[0] // SEQ_SPAN == seqs[1] // SEQ_SPAN == added[0][0]
    assert seqs[2] // SEQ_SPAN == added[2][0] > added[1][0]
    profile = store.get_profile(demo.id, key)
    assert profile is not None and profile.attributes["x"].value == "3"
    assert seqs_of(store, demo.id, key)["x"] == seqs[2]
    ids = [profile.attributes[name].written_by for name in ("y", "z", "x")]
    assert [w.ref if w else None for w in ids] == [
        f"update-{added[0][0]}",
        f"update-{added[0][0]}-2",
        f"update-{added[2][0]}",
    ]


def test_an_update_that_starts_a_run_and_fails_leaves_no_write_behind(
    sqlite_store: SQLiteStore,
):
    """The first update of a run fails (over the size limit) after it took its write: its
    savepoint takes the write back, the next update starts a run of its own, and every
    attribute names a write that exists."""
    store, now = sqlite_store, now_ms()
    demo = store.ensure_client("demo")
    for name in ("a", "b"):
        store.visit(demo.id, Visit(f"tnt-{name}", name, {}, f"r-{name}"), now, BIG)
    before = writes_rows(store)
    key_a, key_b = (KeyKind.THIRD_PARTY_ID.key(name) for name in ("a", "b"))
    with one_group(store) as futures:
        for key, values in [(key_a, {"big": "x" * 500}), (key_b, {"ok": "1"})]:
            call = functools.partial(store.update_profile, demo, key, values, now, 100, 300)
            in_writer(store, futures, call)
    with pytest.raises(RequestTooLarge):
        futures[0].result()
    outcome = futures[1].result()
    added = writes_rows(store)[len(before) :]
    assert [kind for _, kind in added] == ["update"]
    assert outcome.seq == added[0][0] * SEQ_SPAN + 1
    profile = store.get_profile(demo.id, key_b)
    assert profile is not None
    written = profile.attributes["ok"].written_by
    assert written is not None and written.ref == f"update-{added[0][0]}"


def test_a_group_counts_its_updates_once_and_exactly(sqlite_store: SQLiteStore):
    """The quota's counts of a group are written at its end, per minute, beside those
    stored before; with updates_per_day 5 and 2 counted before, 3 of 5 updates waiting
    together are applied, the refusals say when the next one fits, and an update that
    fails after it was counted (over the size limit) gives its count back."""
    store = sqlite_store
    demo = store.ensure_client("demo")
    start = (now_ms() // 60_000) * 60_000 + 59_000  # a second before a minute ends
    for n in range(6):
        store.visit(demo.id, Visit(f"tnt-{n}", f"p{n}", {}, f"r{n}"), start, 10_000)
    for n in range(2):  # counted in an earlier group
        key = KeyKind.THIRD_PARTY_ID.key(f"p{n}")
        assert store.update_profile(demo, key, {"a": "0"}, start - 120_000, 5, 10_000)

    with one_group(store) as futures:
        for n, at in [(0, start), (1, start), (2, start + 2_000), (3, start + 2_000)]:
            key = KeyKind.THIRD_PARTY_ID.key(f"p{n}")
            values = {"big": "x" * 200} if n == 1 else {"a": str(n)}
            call = functools.partial(store.update_profile, demo, key, values, at, 5, 150)
            in_writer(store, futures, call)
        for n in (4, 5):
            key = KeyKind.THIRD_PARTY_ID.key(f"p{n}")
            call = functools.partial(
                store.update_profile, demo, key, {"a": "x"}, start + 3_000, 5, 10_000
            )
            in_writer(store, futures, call)

    results: list[Any] = []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as exc:  # the refusals
            results.append(exc)
    assert [type(r).__name__ for r in results] == [
        "UpdateOutcome",
        "RequestTooLarge",
        "UpdateOutcome",
        "UpdateOutcome",
        "QuotaExceeded",
        "QuotaExceeded",
    ]
    # The window each reply's headers come from: 3, 4, 5 updates with this one.
    assert [r.recent[0][1] for r in (results[0], results[2], results[3])] == [3, 4, 5]
    assert results[4].retry_after > 0 and "updates_per_day" in results[4].message
    minute = start // 60_000
    found = store.recent_updates(demo.id, start - DAY_MS)
    assert found == [
        ((minute - 2 + 1) * 60_000, 2),
        ((minute + 1) * 60_000, 1),
        ((minute + 1 + 1) * 60_000, 2),
    ]


def wal_frames(store: SQLiteStore) -> int:
    """The pages the WAL holds now (a passive checkpoint with no reader copies them all, and
    says how many there were; tried again while the store's own checkpoint thread runs)."""
    deadline = time.monotonic() + 30
    with sqlite3.connect(store.path) as db:
        while True:
            busy, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy:
                return int(frames)
            assert time.monotonic() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize("page_bytes", [None, 16384])
def test_a_group_of_single_updates_writes_a_small_page_per_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_bytes: int | None
):
    """A commit writes each page it changed to the WAL whole: a group of single updates on
    random profiles, one leaf page each, writes 4 KB a profile on a new database, and a
    database made with 16 KB pages keeps them (and works the same, its checkpoints'
    thresholds the same bytes)."""
    path = str(tmp_path / "pages.db")
    if page_bytes is not None:  # a database made by an earlier version
        with sqlite3.connect(path) as db:
            db.execute(f"PRAGMA page_size = {page_bytes}")
            db.execute("PRAGMA journal_mode = WAL")
    store = SQLiteStore(path, timeout=30)
    try:
        store.migrate()
        demo, now = store.ensure_client("demo"), now_ms()
        padding = "x" * 1000  # 1,000 profiles of 1 KB: 250 pages of 4 KB
        for n in range(1000):
            store.visit(demo.id, Visit(f"tnt-{n}", f"p{n}", {"pad": padding}, f"r{n}"), now, BIG)
        with sqlite3.connect(path) as db:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            deadline = time.monotonic() + 30
            # Empty the WAL (the store's checkpoint thread may be copying it just now).
            while db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() != (0, 0, 0):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert page_size == (page_bytes or 4096)
        with store._read() as db:  # the checkpoints' thresholds keep their bytes
            (autocheckpoint,) = db.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert autocheckpoint * page_size == 1000 * 16384  # as SQLite's 1,000 pages of 16 KB
        updated = [n * 37 % 1000 for n in range(20)]  # 20 profiles far apart
        with one_group(store) as futures:
            for n in updated:
                key = KeyKind.THIRD_PARTY_ID.key(f"p{n}")
                call = functools.partial(
                    store.update_profile, demo, key, {"v": str(n)}, now, 100, BIG
                )
                in_writer(store, futures, call)
        assert all(future.result() is not None for future in futures)
        assert all(attributes_of(store, demo.id, n)["v"] == str(n) for n in updated)
        written = wal_frames(store) * page_size
        assert written >= 20 * page_size  # a page for each profile at least
        # A page per profile, some neighbours when one grows, the writes row and the quota's
        # count; the first update may commit alone. 49 pages of 4 KB, 23 of 16 KB, here.
        assert written <= (20 + 10) * 2 * page_size
        if page_bytes is None:
            assert written <= 256 * 1024  # 16 KB pages: 20 leaves alone are 320 KB
    finally:
        store.close()


def attributes_of(store: SQLiteStore, client_id: int, n: int) -> dict[str, str]:
    profile = store.get_profile(client_id, KeyKind.THIRD_PARTY_ID.key(f"p{n}"))
    assert profile is not None
    return {name: attribute.value for name, attribute in profile.attributes.items()}
