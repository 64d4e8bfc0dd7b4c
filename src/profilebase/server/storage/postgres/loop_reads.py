"""Fetches on the event loop (PostgreSQL): psycopg's asyncio connections, no thread.

A fetch on PostgreSQL is one statement (``postgres_profile_document``). Made from a
worker thread, most of its cost was the trip there and back and the threads taking
turns at the GIL: one `serve` process answered some 1,700 fetches a second at a full
core. Awaited on the event loop over a pool of asyncio connections, the same statement
costs the process about half the CPU (docs/design.md, "PostgreSQL fetches on the event
loop").

This path answers, steps aside or reports an outage. An error of the driver (a
connection lost while idle or in use) raises ``WouldWait``: the caller makes the fetch
from a thread as before, which starts over on a connection lost while idle and reports
an outage the usual way. No connection within the store's timeout (``database_timeout``:
the server is down, refuses or never answers) is the outage itself:
``DatabaseUnavailable`` (503), as a thread would have said, rather than a second wait as
long. After either the path rests for ``REST_SECONDS``: fetches go to threads meanwhile,
so that an outage costs each request one wait of at most the timeout. As on the
threads' path, only the wait for a connection is bounded, not the statement.

The pool belongs to the event loop that opened it, until the app closes it
(``close_async``, in its lifespan); a store used from another loop meanwhile reads from
threads there, and a loop that closed its pool opens no other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from profilebase.errors import DatabaseUnavailable
from profilebase.server.storage import redact
from profilebase.server.storage.base import WouldWait

log = logging.getLogger("profilebase.server.storage")

#: Seconds the path is left alone after it failed: fetches go to threads meanwhile.
REST_SECONDS = 5.0


class LoopReads:
    """A pool of asyncio connections for reads of one statement each, made lazily on the
    event loop that first asks."""

    def __init__(self, url: str, size: int, timeout: float, options: Mapping[str, Any]) -> None:
        self.url, self.size, self.timeout, self.options = url, size, timeout, dict(options)
        self.pool: AsyncConnectionPool | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.opening: asyncio.Task[None] | None = None
        self.checking: asyncio.Task[None] | None = None
        #: The loop whose pool was closed: it opens none again (requests still in flight).
        self.closed_on: asyncio.AbstractEventLoop | None = None
        #: Until when (``time.monotonic``) the path rests after an error.
        self.resting_until = 0.0

    async def one_row(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of ``sql``, or None; ``WouldWait`` if it cannot be read here.

        Only the wait for a connection is bounded (``database_timeout``), as on the
        threads' path: a statement runs as long as it takes there too."""
        pool = self._pool()
        try:
            if self.opening is not None and not self.opening.done():
                await asyncio.shield(self.opening)
            async with pool.connection(timeout=self.timeout) as db:
                cursor = await db.execute(sql, params)
                return await cursor.fetchone()
        except PoolTimeout as exc:  # no connection within database_timeout: down, unreachable
            self._rest(exc)
            raise DatabaseUnavailable(
                detail=f"no connection to PostgreSQL at {redact(self.url)} within "
                f"{self.timeout:g} s (database_timeout) for the event loop's reads: {exc}; "
                "the server is down or unreachable"
            ) from None
        except (psycopg.Error, OSError) as exc:  # lost while idle or in use, refused, a bug
            self._rest(exc)
            # Every idle connection was likely lost with this one (a restart): replace them.
            self.checking = asyncio.get_running_loop().create_task(pool.check())
            self.checking.add_done_callback(_done)
            raise WouldWait from exc

    def _rest(self, error: BaseException) -> None:
        self.resting_until = time.monotonic() + REST_SECONDS
        reason = str(error).strip() or type(error).__name__
        log.info("fetches are read in threads for %.0f s: %s", REST_SECONDS, reason)

    def _pool(self) -> AsyncConnectionPool:
        """The pool of the running loop, opened on first use (or when the loop that opened
        it has ended); ``WouldWait`` while resting, on another loop, or once closed."""
        loop = asyncio.get_running_loop()
        if self.loop is None or self.loop.is_closed():
            if loop is self.closed_on:
                raise WouldWait
            self.loop = loop
            self.pool = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self.size,
                kwargs={"autocommit": True, **self.options},
                reconnect_timeout=self.timeout,
                name="profilebase-loop",
                open=False,
            )
            self.opening = loop.create_task(self.pool.open())
            self.opening.add_done_callback(_done)
        if loop is not self.loop or self.pool is None:
            raise WouldWait
        if time.monotonic() < self.resting_until:
            raise WouldWait
        return self.pool

    async def close(self) -> None:
        """Close the pool, if it was opened on the running loop; this loop opens no other."""
        loop = asyncio.get_running_loop()
        if self.pool is None or loop is not self.loop:
            return
        pool, self.pool, self.loop, self.opening = self.pool, None, None, None
        self.closed_on = loop
        await pool.close()


def _done(task: asyncio.Task[None]) -> None:
    """Log why the pool could not be opened or checked (a fetch then waits for its
    connection in vain and reports the outage), rather than leave asyncio to log a
    traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.info("the event loop's connections: %s", task.exception())
