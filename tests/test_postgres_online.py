"""PostgreSQL's online path: its own statements do what the shared path does, a process's
online writes of a client commit in groups in which a failing write fails alone, and a
pooled connection lost while idle is replaced without failing the request.

Equivalence is checked end to end: the same calls on two copies of one database, one
through ``PostgresStore`` (quick statements, groups) and one through the shared
``ProfileQueries`` methods, must answer alike and leave the same rows."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import psycopg
import pytest
from conftest import LiveServer, PostgresServer, free_port
from psycopg_pool import ConnectionPool

from profilebase.errors import DatabaseUnavailable, ProfilebaseError, QuotaExceeded, RequestTooLarge
from profilebase.models import Client, now_ms
from profilebase.server.settings import Settings
from profilebase.server.storage import open_store
from profilebase.server.storage.base import Visit, WouldWait
from profilebase.server.storage.postgres import PostgresStore
from profilebase.server.storage.postgres import store as postgres_store
from profilebase.server.storage.postgres.store import GROUP_LEADERS
from profilebase.server.storage.profiles import ProfileQueries

NOW = 1_800_000_000_000
BIG = 10**6
#: The tables the online writes change, each in a stable order.
DUMPS = [
    "SELECT client_id, pkey, attrs::text, created_seq, max_seq, modified_at FROM profiles"
    " ORDER BY 1, 2",
    "SELECT client_id, alias, pkey, linked_seq FROM identities ORDER BY 1, 2",
    "SELECT seq, client_id, kind, ref, at FROM writes ORDER BY 1",
    "SELECT client_id, minute, updates FROM update_counts ORDER BY 1, 2",
]


@pytest.fixture
def databases(postgres: PostgresServer) -> Iterator[list[str]]:
    names = [postgres.clone(), postgres.clone()]
    yield [postgres.with_database(name) for name in names]
    for name in names:
        postgres.drop(name)


def open_pg(url: str) -> PostgresStore:
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    store.ensure_client("demo")
    return store


def dump(url: str) -> list[list[tuple[Any, ...]]]:
    with psycopg.connect(url) as db:
        return [db.execute(sql).fetchall() for sql in DUMPS]  # type: ignore[arg-type]


def outcome(call: Callable[[], Any]) -> Any:
    """What a call answered: its result, or its error's class and message."""
    try:
        return call()
    except ProfilebaseError as exc:
        return type(exc).__name__, str(exc)


class Calls:
    """Online calls on one store, through its own methods or the shared ones."""

    def __init__(self, store: PostgresStore, shared: bool) -> None:
        self.store, self.shared = store, shared
        client = store.get_client("demo")
        assert client is not None
        self.client: Client = client

    def visit(
        self, tnt: str, third: str | None, values: dict[str, str], at: int = NOW,
        aliases: tuple[str, ...] = (), expire_before: int = 0,
    ) -> Any:  # fmt: skip
        call = Visit(tnt, third, values, f"req-{tnt}-{at}", aliases)
        run = ProfileQueries.visit if self.shared else PostgresStore.visit
        return outcome(lambda: run(self.store, self.client.id, call, at, 2_000, expire_before))

    def update(
        self, key: str, values: dict[str, str], at: int = NOW, per_day: int = 4,
        expire_before: int = 0,
    ) -> Any:  # fmt: skip
        run = ProfileQueries.update_profile if self.shared else PostgresStore.update_profile
        return outcome(
            lambda: run(self.store, self.client, key, values, at, per_day, 2_000, expire_before)
        )


def scenario(calls: Calls) -> list[Any]:
    """Page calls and single updates through every rule of links.py, the quota, the size
    limit and expiry."""
    big = {"big": "x" * 3_000}
    return [
        calls.visit("T1", None, {"a": "1"}),  # a new anonymous profile
        calls.visit("T1", None, {"b": "2"}),  # values, no change
        calls.visit("T1", None, {}),  # a touch
        calls.visit("T1", "X1", {"c": "3"}),  # renamed to X1
        calls.visit("T2", None, {}),  # another anonymous profile
        calls.visit("T2", "X1", {}),  # absorbed into X1
        calls.visit("T3", "X1", {}),  # an unknown tntId linked to X1
        calls.visit("T3", "X1", {"d": "4"}),  # linked already: values
        calls.visit("T4", "X2", {"e": "5"}),  # X2 created
        calls.visit("T3", "X2", {"f": "6"}),  # T3 moves from X1 to X2
        calls.visit("T5", None, {"g": "7"}, aliases=("m:ECID1",)),  # an ECID alias
        calls.visit("T6", None, {}, aliases=("m:ECID1",)),  # found through the ECID
        calls.visit("T1", "X1", big),  # too large
        calls.update("t:X1", {"u": "1"}),
        calls.update("p:T3", {"u": "2"}),  # through a tntId alias, shown as pcId
        calls.update("t:X1", {}),  # nothing to write
        calls.update("t:nobody", {"u": "3"}),  # not found
        calls.update("t:X2", big),  # too large
        calls.update("t:X2", {"u": "4"}),
        calls.update("t:X2", {"u": "5"}),
        calls.update("t:X2", {"u": "6"}),  # over the quota of 4 a day
        calls.update("t:X1", {"u": "7"}, at=NOW + 86_400_000 * 2),  # a new day
        calls.visit("T7", None, {"h": "8"}),
        calls.update("p:T7", {"u": "8"}, at=NOW + 10, expire_before=NOW + 1),  # expired
        calls.visit("T4", None, {"i": "9"}, at=NOW + 20, expire_before=NOW + 15),  # expired
        calls.visit("T8", "X1", {"j": "10"}, at=NOW + 30),
    ]


def test_quick_statements_answer_and_write_as_the_shared_path(databases: list[str]):
    """The same calls through PostgresStore's quick statements and groups, and through the
    shared methods, on two copies of a database: the same answers, the same rows."""
    stores = [open_pg(url) for url in databases]
    try:
        quick, shared = (scenario(Calls(stores[0], False)), scenario(Calls(stores[1], True)))
        assert quick == shared
        assert ("RequestTooLarge" in str(quick)) and ("QuotaExceeded" in str(quick))
        assert dump(databases[0]) == dump(databases[1])
    finally:
        for store in stores:
            store.close()


def test_a_fetch_in_one_statement_reads_as_the_shared_path(databases: list[str]):
    """get_profile's one statement returns what the shared snapshot of four SELECTs does,
    for stored keys, aliases, unknown keys and with an expiry time."""
    store = open_pg(databases[0])
    try:
        scenario(Calls(store, False))
        keys = [row[1] for row in dump(databases[0])[0]] + [row[1] for row in dump(databases[0])[1]]
        assert len(keys) >= 8
        for key in [*keys, "t:nobody", "p:nobody"]:
            for before in (0, NOW + 25):
                mine = store.get_profile(1, key, before)
                assert mine == ProfileQueries.get_profile(store, 1, key, before), key
                found = "found" if mine else "none"
                assert found == "found" or before or key.endswith("nobody"), key

        async def on_the_loop() -> list[Any]:  # the same statement, awaited on a loop
            try:
                records = [
                    await store.get_profile_async(1, key, before)
                    for key in [*keys, "t:nobody", "p:nobody"]
                    for before in (0, NOW + 25)
                ]
                return [None if record is None else record.profile() for record in records]
            finally:
                await store.close_async()

        threads = [
            store.get_profile(1, key, before)
            for key in [*keys, "t:nobody", "p:nobody"]
            for before in (0, NOW + 25)
        ]
        assert asyncio.run(on_the_loop()) == threads
    finally:
        store.close()


def test_a_fetch_on_the_loop_reports_an_outage_once_and_then_rests(databases: list[str]):
    """The loop's connections cannot reach the database (a port nobody listens on): the
    fetch answers 503's error after the store's timeout, as a thread would, and the path
    rests: the next fetch steps aside at once, to a thread."""
    store = open_pg(databases[0])
    try:
        store.loop_reads.url = f"postgresql://root@127.0.0.1:{free_port()}/nowhere"
        store.loop_reads.timeout = 1.0

        async def twice() -> tuple[float, float]:
            start = time.monotonic()
            with pytest.raises(DatabaseUnavailable) as refused:
                await store.get_profile_async(1, "t:crm-1")
            assert "within 1 s (database_timeout)" in refused.value.detail
            middle = time.monotonic()
            with pytest.raises(WouldWait):
                await store.get_profile_async(1, "t:crm-1")
            end = time.monotonic()
            await store.close_async()
            return middle - start, end - middle

        first, second = asyncio.run(twice())
        assert 0.9 < first < 5 and second < 0.5  # it did not try again (1 s)
    finally:
        store.close()


def test_a_fetch_whose_loop_connection_was_lost_is_answered_from_a_thread(
    databases: list[str],
):
    """Every connection to the database is ended behind the server's back: the next fetch
    over HTTP is still answered (the loop's path steps aside, the thread's starts over on
    a new connection) and the loop's path rests."""
    store = open_pg(databases[0])
    try:
        store.visit(1, Visit("tnt-1", "crm-1", {"a": "1"}, "r1"), NOW, BIG)
        with LiveServer(Settings(database=databases[0], workers=0), store, workers=0) as server:
            path = f"{server.url}/rest/v1/profiles/thirdPartyId/crm-1?client=demo"
            assert httpx.get(path).status_code == 200
            assert store.loop_reads.resting_until == 0.0  # answered on the loop
            with psycopg.connect(databases[0], autocommit=True) as admin:
                ended = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
            assert ended is not None and ended[0] >= 1
            reply = httpx.get(path)
            assert reply.status_code == 200, reply.text
            assert reply.json()["profileAttributes"]["a"]["value"] == "1"
            assert store.loop_reads.resting_until > time.monotonic()
    finally:
        store.close()


def hold_client_lock(url: str) -> psycopg.Connection[Any]:
    """Another connection holding the demo client's row lock until it rolls back."""
    holder = psycopg.connect(url)
    holder.execute("SELECT 1 FROM clients WHERE code = 'demo' FOR UPDATE")
    return holder


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_group_commits_its_writes_together_and_a_failing_one_fails_alone(databases: list[str]):
    """While another transaction holds the client's lock, one write leads a group and waits;
    the writes queued meanwhile form the next group, one transaction (one xmin). In it, a
    write the size limit refuses (a savepoint), one the quota refuses, and one the database
    refuses in a quick statement (a trigger; the group starts again without it) fail alone
    and leave nothing; the others are all applied and counted once. A page call whose ids
    an earlier write of the group named plans from what is stored then: it absorbs the
    profile that write created."""
    url = databases[0]
    store = open_pg(url)
    calls = Calls(store, False)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.at = 666 THEN RAISE EXCEPTION 'refused by a trigger'; END IF; "
            "RETURN NEW; END $$"
        )
        db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON writes FOR EACH ROW EXECUTE FUNCTION boom()"
        )
    for tnt, third in [("A", "XA"), ("B", "XB"), ("C", "XC"), ("D", "XD"), ("E", "XE")]:
        calls.visit(tnt, third, {"v": "0"})
    holder = hold_client_lock(url)
    results: dict[str, Any] = {}

    def run(name: str, call: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                results[name] = call()
            except Exception as exc:  # the database's own refusal is no ProfilebaseError
                results[name] = exc

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    try:
        threads = [run("lead", lambda: calls.update("t:XA", {"v": "lead"}, per_day=3))]
        # Its leader took it from the queue (and waits for the client's lock).
        wait_for(lambda: 1 in store.groups.running and not store.groups.queues.get(1))
        queued: list[tuple[str, Callable[[], Any]]] = [
            ("ok", lambda: calls.update("t:XB", {"v": "ok"}, per_day=3)),
            ("large", lambda: calls.update("t:XC", {"v": "x" * 3_000}, per_day=3)),
            ("trigger", lambda: calls.update("t:XD", {"v": "no"}, at=666, per_day=3)),
            ("page", lambda: calls.visit("E2", "XE", {"v": "page"})),
            ("quota", lambda: calls.update("t:XE", {"v": "over"}, per_day=2)),
            # T9's profile, created by a write of the group, is absorbed by the next.
            ("anonymous", lambda: calls.visit("T9", None, {"w": "9"})),
            ("absorb", lambda: calls.visit("T9", "XA", {})),
        ]
        for count, (name, call) in enumerate(queued, 1):  # queued in this order
            threads.append(run(name, call))
            wait_for(lambda count=count: len(store.groups.queues.get(1, [])) == count)  # type: ignore[misc]
    finally:
        holder.rollback()
        holder.close()
    for thread in threads:
        thread.join(timeout=60)
    assert results["lead"].seq and results["ok"].seq
    assert results["large"][0] == RequestTooLarge.__name__
    assert results["quota"][0] == QuotaExceeded.__name__
    assert isinstance(results["trigger"], psycopg.Error)
    assert "refused by a trigger" in str(results["trigger"])
    assert results["page"] == "t:XE"
    assert results["anonymous"] == "p:T9" and results["absorb"] == "t:XA"
    absorbed, through_t9 = store.get_profile(1, "t:XA"), store.get_profile(1, "p:T9")
    assert absorbed is not None and absorbed.attributes["w"].value == "9"
    assert through_t9 is not None and through_t9.ids == absorbed.ids
    with psycopg.connect(url) as db:
        rows = dict(
            db.execute(
                "SELECT pkey, attrs -> 'v' ->> 0 FROM profiles WHERE pkey LIKE 't:X_'"
            ).fetchall()
        )
        assert rows == {"t:XA": "lead", "t:XB": "ok", "t:XC": "0", "t:XD": "0", "t:XE": "page"}
        assert db.execute("SELECT count(*) FROM profiles WHERE pkey = 'p:T9'").fetchone() == (0,)
        xmins = dict(db.execute("SELECT pkey, xmin::text FROM profiles").fetchall())
        assert xmins["t:XB"] == xmins["t:XE"] != xmins["t:XA"]
        counted = db.execute("SELECT sum(updates) FROM update_counts").fetchone()
        assert counted == (2,)  # lead and ok; the refused ones counted nothing
    store.close()


def test_concurrent_single_updates_keep_the_quota_exact(databases: list[str]):
    """Eight threads, 40 single updates of one client with room for 25: exactly 25 are
    applied and counted, the rest refused; every applied one has its own seq, and the
    value stored is the one of the highest seq (the last applied)."""
    store = open_pg(databases[0])
    calls = Calls(store, False)
    calls.visit("T", "X", {"n": "start"})
    answers: list[Any] = []
    lock = threading.Lock()

    def writer(thread: int) -> None:
        for n in range(5):
            answer = calls.update("t:X", {"n": f"{thread}-{n}"}, per_day=25)
            with lock:
                answers.append((f"{thread}-{n}", answer))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    applied = [(answer.seq, value) for value, answer in answers if not isinstance(answer, tuple)]
    refused = [answer for _, answer in answers if isinstance(answer, tuple)]
    assert len(applied) == 25 and len(refused) == 15
    assert {name for name, _ in refused} == {QuotaExceeded.__name__}
    assert len({seq for seq, _ in applied}) == 25
    profile = store.get_profile(1, "t:X")
    assert profile is not None
    assert profile.attributes["n"].value == max(applied)[1]
    with psycopg.connect(databases[0]) as db:
        assert db.execute("SELECT sum(updates) FROM update_counts").fetchone() == (25,)
    store.close()


def test_writes_handed_over_wait_in_no_thread_and_commit_in_pipelines(databases: list[str]):
    """Sixty writes handed over as the event loop does (``submit_write``, which does not
    wait) while another transaction holds the client's lock wait in no thread of their
    own. Once it is released they commit in at most two groups (the first write's, then
    everything queued behind it), their quick statements sent in pipelines: each is
    applied once, in order for one profile, with the values as sent; one too large takes
    the shared path from inside a pipeline run and is refused, one with a NUL is refused
    before anything is sent, and a write whose caller gave up before its group started is
    not applied."""
    url = databases[0]
    store = open_pg(url)
    calls = Calls(store, False)
    for n in range(44):
        calls.visit(f"T{n}", f"X{n}", {"v": "0"})
    client = calls.client
    LATER = NOW + 1_000  # noqa: N806
    holder = hold_client_lock(url)
    threads_before = threading.active_count()
    try:
        submitted: dict[str, Future[Any]] = {}
        for n in range(40):  # distinct profiles: one pipeline run
            submitted[f"u{n}"] = store.submit_write(  # type: ignore[assignment]
                store.update_profile, client, f"t:X{n}", {"v": f"u{n}"}, LATER, BIG, 2_000
            )
        for n in range(10):  # page calls on profiles of their own, then one named again
            visit = Visit(f"T{n + 100}", None, {"w": f"p{n}"}, f"req-{n}")
            submitted[f"p{n}"] = store.submit_write(store.visit, client.id, visit, LATER, 2_000)  # type: ignore[assignment]
        for name, key, values in [
            ("again", "t:X1", {"v": "again"}),  # named before: after the run, in order
            ("large", "t:X41", {"big": "x" * 3_000}),  # no key named before
            ("nul", "t:X42", {"v": "a\x00b"}),
            ("gone", "t:X43", {"v": "gone"}),
            ("last", "t:X1", {"v": "last"}),
        ]:
            submitted[name] = store.submit_write(  # type: ignore[assignment]
                store.update_profile, client, key, values, LATER, BIG, 2_000
            )
        assert submitted["gone"].cancel()
        assert not any(future.done() for name, future in submitted.items() if name != "gone")
        assert threading.active_count() <= threads_before + GROUP_LEADERS  # no more
    finally:
        holder.rollback()
        holder.close()
    outcomes = {}
    for name, future in submitted.items():
        if name == "gone":
            continue
        try:
            outcomes[name] = future.result(timeout=60)
        except Exception as exc:  # noqa: BLE001 - the refusals, checked below
            outcomes[name] = exc
    assert isinstance(outcomes.pop("large"), RequestTooLarge)
    assert "U+0000" in str(outcomes.pop("nul"))
    seqs = [outcome.seq for name, outcome in outcomes.items() if name[0] in "ual"]
    assert len(set(seqs)) == len(seqs) == 42
    assert outcomes["u1"].seq < outcomes["again"].seq < outcomes["last"].seq
    assert [outcomes[f"p{n}"] for n in range(10)] == [f"p:T{n + 100}" for n in range(10)]
    with psycopg.connect(url) as db:
        rows = dict(
            db.execute("SELECT pkey, attrs -> 'v' ->> 0 FROM profiles WHERE pkey LIKE 't:X%'")
        )
        assert rows == {
            **{f"t:X{n}": f"u{n}" for n in range(40)},
            "t:X1": "last",
            "t:X40": "0",
            "t:X41": "0",
            "t:X42": "0",
            "t:X43": "0",
        }
        made = db.execute("SELECT count(*) FROM profiles WHERE pkey LIKE 'p:T1__'").fetchone()
        assert made == (10,)
        # Rows a quick statement wrote carry their transaction's id (a savepoint's rows,
        # its own): the single updates of profiles no other write named.
        xmins = {row[0] for row in db.execute("SELECT xmin::text FROM profiles WHERE "
                                               "pkey ~ '^t:X([5-9]|[1-3][0-9])$'")}  # fmt: skip
        assert len(xmins) <= 2
        counted = db.execute("SELECT sum(updates) FROM update_counts").fetchone()
        assert counted == (42,)  # u0-u39, again and last
    store.close()


def test_a_statement_cancelled_in_a_pipeline_fails_its_write_alone(databases: list[str]):
    """psycopg reports a cancelled statement (``statement_timeout``) as an operational
    error, though the connection is fine: in a pipeline run it makes the group run again
    without pipelines, where that write fails alone and the others commit. A trigger raises
    the error a timeout raises (SQLSTATE 57014) for one write: a real timeout would also
    cancel the group's wait for the client's lock on a machine slow enough."""
    url = databases[0]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.at = 777 THEN RAISE EXCEPTION 'canceling statement due to statement "
            "timeout' USING ERRCODE = 'query_canceled'; END IF; RETURN NEW; END $$"
        )
        db.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON writes FOR EACH ROW EXECUTE FUNCTION slow()"
        )
    store = open_pg(url)
    calls = Calls(store, False)
    for n in range(4):
        calls.visit(f"T{n}", f"X{n}", {"v": "0"})
    holder = hold_client_lock(url)
    try:
        futures = [
            store.submit_write(
                store.update_profile, calls.client, f"t:X{n}", {"v": "new"},
                777 if n == 2 else NOW + 1, BIG, 2_000,
            )
            for n in range(4)
        ]  # fmt: skip
        wait_for(lambda: store.groups.waiting() == 4)
    finally:
        holder.rollback()
        holder.close()
    outcomes = []
    for future in futures:
        assert future is not None
        try:
            outcomes.append(future.result(timeout=60))
        except psycopg.Error as exc:
            outcomes.append(exc)
    assert isinstance(outcomes[2], psycopg.errors.QueryCanceled)
    assert all(outcome.seq for n, outcome in enumerate(outcomes) if n != 2)
    with psycopg.connect(url) as db:
        rows = dict(
            db.execute("SELECT pkey, attrs -> 'v' ->> 0 FROM profiles WHERE pkey LIKE 't:X_'")
        )
    assert rows == {"t:X0": "new", "t:X1": "new", "t:X2": "0", "t:X3": "new"}
    store.close()


@pytest.mark.parametrize("attempts", [3, 1])
@pytest.mark.parametrize("write", ["page call", "delete"])
def test_a_write_the_database_undoes_to_break_a_deadlock_runs_again(
    databases: list[str], attempts: int, write: str, monkeypatch: pytest.MonkeyPatch
):
    """Another transaction holds a profile that an online write waits for, then asks for
    what the write holds (a page call's group: the other profile it names; a delete: its
    client's row): the database undoes the write to break the deadlock. The write runs
    again once the other transaction is gone and succeeds; allowed one attempt only, it
    answers 503 (busy, nothing changed) rather than the database's error."""
    monkeypatch.setattr(postgres_store, "ONLINE_ATTEMPTS", attempts)
    url = databases[0]
    with psycopg.connect(url, autocommit=True) as db:
        name = db.execute("SELECT current_database()").fetchone()
        assert name is not None
        # The store's sessions look for a deadlock after 5 s of waiting, the other one's
        # after 30 s: the write's transaction is the one undone.
        db.execute(f"ALTER DATABASE \"{name[0]}\" SET deadlock_timeout = '5s'")
    store = open_pg(url)
    calls = Calls(store, False)
    calls.visit("T1", None, {"v": "0"})
    calls.visit("T2", "X2", {"v": "0"})
    other = psycopg.connect(url)
    other.execute("SET deadlock_timeout = '30s'")
    other.execute("SELECT 1 FROM profiles WHERE pkey = 't:X2' FOR UPDATE")
    if write == "page call":
        visit = Visit("T1", "X2", {"v": "1"}, "req-both")
        future = store.submit_write(store.visit, calls.client.id, visit, NOW + 1, BIG)
        closing = "SELECT 1 FROM profiles WHERE pkey = 'p:T1' FOR UPDATE"
    else:
        future = Future()
        thread = threading.Thread(
            target=lambda: future.set_result(
                outcome(lambda: store.delete_profile(calls.client.id, "t:X2", NOW + 1))
            )
        )
        thread.start()
        closing = "SELECT 1 FROM clients WHERE code = 'demo' FOR UPDATE"
    assert future is not None
    blocked_by_other = (
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND %s = ANY(pg_blocking_pids(pid))"
    )
    with psycopg.connect(url, autocommit=True) as watch:
        pid = other.info.backend_pid
        wait_for(lambda: watch.execute(blocked_by_other, (pid,)).fetchone() is not None)
    other.execute(closing)  # the deadlock
    other.commit()
    other.close()
    values = "SELECT pkey, attrs -> 'v' ->> 0 FROM profiles ORDER BY 1"
    if attempts > 1:
        answer = future.result(timeout=60)
        if write == "page call":
            assert answer is not None
            assert "1" in dict(dump_rows(url, values)).values()
        else:
            assert answer is True
            assert dict(dump_rows(url, values)) == {"p:T1": "0"}
    else:
        error = future.exception(timeout=60) if write == "page call" else None
        if write == "delete":
            kind, message = future.result(timeout=60)
            assert kind == "DatabaseUnavailable"
        else:
            assert isinstance(error, DatabaseUnavailable) and error.status == 503
            assert "deadlock" in error.detail
            message = str(error)
        assert "busy" in message and "nothing was changed" in message
        assert dict(dump_rows(url, values)) == {"p:T1": "0", "t:X2": "0"}
    store.close()


def dump_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as db:
        return db.execute(sql).fetchall()  # type: ignore[arg-type]


def test_a_write_handed_over_after_close_fails_and_runs_nothing(databases: list[str]):
    store = open_pg(databases[0])
    calls = Calls(store, False)
    calls.visit("T", "X", {"v": "0"})
    store.close()
    future = store.submit_write(
        store.update_profile, calls.client, "t:X", {"v": "1"}, NOW, BIG, 2_000
    )
    assert future is not None and isinstance(future.exception(timeout=10), DatabaseUnavailable)
    assert store.groups.waiting() == 0 and not store.groups.running


def ended_all(db: psycopg.Connection[Any], others: str) -> bool:
    """End every other connection to the database; True once none is left."""
    db.execute(f"SELECT pg_terminate_backend(pid) {others}")
    return db.execute(f"SELECT count(*) {others}").fetchone() == (0,)


def test_a_pooled_connection_lost_while_idle_does_not_fail_a_request(databases: list[str]):
    """The database ends every pooled connection (as a restart does) just after they
    answered: the next fetch, single update, page call and quota read, lent them without
    a check, find them lost before anything reached the database and start over on a
    checked one."""
    url = databases[0]
    store = open_pg(url)
    calls = Calls(store, False)
    calls.visit("T", "X", {"n": "0"})
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    for attempt in range(4):
        # Several pooled connections, all of which answered just now.
        fetches = [threading.Thread(target=store.get_profile, args=(1, "t:X")) for _ in range(8)]
        for thread in fetches:
            thread.start()
        for thread in fetches:
            thread.join()
        with psycopg.connect(url, autocommit=True) as db:
            ended = db.execute(f"SELECT count(pg_terminate_backend(pid)) {others}").fetchone()
            assert ended is not None and ended[0] >= 1
            # Gone for good before the next call, as after a restart; the pool may still be
            # opening a connection it began to add for the fetches: that one is ended too.
            wait_for(lambda db=db: ended_all(db, others))  # type: ignore[misc]
        if attempt == 0:
            assert store.get_profile(1, "t:X") is not None
        elif attempt == 1:
            assert calls.update("t:X", {"n": "1"}).seq
        elif attempt == 2:
            assert calls.visit("T", "X", {"n": "2"}) == "t:X"
        else:
            assert [updates for _, updates in store.recent_updates(1, 0)] == [1]
    profile = store.get_profile(1, "t:X")
    assert profile is not None and profile.attributes["n"].value == "2"
    store.close()


def test_a_units_parts_are_lent_trusted_connections_and_start_over_on_a_lost_one(
    databases: list[str], monkeypatch: pytest.MonkeyPatch
):
    """A part of a unit is one transaction: its connection is lent without the pool's check
    (a round trip) when it answered within the last second. Should the database have ended
    it meanwhile, the part's BEGIN finds it lost, nothing of the part reached the database,
    and the part starts over on a checked connection: every row is applied."""
    from test_store_contract import LEASE, accept, apply, values

    url = databases[0]
    store = open_pg(url)
    checks: list[int] = []
    check = ConnectionPool.check_connection
    monkeypatch.setattr(
        ConnectionPool, "check_connection", staticmethod(lambda db: (checks.append(1), check(db)))
    )
    body = "batch=thirdPartyId,n\n" + "".join(f"p{i},{i}\n" for i in range(5))
    accept(store, body.encode(), unit_rows=2)  # units of 1, 2 and 2 rows
    claims = [store.claim_unit("w", now_ms(), LEASE) for _ in range(3)]
    assert all(claims)
    assert apply(store, claims[0]) is not None  # its connections answer now
    checks.clear()
    assert apply(store, claims[1]) is not None
    assert checks == []  # before: one check per part
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with psycopg.connect(url, autocommit=True) as db:
        wait_for(lambda: ended_all(db, others))
    assert apply(store, claims[2]) is not None
    assert checks  # the pool then checked what it lent
    assert [values(store, f"p{i}") for i in range(5)] == [{"n": str(i)} for i in range(5)]
    store.close()
