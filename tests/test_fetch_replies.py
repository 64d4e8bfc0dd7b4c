"""Fetch replies kept while nothing is committed (web/fetch_replies.py), and the other
things a request no longer works out twice: parsed query strings, a client's context.

The kept replies must never show less than the database holds to a request sent after a
write was answered: a write through this server, a write by another process, a change of
links, the passing of a profile's expiry. These run on both backends (SQLite checks for
commits with ``changes_nowait``, PostgreSQL with ``changes_async``)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import LiveServer
from helpers import attributes, deliver, update
from starlette.requests import Request

from profilebase.errors import DatabaseUnavailable
from profilebase.server import clients
from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.storage.base import WouldWait
from profilebase.server.storage.sqlite.store import SQLiteStore
from profilebase.server.web.fetch_replies import ARRIVED, OVERHEAD, FetchReplies
from profilebase.server.web.openapi import QUERY_KEPT_BYTES, query_params


class Changes:
    """A store's ``changes_nowait`` whose value the test moves, counting the calls."""

    def __init__(self) -> None:
        self.value = 1
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        return self.value


class Seconds:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


# -- FetchReplies alone ------------------------------------------------------------------


def test_a_reply_is_kept_until_anything_is_committed():
    replies, changes = FetchReplies(1 << 20), Changes()
    replies.refresh(None, changes)
    assert replies.get(1, b"/p/a", 0) is None
    replies.put(1, b"/p/a", 5, b'{"a":1}', replies.generation)
    replies.refresh(None, changes)
    assert replies.get(1, b"/p/a", 0) == b'{"a":1}'
    assert replies.get(2, b"/p/a", 0) is None  # another client's path is another reply
    changes.value = 2  # a commit, anywhere
    replies.refresh(None, changes)
    assert replies.get(1, b"/p/a", 0) is None
    assert replies.size == (0, 0)


def test_a_request_that_arrived_before_the_last_check_does_not_ask_again():
    clock, changes = Seconds(), Changes()
    replies = FetchReplies(1 << 20, clock)
    replies.refresh(9.0, changes)
    assert changes.asked == 1  # checked at 10.0
    replies.put(1, b"/p/a", 5, b"old", replies.generation)
    changes.value = 2  # committed after the check
    replies.refresh(9.5, changes)  # arrived before the check: its answer holds
    assert changes.asked == 1 and replies.get(1, b"/p/a", 0) == b"old"
    replies.refresh(10.0, changes)  # at the same moment: the commit may lie between
    assert changes.asked == 2 and replies.get(1, b"/p/a", 0) is None
    replies.put(1, b"/p/a", 5, b"new", replies.generation)
    changes.value = 3
    clock.now = 11.0
    replies.refresh(10.5, changes)  # arrived after it: the commit may be one it waits for
    assert changes.asked == 3 and replies.get(1, b"/p/a", 0) is None
    replies.refresh(None, changes)  # arrival unknown: always asks
    assert changes.asked == 4


def test_the_check_s_moment_is_taken_before_it_asks():
    """A commit made while the database is asked may or may not be in its answer: the
    check counts as made at the moment before asking."""
    clock, changes = Seconds(), Changes()
    replies = FetchReplies(1 << 20, clock)

    def slow() -> int:
        clock.now = 20.0
        return changes()

    replies.refresh(None, slow)
    replies.refresh(15.0, changes)  # arrived while the first check was under way
    assert changes.asked == 2


class AskedOverTheNetwork:
    """A store's ``changes_async``: each check waits until the test answers it."""

    def __init__(self, clock: Seconds) -> None:
        self.clock = clock
        self.value = 1
        self.asked: list[asyncio.Future[None]] = []

    async def __call__(self) -> int:
        answer = asyncio.get_running_loop().create_future()
        self.asked.append(answer)
        await answer
        return self.value


def checked_by_hand() -> tuple[Seconds, FetchReplies, AskedOverTheNetwork]:
    """A clock, replies on it, and a check the test answers by hand."""
    clock = Seconds()
    return clock, FetchReplies(1 << 20, clock), AskedOverTheNetwork(clock)


async def turns() -> None:
    """Let the event loop run what is ready (a check's task starts, its waiters wake)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_requests_share_the_checks_they_wait_for():
    """PostgreSQL's check is a round trip (``refresh_async``): requests that arrived before
    a check was sent take its answer; one that arrived after waits for it, then sends one
    more (never two at once); a check that fails fails those waiting for it, and the next
    request asks again."""

    async def scenario() -> None:
        clock, replies, changes = checked_by_hand()
        first = [asyncio.create_task(replies.refresh_async(9.0, changes)) for _ in range(5)]
        await turns()
        assert len(changes.asked) == 1  # sent at 10.0 for all five
        clock.now = 11.0
        later = asyncio.create_task(replies.refresh_async(10.5, changes))  # after it was sent
        await turns()
        assert len(changes.asked) == 1  # waits for the one in flight before sending its own
        changes.asked[0].set_result(None)
        await asyncio.gather(*first)
        replies.put(1, b"/p/a", 5, b"old", replies.generation)
        await turns()
        assert len(changes.asked) == 2 and not later.done()
        changes.value = 2  # a commit the first check did not see
        changes.asked[1].set_result(None)
        await later
        assert replies.get(1, b"/p/a", 0) is None  # forgotten
        await replies.refresh_async(10.9, changes)  # arrived before the last check: no ask
        assert len(changes.asked) == 2
        clock.now = 12.0
        failing = [asyncio.create_task(replies.refresh_async(11.5, changes)) for _ in range(3)]
        await turns()
        assert len(changes.asked) == 3
        changes.asked[2].set_exception(WouldWait())
        results = await asyncio.gather(*failing, return_exceptions=True)
        assert all(isinstance(result, WouldWait) for result in results)
        again = asyncio.create_task(replies.refresh_async(11.5, changes))
        await turns()
        assert len(changes.asked) == 4  # the failed check answered nothing: asked again
        changes.asked[3].set_result(None)
        await again

    asyncio.run(scenario())


def test_a_check_outlives_the_request_that_sent_it():
    """The request that sent a check may give up (its client went away): the check goes
    on, and those waiting for it get its answer. A database found unavailable is reported
    to each of them as such (503), not sent to a thread to wait again, and what was kept is
    forgotten (a crash of the database may lie between two answers)."""

    async def scenario() -> None:
        clock, replies, changes = checked_by_hand()
        asker = asyncio.create_task(replies.refresh_async(9.0, changes))
        await turns()
        waiter = asyncio.create_task(replies.refresh_async(9.5, changes))
        await turns()
        asker.cancel()
        await turns()
        assert not waiter.done() and len(changes.asked) == 1
        changes.asked[0].set_result(None)
        await waiter
        assert len(changes.asked) == 1
        replies.put(1, b"/p/a", 5, b"kept", replies.generation)
        clock.now = 12.0
        waiting = [asyncio.create_task(replies.refresh_async(11.0, changes)) for _ in range(2)]
        await turns()
        changes.asked[1].set_exception(DatabaseUnavailable(detail="down"))
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(result, DatabaseUnavailable) for result in results)
        assert replies.get(1, b"/p/a", 0) is None  # what lies between is unknown: forgotten

    asyncio.run(scenario())


def test_a_reply_read_while_a_check_answered_a_change_is_not_kept():
    """A fetch over the network reads after its check; another request's check may answer a
    commit before that read comes back. The read may predate the commit: it is sent, not
    kept, so a request that takes the later check's answer does not get it."""

    async def scenario() -> None:
        clock, replies, changes = checked_by_hand()
        first = asyncio.create_task(replies.refresh_async(9.0, changes))
        await turns()
        changes.asked[0].set_result(None)
        await first
        generation = replies.generation  # the fetch starts its read here
        clock.now = 12.0
        changes.value = 2  # a write commits, and is answered
        other = asyncio.create_task(replies.refresh_async(11.0, changes))  # sent after it
        await turns()
        changes.asked[1].set_result(None)
        await other
        replies.put(1, b"/p/a", 5, b"maybe before the write", generation)  # the read returns
        assert replies.get(1, b"/p/a", 0) is None
        replies.put(1, b"/p/a", 5, b"read after", replies.generation)
        assert replies.get(1, b"/p/a", 0) == b"read after"

    asyncio.run(scenario())


def test_an_expired_profile_s_reply_is_not_sent():
    replies, changes = FetchReplies(1 << 20), Changes()
    replies.refresh(None, changes)
    replies.put(1, b"/p/a", 1_000, b"body", replies.generation)
    assert replies.get(1, b"/p/a", 1_000) == b"body"  # active at the expiry moment itself
    assert replies.get(1, b"/p/a", 1_001) is None


def test_replies_take_at_most_the_bytes_given_the_oldest_going_first():
    body = b"x" * 100
    each = len(body) + len(b"/p/0") + OVERHEAD
    replies, changes = FetchReplies(3 * each), Changes()
    replies.refresh(None, changes)
    for n in range(5):
        replies.put(1, f"/p/{n}".encode(), 0, body, replies.generation)
        assert replies.size[1] <= 3 * each
    assert [replies.get(1, f"/p/{n}".encode(), 0) for n in range(5)] == [None, None] + [body] * 3
    replies.put(1, b"/p/4", 0, body, replies.generation)  # the same path again counts once
    assert replies.size == (3, 3 * each)
    replies.put(
        1, b"/p/big", 0, b"y" * (3 * each), replies.generation
    )  # larger than everything: not kept
    assert replies.get(1, b"/p/big", 0) is None and replies.size == (3, 3 * each)


def test_nothing_is_kept_with_zero_bytes():
    replies, changes = FetchReplies(0), Changes()
    replies.refresh(None, changes)
    replies.put(1, b"/p/a", 0, b"", replies.generation)
    assert replies.get(1, b"/p/a", 0) is None


# -- served: the reply always the database's --------------------------------------------


def context_of(server: LiveServer) -> Any:
    """The app's context (``Context``), as the server runs it."""
    app: Any = server.server.config.app
    return app.state.context


def kept(server: LiveServer) -> FetchReplies:
    replies: FetchReplies = context_of(server).fetch_replies
    return replies


def test_a_fetch_sees_every_write_answered_before_it(
    http: httpx.Client, live_server: LiveServer, database_url: str
):
    """Fetch, write, fetch, many times over: every fetch shows the write answered before
    it, through each kind of write (page call, single update, delete) and each path."""
    deliver(http, {"id": {"thirdPartyId": "crm-1", "tntId": "t1"}, "execute": {"pageLoad": {}}})
    for n in range(30):
        assert update(http, mbox3rdPartyId="crm-1", profile_n=str(n)).status_code == 200
        assert attributes(http, "crm-1") == {"n": str(n)}
        assert attributes(http, "crm-1") == {"n": str(n)}  # the second from memory
        assert kept(live_server).size[0] == 1
        assert attributes(http, "t1", third_party=False) == {"n": str(n)}
    payload = {"id": {"tntId": "t1"}, "execute": {"pageLoad": {"profileParameters": {"m": "1"}}}}
    assert deliver(http, payload).status_code == 200
    assert attributes(http, "t1", third_party=False) == {"m": "1", "n": "29"}
    assert http.delete("/rest/v1/profiles/thirdPartyId/crm-1?client=demo").status_code == 204
    assert attributes(http, "crm-1") is None
    assert attributes(http, "t1", third_party=False) is None
    assert kept(live_server).size[0] == 0  # a 404 is not kept
    deliver(http, {"id": {"thirdPartyId": "crm-2"}, "execute": {"pageLoad": {}}})
    attributes(http, "crm-2")
    assert kept(live_server).size[0] == 1


def test_a_new_connection_never_repeats_the_value_of_the_one_before(store: Store):
    """SQLite's data_version counts per connection: one opened after an error could say
    what the one before said, with commits between. The connection's number is part of
    the value."""
    if not isinstance(store, SQLiteStore):
        pytest.skip("SQLite's data_version only")
    before = store.changes_nowait()
    assert store.changes_nowait() == before  # nothing committed
    db = store._nowait_db
    assert db is not None
    store._nowait_db = None  # as _on_nowait_connection does after an error
    db.close()
    after = store.changes_nowait()
    assert after != before and after == store.changes_nowait()


def test_a_pipelined_request_is_stamped_when_it_is_served(settings: Settings, store: Store):
    """A request sent on a connection behind another waits for that one's response: it is
    stamped once that is complete, not when its head was read (a write ahead of a fetch in
    one pipeline was answered before the fetch was served)."""
    seen: list[tuple[float, float]] = []

    def recording(app: Any) -> Any:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            async def last_sent(message: Any) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    seen.append((scope[ARRIVED], time.monotonic()))  # before its last part
                await send(message)

            await app(scope, receive, last_sent if scope["type"] == "http" else send)

        return wrapped

    with LiveServer(settings, store, workers=0, wrap=recording) as server:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(request * 3)  # one send: uvicorn reads all three heads at once
            received = b""
            while received.count(b"HTTP/1.1 200") < 3:
                chunk = conn.recv(65536)
                assert chunk, received
                received += chunk
    assert len(seen) == 3
    for (_, finished), (started, _) in zip(seen, seen[1:], strict=False):
        assert started >= finished


def test_a_write_by_another_process_is_seen_at_once(
    http: httpx.Client, store: Store, database_url: str
):
    """`profilebase clients`, an import or another HTTP process write the database from
    processes of their own: the next fetch shows what they wrote."""
    deliver(http, {"id": {"tntId": "t9"}, "execute": {"pageLoad": {}}})
    for n in range(3):
        assert attributes(http, "t9", third_party=False) == ({"v": str(n - 1)} if n else {})
        script = f"""
            from profilebase.models import now_ms
            from profilebase.server.storage.base import Visit
            from profilebase.server.storage import open_store
            store = open_store({database_url!r})
            client = store.get_client("demo")
            store.visit(client.id, Visit("t9", None, {{"v": "{n}"}}, "r"), now_ms(), 10_000)
            store.close()
        """
        subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True)
        assert attributes(http, "t9", third_party=False) == {"v": str(n)}


@pytest.fixture
def uncached(settings: Settings, store: Store) -> Iterator[httpx.Client]:
    """A second server on the same database that keeps no replies."""
    plain = dataclasses.replace(settings, fetch_cache_mb=0)
    with (
        LiveServer(plain, store, workers=0) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        yield c


def test_a_kept_reply_is_the_reply_read_from_the_database(
    http: httpx.Client, uncached: httpx.Client
):
    """Byte for byte and header for header, but for the request id."""
    payload = {"id": {"thirdPartyId": "crm-ü1"}, "execute": {"pageLoad": {}}}
    deliver(http, payload)
    update(http, **{"mbox3rdPartyId": "crm-ü1", "profile_a": "<b>&\u2028"})
    path = "/rest/v1/profiles/thirdPartyId/crm-%C3%BC1?client=demo"
    replies = [http.get(path), http.get(path), uncached.get(path)]
    for reply in replies:
        assert reply.status_code == 200
        assert reply.content == replies[2].content
        assert same_headers(reply) == same_headers(replies[2])
    assert replies[0].json()["profileAttributes"]["a"]["value"] == "<b>&\u2028"


def same_headers(reply: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k not in ("x-request-id", "date")}


def test_a_fetch_with_a_broken_id_is_refused_as_ever(http: httpx.Client):
    """The path is checked when a reply is read, and only a found profile's reply is
    kept: a broken id is refused every time."""
    for _ in range(2):
        reply = http.get("/rest/v1/profiles/thirdPartyId/crm%ZZ?client=demo")
        assert reply.status_code == 400 and "percent-encoding" in reply.json()["message"]


# -- parsed query strings, client contexts -------------------------------------------------


def request_with(query: bytes) -> Request:
    return Request({"type": "http", "query_string": query, "headers": []})


def test_a_short_query_string_is_parsed_once():
    first = query_params(request_with(b"client=acme&x=%20y"))
    again = query_params(request_with(b"client=acme&x=%20y"))
    assert again is first and dict(first) == {"client": "acme", "x": " y"}
    other = query_params(request_with(b"client=other"))
    assert other["client"] == "other"
    long = b"client=acme&pad=" + b"x" * QUERY_KEPT_BYTES
    assert query_params(request_with(long)) is not query_params(request_with(long))


def test_a_client_s_context_is_made_once_per_client_read(
    http: httpx.Client, live_server: LiveServer, store: Store
):
    """The same client object gets the same context; a change of the client (here, of
    its limits) is a new client object, whose limits apply at once."""
    context = context_of(live_server)
    client = store.get_client("demo")
    assert client is not None
    assert context.for_client(client) is context.for_client(client)
    clients.change(store, "demo", limits={"updates_per_day": "2"})
    changed = store.get_client("demo")
    assert changed is not None
    assert context.for_client(changed).limits.updates_per_day == 2
    deliver(http, {"id": {"thirdPartyId": "crm-q"}, "execute": {"pageLoad": {}}})
    codes = [update(http, mbox3rdPartyId="crm-q", profile_a="1").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_replies_dropped_by_the_hundred_thousand_leave_the_newest_kept_and_counted():
    """Past its bytes, every new reply drops the oldest: after 100,000 replies with room
    for 100, the last 100 are kept, in full, and the bytes counted are theirs."""
    body = b"z" * 50
    each = len(body) + len(b"/p/000000") + OVERHEAD
    replies, changes = FetchReplies(100 * each), Changes()
    replies.refresh(None, changes)
    for n in range(100_000):
        replies.put(1, b"/p/%06d" % n, n, body, replies.generation)
    assert replies.size == (100, 100 * each)
    kept = [n for n in range(99_800, 100_000) if replies.get(1, b"/p/%06d" % n, 0) is not None]
    assert kept == list(range(99_900, 100_000))
