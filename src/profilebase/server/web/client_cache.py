"""Clients kept in memory for a moment, so that most requests find theirs without the database.

Every API request names a client; reading it is a SELECT and a hop to a worker thread, more
than the rest of a fetch costs. A ``ClientCache`` keeps what the database said about a code
or an organization id (the client, or that there is none) for ``client_cache_seconds``:

- a change made in another process (``profilebase clients`` writes the database directly)
  applies within that bound, 1 s by default; 0 reads the database on every request;
- a change made in this process (``server/clients.py``: create, change, new secret) applies
  at once: it moves ``clients.generation()``, and a cache that sees a new generation forgets
  everything it held.

Tokens are not cached: a revoked token is refused at once, whatever the bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from profilebase.models import Client
from profilebase.server import clients
from profilebase.server.storage.base import Store

#: Entries a cache holds; past it, it starts again empty (codes that name no client are
#: cached too, and a caller may send any number of them).
MAX_ENTRIES = 4096
#: Longest code or organization id cached (a code has at most 64 characters): a longer one
#: a caller sends is looked up each time, so that the cache stays within a few megabytes.
MAX_KEY_CHARS = 256


class NotCached(Exception):
    """The cache cannot answer without the database."""


class ClientCache:
    """What the database said about client codes and organization ids, for ``seconds``."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._entries: dict[tuple[str, str], tuple[float, Client | None]] = {}
        self._generation = clients.generation()
        self._cached = CachedClients(self, None)

    def cached(self) -> CachedClients:
        """Lookups answered from memory only: ``NotCached`` when the database is needed."""
        return self._cached

    def reading(self, store: Store) -> CachedClients:
        """Lookups answered from memory, else from ``store`` (blocking: run in a thread)."""
        return CachedClients(self, store)

    def find(self, kind: str, key: str, read: Callable[[], Client | None] | None) -> Client | None:
        """The client cached under ``(kind, key)`` while fresh, else ``read()``'s, kept."""
        generation = clients.generation()
        if generation != self._generation:
            self._entries.clear()
            self._generation = generation
        if len(key) > MAX_KEY_CHARS:
            if read is None:
                raise NotCached
            return read()
        now = self.clock()
        entry = self._entries.get((kind, key))
        if entry is not None and entry[0] > now:
            return entry[1]
        if read is None:
            raise NotCached
        found = read()
        if self.seconds > 0 and clients.generation() == generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[(kind, key)] = (now + self.seconds, found)
        return found


class CachedClients:
    """The two client lookups of the store (by code, by organization id), through a cache."""

    def __init__(self, cache: ClientCache, store: Store | None) -> None:
        self.cache = cache
        self.store = store

    def get_client(self, code: str) -> Client | None:
        store = self.store
        read = None if store is None else lambda: store.get_client(code)
        return self.cache.find("code", code, read)

    def find_client_by_org(self, org_id: str) -> Client | None:
        store = self.store
        read = None if store is None else lambda: store.find_client_by_org(org_id)
        return self.cache.find("org", org_id, read)
