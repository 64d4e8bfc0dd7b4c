"""``FetchReplies``: the fetch replies of one HTTP process, kept while the database is unchanged.

A fetch on the event loop (SQLite) first asks the store whether anything was committed since
it last asked (``Store.changes_nowait``: SQLite's ``data_version``, which any commit of any
connection of any process changes). While nothing was, a reply read before is still the
database's, byte for byte, and is sent again without reading the profile or encoding it. The
first check after a commit anywhere forgets every kept reply.

A request needs a check made after it was sent: a write answered before that was committed
before it. The server stamps each request when it starts serving it (``ARRIVED``, by
``web/server.py``; a request pipelined behind another, once that one's response is
complete); a request stamped before the last check takes that check's answer, and any
other (or one without a stamp) checks again. Under load, the requests read in one turn of
the event loop mostly share one check.

The one thing that changes a reply without a commit is time: a profile last active before
the client's ``profile_expiry_days`` is gone. A kept reply carries its profile's
``modifiedAt``, and is sent only while that is not before the expiry moment of the request,
the rule the database's read applies.

Kept replies take at most ``fetch_cache_mb`` of memory (the first kept is forgotten first;
0 keeps none), per HTTP process.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from profilebase.errors import DatabaseUnavailable
from profilebase.server.storage.base import WouldWait

#: The scope key of the moment (``time.monotonic``) the server started serving a request:
#: set by the server's protocol (``web/server.py``), read by ``FetchReplies.refresh``.
ARRIVED = "profilebase.arrived"

#: Bytes a kept reply counts beyond its body and path: the bytes objects' headers, the
#: key's and the value's tuples, the int and the dict's slot (about 280 by tracemalloc).
OVERHEAD = 300


class FetchReplies:
    """Reply bodies by client id and the path as sent (the same path names the same profile
    while nothing is committed), valid while the store's ``changes_nowait`` keeps the value
    it had when they were read. Used on the event loop's thread only (the fetch's thread
    path neither reads nor keeps replies). Past its bytes, the reply kept first goes first;
    sending one again does not move it."""

    def __init__(self, most_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.most_bytes = most_bytes
        self.clock = clock
        self._changes: object = None
        #: When ``_changes`` was read (``clock``): the database had it then.
        self._checked_at = -math.inf
        #: (client id, path as sent) -> (the profile's modified_at in ms, the reply's body),
        #: oldest first. An OrderedDict: a dict whose first items are popped one by one
        #: leaves their slots behind for ``iter`` to skip, and keeping a reply cost 20 µs
        #: once a few hundred thousand had been dropped (fetches of 5.5M profiles).
        self._replies: OrderedDict[tuple[int, bytes], tuple[int, bytes]] = OrderedDict()
        self._bytes = 0
        #: The outcome of the check in flight (``refresh_async``), if any, and its task.
        self._asking: asyncio.Future[Exception | None] | None = None
        self._task: asyncio.Task[None] | None = None
        #: How many times a check's answer moved: a reply read in between is not kept.
        self.generation = 0

    def refresh(self, arrived: float | None, changes: Callable[[], object]) -> None:
        """Make what is kept the database's for a request that ``arrived`` then (``clock``;
        None: unknown): ask ``changes`` (the store's ``changes_nowait``) unless it was asked
        after that, and forget everything if it moved. A write answered before the request
        was sent was committed before it arrived, so a value read later has seen it."""
        if arrived is not None and arrived < self._checked_at:  # equal: the commit may
            return  # have come between on a coarse clock
        checked_at = self.clock()  # before asking: the answer is at least that recent
        now = changes()
        self._checked_at = checked_at
        self._answer(now)

    async def refresh_async(
        self, arrived: float | None, changes: Callable[[], Awaitable[object]]
    ) -> None:
        """``refresh`` for a store that asks its server (``changes_async``: PostgreSQL).
        Requests share checks: one that arrived before a check in flight was sent waits for
        its answer; any other waits for the check in flight, if any, then sends the next
        (at most one in flight). A check runs as a task of its own, so a request that gives
        up does not take it with it. If the check it waited for failed: that error when the
        database was unavailable, else ``WouldWait``."""
        if arrived is None:
            arrived = self.clock()  # unknown: a check sent from now on answers for it
        while arrived >= self._checked_at:
            asking = self._asking or self._ask(changes)
            failed = await asyncio.shield(asking)
            if failed is not None:
                if isinstance(failed, DatabaseUnavailable):
                    raise DatabaseUnavailable(detail=failed.detail) from failed
                raise WouldWait

    def _ask(self, changes: Callable[[], Awaitable[object]]) -> asyncio.Future[Exception | None]:
        """Send a check; the future of its outcome (None once answered, else its error)."""
        loop = asyncio.get_running_loop()
        checked_at = self.clock()  # before asking: the answer is at least that recent
        outcome: asyncio.Future[Exception | None] = loop.create_future()

        async def check() -> None:
            try:
                now = await changes()
            except Exception as exc:  # noqa: BLE001 - handed to those waiting
                self._answer(None)  # unknown: forget what is kept (a crash may lie between)
                outcome.set_result(exc)
            else:  # one check in flight at a time: the latest answer
                self._checked_at = checked_at
                self._answer(now)
                outcome.set_result(None)
            finally:
                self._asking = None
                if not outcome.done():  # cancelled: the loop is closing
                    outcome.set_result(WouldWait())

        self._asking = outcome
        self._task = loop.create_task(check())
        return outcome

    def _answer(self, now: object) -> None:
        """A check's answer: if it moved, forget everything (a new generation)."""
        if now != self._changes:
            self._replies.clear()
            self._bytes = 0
            self._changes = now
            self.generation += 1

    def get(self, client_id: int, path: bytes, expire_before_ms: int) -> bytes | None:
        """The body kept for ``path``, unless its profile has expired; call ``refresh``
        first."""
        kept = self._replies.get((client_id, path))
        if kept is None or kept[0] < expire_before_ms:
            return None
        return kept[1]

    def put(
        self, client_id: int, path: bytes, modified_ms: int, body: bytes, generation: int
    ) -> None:
        """Keep ``body``, read after a refresh that left ``generation``; not if a check
        answered a change since (read over the network, the reply may predate it)."""
        size = len(body) + len(path) + OVERHEAD
        if size > self.most_bytes or generation != self.generation:
            return
        replaced = self._replies.pop((client_id, path), None)
        if replaced is not None:
            self._bytes -= len(replaced[1]) + len(path) + OVERHEAD
        while self._replies and self._bytes + size > self.most_bytes:
            oldest, (_, dropped) = self._replies.popitem(last=False)
            self._bytes -= len(dropped) + len(oldest[1]) + OVERHEAD
        self._replies[(client_id, path)] = (modified_ms, body)
        self._bytes += size

    @property
    def size(self) -> tuple[int, int]:
        """Replies kept and the bytes they count."""
        return len(self._replies), self._bytes
