"""The online writes of a process of `serve` made by a process of their own (SQLite).

``storage/sqlite/apart.py``: the event loop hands each group of single updates, page calls
and deletes over a socket to a child process, which runs it as the writer thread would.
These tests drive the link on a real SQLite file with a real child, and `profilebase serve`
over real HTTP: the same answers as the writer thread, errors included, one group after
another in order, and a child that dies or hangs answered with 503 and replaced.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer
from helpers import attributes, deliver, process_tree, update
from test_crash import ServerProcess

from profilebase.errors import DatabaseUnavailable, ProfilebaseError, QuotaExceeded, StorageError
from profilebase.models import Client, now_ms
from profilebase.server.settings import Settings
from profilebase.server.storage.base import Visit
from profilebase.server.storage.sqlite import SQLiteStore
from profilebase.server.storage.sqlite import apart as apart_module
from profilebase.server.storage.sqlite.apart import WriterLink

NOW = now_ms()


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[[str], SQLiteStore]]:
    stores: list[SQLiteStore] = []

    def make(name: str) -> SQLiteStore:
        store = SQLiteStore(str(tmp_path / f"{name}.db"))
        store.migrate()
        store.ensure_client("demo")
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def settings_for_sqlite(tmp_path: Path) -> Iterator[tuple[Settings, SQLiteStore]]:
    settings = Settings(database=f"sqlite:///{tmp_path / 'live.db'}", workers=0)
    store = SQLiteStore(str(tmp_path / "live.db"))
    yield settings, store
    store.close()


def link_of(store: SQLiteStore, answer_timeout: float = 60.0) -> WriterLink:
    link = store.writer_apart(answer_timeout)
    assert link is not None
    return link


@asynccontextmanager
async def opened(store: SQLiteStore, answer_timeout: float = 60.0) -> AsyncIterator[WriterLink]:
    """A link to a child of its own, closed however the block ends (a socket left open
    would keep the child, and the test run, waiting)."""
    link = link_of(store, answer_timeout)
    await link.open()
    try:
        yield link
    finally:
        await link.close()


async def refusal(
    link: WriterLink, store: SQLiteStore, page_call: Visit
) -> tuple[DatabaseUnavailable | None, float]:
    """The 503 a page call sent through ``link`` answers (None if it is made), and the
    seconds it took."""
    began = time.monotonic()
    try:
        await link.write(store.visit, client_of(store).id, page_call, NOW, 10_000)
        error = None
    except DatabaseUnavailable as exc:
        error = exc
    return error, time.monotonic() - began


def client_of(store: SQLiteStore) -> Client:
    client = store.get_client("demo")
    assert client is not None
    return client


def visit(tnt_id: str, **values: str) -> Visit:
    return Visit(tnt_id=tnt_id, third_party_id=None, values=values, request_id=f"r-{tnt_id}")


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a write answered: its result, or its error's class, message and headers."""
    try:
        return "result", call()
    except ProfilebaseError as exc:
        return "error", (type(exc), exc.message, exc.headers)


def state(pid: int) -> str:
    """A process's state letter (Z: exited, not yet reaped); "gone" once it is reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_child_answers_every_write_as_the_writer_thread_does(make_store):
    """The same writes on two databases, one on the writer thread, one through the link:
    the same results, and the same errors (class, message, headers: the 429 of the quota,
    the 413 of a profile over its size); the serving process itself writes nothing."""
    on_thread, apart = make_store("thread"), make_store("apart")

    def writes(store: SQLiteStore) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
        client = client_of(store)
        return [
            (store.visit, (client.id, visit("t1", a="1"), NOW, 10_000)),
            (store.update_profile, (client, "p:t1", {"b": "2"}, NOW, 2, 10_000)),
            (store.update_profile, (client, "p:nobody", {"b": "2"}, NOW, 2, 10_000)),
            (store.update_profile, (client, "p:t1", {"c": "3"}, NOW, 2, 10_000)),
            (store.update_profile, (client, "p:t1", {"d": "4"}, NOW, 2, 10_000)),  # 429
            (store.visit, (client.id, visit("t1", big="x" * 500), NOW, 200)),  # 413
            (store.delete_profile, (client.id, "p:t1", NOW)),
            (store.delete_profile, (client.id, "p:t1", NOW)),
        ]

    expected = [
        outcome(lambda c=call, a=args: on_thread.submit_write(c, *a).result())
        for call, args in writes(on_thread)
    ]

    async def through_the_link() -> list[tuple[str, Any]]:
        link = link_of(apart)
        await link.open()
        try:
            answers = []
            for call, args in writes(apart):
                try:
                    answers.append(("result", await link.write(call, *args)))
                except ProfilebaseError as exc:
                    answers.append(("error", (type(exc), exc.message, exc.headers)))
            return answers
        finally:
            await link.close()

    answers = asyncio.run(through_the_link())
    assert answers == expected
    kinds = [kind for kind, _ in answers]
    assert kinds.count("error") == 2 and answers[4][1][0] is QuotaExceeded
    assert answers[4][1][2]["Retry-After"]
    assert apart._groups._thread is None  # no writer thread ran in this process


@pytest.mark.parametrize(
    "value",
    ["a\x00b", "line\r\nnext\r", "lone \udc80 surrogate", "w" * 100_000, ""],
    ids=["NUL", "CR", "invalid UTF-8", "1,000x wide", "empty"],
)
def test_odd_values_cross_to_the_child_as_the_thread_takes_them(make_store, value: str):
    """Whatever a request carries reaches the child unchanged: the child stores, or refuses
    with the same error, what the writer thread does, and stores the same profile. (A lone
    surrogate never gets this far from HTTP: the web layer refuses it, tests/test_ids.py.)"""

    def error_of(exc: Exception) -> tuple[type, str]:
        # Only our errors keep their message across: others are rebuilt without their
        # ``__init__`` and answer a plain 500 either way.
        return type(exc), exc.message if isinstance(exc, ProfilebaseError) else ""

    on_thread, apart = make_store("thread"), make_store("apart")

    def answer(call: Callable[[], Any]) -> tuple[str, Any]:
        try:
            return "result", call()
        except Exception as exc:  # a lone surrogate fails in SQLite's binding, not ours
            return "error", error_of(exc)

    thread_answer = answer(
        lambda: on_thread.submit_write(
            on_thread.visit, client_of(on_thread).id, visit("t1", v=value), NOW, 1_000_000
        ).result()
    )

    async def through_the_link() -> tuple[str, Any]:
        async with opened(apart) as link:
            try:
                made = await link.write(
                    apart.visit, client_of(apart).id, visit("t1", v=value), NOW, 1_000_000
                )
                return "result", made
            except Exception as exc:
                return "error", error_of(exc)

    assert asyncio.run(through_the_link()) == thread_answer
    values = []
    for store in (on_thread, apart):
        profile = store.get_profile(client_of(store).id, "p:t1")
        values.append(profile and {n: a.value for n, a in profile.attributes.items()})
    assert values[0] == values[1]


def test_a_database_held_by_another_writer_answers_503_from_the_child(tmp_path: Path):
    """The child's own outage answers cross as the thread's do: a write lock held from
    outside past the store's timeout makes the write a 503 with Retry-After that says
    nothing was changed; once it is let go, the next write is made."""
    path = str(tmp_path / "busy.db")
    store = SQLiteStore(path, timeout=0.5)
    store.migrate()
    client = store.ensure_client("demo")
    outside = sqlite3.connect(path, isolation_level=None)

    async def scenario() -> tuple[BaseException | None, str]:
        link = link_of(store)
        await link.open()
        try:
            outside.execute("BEGIN IMMEDIATE")
            try:
                await link.write(store.visit, client.id, visit("t1", n="1"), NOW, 10_000)
                error = None
            except DatabaseUnavailable as exc:
                error = exc
            outside.execute("ROLLBACK")
            made = await link.write(store.visit, client.id, visit("t2", n="2"), NOW, 10_000)
            return error, made
        finally:
            await link.close()

    try:
        error, made = asyncio.run(scenario())
    finally:
        outside.close()
    assert isinstance(error, DatabaseUnavailable) and error.status == 503
    assert "nothing was changed" in error.message and error.headers["Retry-After"]
    assert store.get_profile(client.id, "p:t1") is None
    assert made and store.get_profile(client.id, "p:t2") is not None
    store.close()


def test_writes_sent_together_apply_in_the_order_they_came(make_store):
    """200 updates of one profile at once: each answered, their seqs in the order they
    were queued, the last one's value kept."""
    store = make_store("order")
    client = client_of(store)
    store.submit_write(store.visit, client.id, visit("t1", n="start"), NOW, 10_000).result()

    async def many() -> list[Any]:
        link = link_of(store)
        await link.open()
        try:
            return await asyncio.gather(
                *(
                    link.write(
                        store.update_profile, client, "p:t1", {"n": str(i)}, NOW, 1_000_000, 10_000
                    )
                    for i in range(200)
                )
            )
        finally:
            await link.close()

    outcomes = asyncio.run(many())
    seqs = [o.seq for o in outcomes]
    assert all(seqs) and seqs == sorted(seqs) and len(set(seqs)) == 200
    profile = store.get_profile(client.id, "p:t1")
    assert profile is not None and profile.attributes["n"].value == "199"


def test_a_child_that_dies_fails_its_writes_with_503_and_another_takes_over(make_store, caplog):
    """A child stopped, then killed, while it holds a group: that write answers 503 saying
    its outcome is unknown; the next write starts another child and is made."""
    store = make_store("dies")
    client = client_of(store)
    store.submit_write(store.visit, client.id, visit("t1", n="0"), NOW, 10_000).result()

    async def scenario() -> tuple[BaseException | None, int, int, Any, int]:
        async with opened(store) as link:
            return await killed_while_holding(link)

    async def killed_while_holding(
        link: WriterLink,
    ) -> tuple[BaseException | None, int, int, Any, int]:
        first = link.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        pending = asyncio.ensure_future(
            link.write(store.update_profile, client, "p:t1", {"n": "1"}, NOW, 1_000_000, 10_000)
        )
        await asyncio.sleep(0.3)  # sent: the group waits in the stopped child's socket
        assert not pending.done()
        os.kill(first, signal.SIGKILL)
        error = await asyncio.wait_for(asyncio.gather(pending, return_exceptions=True), 10)
        later = await link.write(
            store.update_profile, client, "p:t1", {"n": "2"}, NOW, 1_000_000, 10_000
        )
        return error[0], first, link.pid or 0, later, link.started

    error, first, second, later, started = asyncio.run(scenario())
    assert isinstance(error, DatabaseUnavailable)
    assert error.status == 503 and error.headers["Retry-After"] == "1"
    assert "unknown" in error.message
    assert later.seq and started == 2 and second != first
    assert f"the writer process {first} stopped (exit code" in caplog.text
    profile = store.get_profile(client.id, "p:t1")
    assert profile is not None and profile.attributes["n"].value == "2"


def test_a_child_that_does_not_answer_is_killed_and_replaced(make_store):
    """A child that holds a group past ``answer_timeout`` is killed, the group answers 503,
    and the next write goes to a new child."""
    store = make_store("hangs")
    client = client_of(store)

    async def scenario() -> tuple[BaseException | None, float, int, str, int]:
        async with opened(store, answer_timeout=1.0) as link:
            return await stopped(link)

    async def stopped(link: WriterLink) -> tuple[BaseException | None, float, int, str, int]:
        first = link.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        error, waited = await refusal(link, store, visit("t1", n="1"))
        await link.write(store.visit, client.id, visit("t2", n="2"), NOW, 10_000)
        return error, waited, first, state(first), link.started

    error, waited, first, first_state, started = asyncio.run(scenario())
    assert isinstance(error, DatabaseUnavailable) and "unknown" in error.message
    assert 0.9 <= waited < 10
    assert first_state in {"Z", "gone"}  # killed
    assert started == 2
    assert store.get_profile(client_of(store).id, "p:t2") is not None


def test_writes_queued_behind_groups_that_time_out_go_to_the_next_child(make_store, caplog):
    """Groups of one write each (``most`` 1), two sent to a child that stopped and a third
    queued behind them: the two answer 503 once their time is up, the third is made by the
    next child without waiting for another write to come."""
    store = make_store("queued")
    client = client_of(store)

    async def scenario() -> list[Any]:
        link = WriterLink(store.path, store.synchronous, store.timeout, 1.0, most=1)
        await link.open()
        first = link.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        try:
            return await asyncio.wait_for(
                asyncio.gather(
                    *(
                        link.write(store.visit, client.id, visit(f"t{i}", n=str(i)), NOW, 10_000)
                        for i in range(3)
                    ),
                    return_exceptions=True,
                ),
                20,
            )
        finally:
            await link.close()

    answers = asyncio.run(scenario())
    assert [type(a) for a in answers[:2]] == [DatabaseUnavailable, DatabaseUnavailable]
    assert answers[2] == "p:t2" or store.get_profile(client.id, "p:t2") is not None
    assert "did not answer in 1 s; its 2 writes answer 503" in caplog.text


def test_an_idle_child_ends_on_sigterm_and_the_next_write_starts_another(make_store):
    """SIGTERM (a service manager's stop; multiprocessing's when the HTTP process exits)
    ends an idle child at once, with exit code 0; no write is lost: the next one goes to
    a new child."""
    store = make_store("sigterm")
    client = client_of(store)

    async def scenario() -> tuple[int, str, int]:
        link = link_of(store)
        await link.open()
        try:
            pid = link.pid
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while state(pid) not in {"Z", "gone"} and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await link.write(store.visit, client.id, visit("t1", n="1"), NOW, 10_000)
            return pid, state(pid), link.started
        finally:
            await link.close()

    pid, ended, started = asyncio.run(scenario())
    assert ended in {"Z", "gone"} and started == 2
    assert store.get_profile(client.id, "p:t1") is not None


def test_children_that_die_as_they_start_are_not_started_again_for_a_second(make_store):
    """Two children in a row that die within a second of their start: the writes of the
    next second answer 503 at once, without a spawn each; then a new child makes them."""
    store = make_store("crashing")
    client = client_of(store)

    async def killed(link: WriterLink) -> None:
        pid = link.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        while link.pid == pid:  # until the link has seen it go
            await asyncio.sleep(0.01)

    async def scenario() -> tuple[BaseException | None, int, int, float]:
        async with opened(store) as link:
            await killed(link)  # the first, at once
            await link.write(store.visit, client.id, visit("t1", n="1"), NOW, 10_000)
            await killed(link)  # the second, within a second of its start
            error, refused_in = await refusal(link, store, visit("t2", n="2"))
            started_then = link.started
            await asyncio.sleep(1.1)
            await link.write(store.visit, client.id, visit("t3", n="3"), NOW, 10_000)
            return error, started_then, link.started, refused_in

    error, started_then, started_after, refused_in = asyncio.run(scenario())
    assert isinstance(error, DatabaseUnavailable) and refused_in < 2  # (a busy machine's "at once")
    assert started_then == 2 and started_after == 3  # no child was started for the refusal
    assert store.get_profile(client.id, "p:t2") is None
    assert store.get_profile(client.id, "p:t3") is not None


def test_a_write_whose_caller_gave_up_before_it_was_sent_is_not_made(make_store):
    """A request that ends (its client hung up) while its write still waits in the queue
    takes the write with it."""
    store = make_store("cancel")
    client = client_of(store)

    async def scenario() -> None:
        async with opened(store) as link:
            given_up = asyncio.ensure_future(
                link.write(store.visit, client.id, visit("t1", n="1"), NOW, 10_000)
            )
            kept = asyncio.ensure_future(
                link.write(store.visit, client.id, visit("t2", n="2"), NOW, 10_000)
            )
            await asyncio.sleep(0)  # both queued, the group not yet sent
            given_up.cancel()
            await kept

    asyncio.run(scenario())
    assert store.get_profile(client.id, "p:t1") is None
    assert store.get_profile(client.id, "p:t2") is not None


def test_closing_waits_for_the_writes_under_way_and_lets_the_child_go(make_store):
    store = make_store("close")
    client = client_of(store)

    async def scenario() -> tuple[list[Any], int]:
        link = link_of(store)
        await link.open()
        pid = link.pid
        assert pid is not None
        writes = [
            asyncio.ensure_future(
                link.write(store.visit, client.id, visit(f"t{i}", n=str(i)), NOW, 10_000)
            )
            for i in range(50)
        ]
        await asyncio.sleep(0)
        await link.close()
        assert all(w.done() for w in writes)
        return [w.result() for w in writes], pid

    results, pid = asyncio.run(scenario())
    assert len(results) == 50
    assert all(store.get_profile(client.id, f"p:t{i}") is not None for i in range(50))
    assert state(pid) in {"Z", "gone"}


def test_a_write_that_cannot_be_sent_fails_alone(make_store):
    """A write whose arguments do not pickle (none of ours; a bug would make one) answers a
    storage error; the write queued with it is made."""
    store = make_store("unsendable")
    client = client_of(store)

    class Unsendable(dict):  # type: ignore[type-arg]
        def __reduce__(self) -> Any:
            raise TypeError("not for sending")

    async def scenario() -> tuple[BaseException | None, Any]:
        link = link_of(store)
        await link.open()
        try:
            bad_args = Visit("t1", None, Unsendable(n="1"), "r-bad")
            answers = await asyncio.gather(
                link.write(store.visit, client.id, bad_args, NOW, 10_000),
                link.write(store.visit, client.id, visit("t2", n="2"), NOW, 10_000),
                return_exceptions=True,
            )
            return answers[0], answers[1]
        finally:
            await link.close()

    error, made = asyncio.run(scenario())
    assert isinstance(error, StorageError) and error.status == 500
    assert isinstance(made, str) and store.get_profile(client.id, "p:t2") is not None
    assert store.get_profile(client.id, "p:t1") is None


def test_a_writer_process_that_cannot_start_leaves_the_writes_to_the_thread(
    settings_for_sqlite, monkeypatch, caplog
):
    """If the writer process does not start in time, the HTTP process says so and makes its
    online writes on its writer thread."""
    monkeypatch.setattr(apart_module, "START_SECONDS", 0.0)
    settings, store = settings_for_sqlite
    with (
        LiveServer(settings, store, workers=0, writer_apart=True) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        reply = deliver(
            http,
            {
                "id": {"thirdPartyId": "crm-1"},
                "execute": {"pageLoad": {"profileParameters": {"a": "1"}}},
            },
        )
        assert reply.status_code == 200, reply.text
        assert attributes(http, "crm-1") == {"a": "1"}
    assert "no writer process" in caplog.text
    assert store._groups._thread is not None  # the thread made the write


def writer_children(server: ServerProcess) -> list[int]:
    """The processes `serve` spawned to make online writes: the spawned ones that started
    none (an HTTP process of several starts its writer; multiprocessing's resource tracker
    is not spawned this way)."""
    found = []
    for pid in process_tree(server.process.pid)[1:]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and process_tree(pid) == [pid]:
            found.append(pid)
    return sorted(found)


@pytest.mark.parametrize(
    ("processes", "apart"),
    [(1, True), (2, True), (1, False)],
    ids=["one HTTP process", "two HTTP processes", "writer thread"],
)
def test_serve_makes_online_writes_in_a_process_of_their_own(
    tmp_path: Path, processes: int, apart: bool
):
    """`serve`: page calls, single updates and deletes are made by a writer process of each
    HTTP process (with ``sqlite_writer_process`` off, by none), and read back at once; a
    writer process killed is replaced at the next write."""
    server = ServerProcess(
        f"sqlite:///{tmp_path / 'serve.db'}",
        tmp_path / "serve.log",
        PROCESSES=str(processes),
        WORKERS="0",
        SQLITE_WRITER_PROCESS=str(apart).lower(),
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            writers = writer_children(server)
            assert len(writers) == (processes if apart else 0)
            reply = deliver(
                http,
                {
                    "id": {"thirdPartyId": "crm-1"},
                    "execute": {"pageLoad": {"profileParameters": {"a": "1"}}},
                },
            )
            assert reply.status_code == 200, reply.text
            assert update(http, mbox3rdPartyId="crm-1", profile_b="2").status_code == 200
            assert attributes(http, "crm-1") == {"a": "1", "b": "2"}
            killed = apart and processes == 1  # then the next write is sure to need another
            if killed:
                os.kill(writers[0], signal.SIGKILL)
                deadline = time.monotonic() + 10
                while state(writers[0]) not in {"Z", "gone"} and time.monotonic() < deadline:
                    time.sleep(0.05)
            assert update(http, mbox3rdPartyId="crm-1", profile_b="3").status_code == 200
            assert attributes(http, "crm-1") == {"a": "1", "b": "3"}
            assert len(writer_children(server)) == len(writers)
            if killed:
                assert writer_children(server) != writers
            assert (
                http.delete(
                    "/rest/v1/profiles/thirdPartyId/crm-1", params={"client": "demo"}
                ).status_code
                == 204
            )
            assert attributes(http, "crm-1") is None
    finally:
        server.kill()
