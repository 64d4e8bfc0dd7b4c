"""Profiles read and written at once: lookups, single updates, page calls, deletes, exports.

``ProfileQueries`` is a mixin of both backends' stores, over their named queries. A
write that applies at once locks its client's row first (its seq is then visible in
order, as a batch's is) and then the profiles it touches in key order, as applying a
unit does (``lock_client``, ``lock_profiles``: row locks on PostgreSQL, reads on SQLite,
where ``BEGIN IMMEDIATE`` already made the writer the only one). How a page call's ids
join profiles is planned in ``links.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from profilebase.errors import QuotaExceeded, RequestTooLarge
from profilebase.models import (
    DAY_MS,
    SEQ_SPAN,
    Client,
    KeyKind,
    Profile,
    WriteKind,
)
from profilebase.server.merge import byte_size, dump_attrs, merge_attrs
from profilebase.server.quota import MINUTE_MS, retry_after_ms, seconds, update_quota_message
from profilebase.server.storage.base import UpdateOutcome, Visit, WouldWait
from profilebase.server.storage.links import absorb_attrs, plan_link
from profilebase.server.storage.queries import Connection, SharedQueries
from profilebase.server.storage.records import (
    ProfileRecord,
    WriteRows,
    build_profile,
    write_numbers,
)


def window_with_one_more(
    used: int, oldest_minute: int | None, now_ms: int
) -> tuple[tuple[int, int], ...]:
    """The quota window with one more update at ``now_ms``, summed into one pair of the
    shape ``recent_updates`` gives (the end of its oldest minute in ms, its updates): all
    ``X-RateLimit-*`` needs (``quota.rate_limit_headers``), from the window's sum and the
    oldest minute that has updates (None if none has)."""
    minute = now_ms // MINUTE_MS
    oldest = minute if oldest_minute is None else min(int(oldest_minute), minute)
    return (((oldest + 1) * MINUTE_MS, used + 1),)


def quota_refusal(
    client: Client, minutes: Iterable[tuple[int, int]], updates_per_day: int, now_ms: int
) -> QuotaExceeded:
    """The refusal of a single update when the client's window, ``minutes`` as (minute,
    updates), is full; it says when the next one may come."""
    # A minute's updates leave the window a day after the minute ends.
    ends = [((m + 1) * MINUTE_MS, n) for m, n in minutes]
    wait = retry_after_ms(ends, 1, updates_per_day, now_ms)
    return QuotaExceeded(
        update_quota_message(client.code, updates_per_day, wait, now_ms),
        retry_after=seconds(wait),
    )


def shown_pc_id(key: str, stored: str) -> str | None:
    """The tntId a single update shows when the key it names or the stored key is one."""
    for candidate in (key, stored):
        if candidate.startswith(KeyKind.PC_ID.prefix):
            return candidate[2:]
    return None


def profile_too_large(size: int, max_profile_bytes: int) -> RequestTooLarge:
    """The refusal of values that would take a profile to ``size`` bytes, over its limit."""
    return RequestTooLarge(
        f"The profile would grow to {size:,} bytes, over the limit of "
        f"{max_profile_bytes:,} bytes (max_profile_bytes); send fewer or shorter attributes."
    )


class ProfileQueries(SharedQueries):
    """Profiles, on the connections of the store that inherits this."""

    def _live_key(
        self, db: Connection, client_id: int, key: str, expire_before_ms: int
    ) -> str | None:
        """The stored key of the profile ``key`` finds, locked, or None; an expired one
        is deleted."""
        stored = self._resolve(db, client_id, key)
        if expire_before_ms and self._expire_keys(db, client_id, [stored], expire_before_ms):
            return None
        found = db.execute(self.sql["lock_profiles"], (client_id, self._list([stored])))
        return stored if found.fetchall() else None

    def _lock_for_write(self, db: Connection, client_id: int, keys: Sequence[str]) -> None:
        """Before a write that applies at once: order it among its client's writes and lock
        the profiles ``keys`` find, in key order (as applying a unit does)."""
        db.execute(self.sql["lock_client"], (client_id,))
        stored = sorted({self._resolve(db, client_id, key) for key in keys})
        db.execute(self.sql["lock_profiles"], (client_id, self._list(stored))).fetchall()

    def _wait_for_creation(self, db: Connection, client_id: int, key: str) -> None:
        """Before a delete reads whether ``key`` has a profile: wait for a batch's part that
        is creating it and has not committed yet, where writers can run side by side
        (PostgreSQL). SQLite's one writer at a time has nothing to wait for."""

    def _pc_id_of(self, db: Connection, client_id: int, key: str, stored: str) -> str | None:
        """The tntId to show for a profile: the one asked for, else the latest linked one."""
        shown = shown_pc_id(key, stored)
        if shown is not None:
            return shown
        found = db.execute(self.sql["latest_tnt_alias"], (client_id, stored)).fetchone()
        return None if found is None else str(found[0])[2:]

    def _ids_of(self, db: Connection, client_id: int, stored: list[str]) -> dict[str, list[str]]:
        """Each stored key, then its aliases in link order."""
        ids: dict[str, list[str]] = {key: [key] for key in stored}
        for alias, pkey in db.execute(self.sql["ids_of_profiles"], (client_id, self._list(stored))):
            ids[pkey].append(alias)
        return ids

    def _writes_of(self, db: Connection, numbers: set[int]) -> WriteRows:
        found = db.execute(self.sql["writes_of"], (self._list(sorted(numbers)),))
        return {int(seq): (kind, ref) for seq, kind, ref in found}

    # -- profiles: reads -----------------------------------------------------------------

    def get_profile(self, client_id: int, key: str, expire_before_ms: int = 0) -> Profile | None:
        if not self._can_store(key):
            return None
        # One snapshot: the profile, its ids and its provenance.
        with self._snapshot() as db:
            return self._read_profile(db, client_id, key, expire_before_ms)

    def get_profile_nowait(
        self, client_id: int, key: str, expire_before_ms: int = 0
    ) -> ProfileRecord | None:
        raise WouldWait  # a backend whose reads may be made on the event loop says so

    async def get_profile_async(
        self, client_id: int, key: str, expire_before_ms: int = 0
    ) -> ProfileRecord | None:
        raise WouldWait  # a backend with a driver for the event loop says so

    async def close_async(self) -> None:
        return None

    def changes_nowait(self) -> object:
        raise WouldWait  # a backend that can tell at once says so

    async def changes_async(self) -> object:
        raise WouldWait  # a backend that can tell over the event loop says so

    def _read_profile(
        self, db: Connection, client_id: int, key: str, expire_before_ms: int
    ) -> Profile | None:
        """The profile ``key`` finds, with its ids and provenance, as ``db``'s transaction
        sees it."""
        stored = self._resolve(db, client_id, key)
        row = db.execute(
            self.sql["profile_with_code"], (client_id, stored, expire_before_ms)
        ).fetchone()
        if row is None:
            return None
        code, attrs_json, modified = row
        attrs = json.loads(attrs_json)
        ids = self._ids_of(db, client_id, [stored])[stored]
        writes = self._writes_of(db, write_numbers([attrs]))
        return build_profile(code, key, attrs, modified, ids, writes)

    def open_export(
        self, client_id: int, kind: KeyKind | None = None, expire_before_ms: int = 0
    ) -> SnapshotExport:
        return SnapshotExport(self, self._export_connection(), client_id, kind, expire_before_ms)

    # -- profiles: writes that apply at once ---------------------------------------------

    def _find_to_update(
        self, db: Connection, client_id: int, key: str, expire_before_ms: int
    ) -> tuple[str, str | None] | None:
        """The stored key of the live profile ``key`` finds and the tntId to show for it
        (``_live_key``, ``_pc_id_of``), or None."""
        stored = self._live_key(db, client_id, key, expire_before_ms)
        if stored is None:
            return None
        return stored, self._pc_id_of(db, client_id, key, stored)

    def _update_seq(self, db: Connection, client_id: int, now_ms: int) -> int:
        """The seq of a single update's values: a write of its own."""
        return self._new_write(db, client_id, WriteKind.UPDATE, None, now_ms) * SEQ_SPAN + 1

    def _new_write(
        self, db: Connection, client_id: int, kind: WriteKind, ref: str | None, now_ms: int
    ) -> int:
        """Take the next write sequence number (the client's row is locked)."""
        found = db.execute(self.sql["new_write"], (client_id, str(kind), ref, now_ms)).fetchone()
        return int(found[0])

    def _apply_values(
        self,
        db: Connection,
        client_id: int,
        stored: str,
        values: Mapping[str, str],
        seq: int,
        now_ms: int,
        max_profile_bytes: int,
    ) -> None:
        """Write ``values`` into an existing, locked profile under ``seq``, within its size
        limit."""
        attrs = dump_attrs({name: [value, seq, now_ms] for name, value in values.items()})
        params = {
            "client_id": client_id,
            "pkey": stored,
            "attrs": attrs,
            "seq": seq,
            "now_ms": now_ms,
        }
        self._merge_values(db, params, max_profile_bytes)

    def _merge_values(self, db: Connection, params: dict[str, Any], max_profile_bytes: int) -> None:
        """``merge_values``, once sure the profile stays within its limit: the stored size
        plus the new values' bounds it; only a profile that may outgrow it is merged in
        Python first, to know."""
        current, size = db.execute(
            self.sql["profile_attrs_and_size"], (params["client_id"], params["pkey"])
        ).fetchone()
        if int(size) + byte_size(params["attrs"]) > max_profile_bytes:
            exact = byte_size(merge_attrs(current, params["attrs"]))
            if exact > max_profile_bytes:
                raise profile_too_large(exact, max_profile_bytes)
        db.execute(self.sql["merge_values"], params)

    def _take_update_quota(
        self, db: Connection, client: Client, now_ms: int, updates_per_day: int
    ) -> tuple[tuple[int, int], ...]:
        """Count one single update, or raise ``QuotaExceeded`` if the last 24 hours are full.
        Returns the window with this update, summed (``window_with_one_more``).

        The window is read as its sum and its oldest minute, in the database: a client
        that updates every minute has 1,440 rows in it, which read into Python cost a
        single update some 0.4 ms on SQLite and cut single updates per second sixfold."""
        day_start = (now_ms - DAY_MS) // MINUTE_MS
        used, oldest = db.execute(self.sql["update_window"], (client.id, day_start)).fetchone()
        if int(used) + 1 > updates_per_day:
            recent = db.execute(self.sql["update_counts_since"], (client.id, day_start))
            raise quota_refusal(client, recent.fetchall(), updates_per_day, now_ms)
        db.execute(self.sql["count_update"], (client.id, now_ms // MINUTE_MS))
        return window_with_one_more(int(used), oldest, now_ms)

    def recent_updates(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        found = self._all(self.sql["recent_updates"], (client_id, since_ms // MINUTE_MS))
        return [((int(minute) + 1) * MINUTE_MS, int(updates)) for minute, updates in found]

    def _touch(self, db: Connection, client_id: int, stored: str, now_ms: int) -> None:
        """Mark a profile active (a page call counts as activity, like a visit in Target)."""
        db.execute(self.sql["touch_profile"], (now_ms, client_id, stored))

    def update_profile(
        self,
        client: Client,
        key: str,
        values: Mapping[str, str],
        now_ms: int,
        updates_per_day: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> UpdateOutcome | None:
        if not self._can_store(key):
            return None
        self._refuse_unstorable(*values, *values.values())

        def write(db: Connection) -> UpdateOutcome | None:
            self._lock_for_write(db, client.id, [key])
            found = self._find_to_update(db, client.id, key, expire_before_ms)
            if found is None:
                return None
            stored, pc_id = found
            if not values:
                return UpdateOutcome(pc_id, None)
            recent = self._take_update_quota(db, client, now_ms, updates_per_day)
            seq = self._update_seq(db, client.id, now_ms)
            self._apply_values(db, client.id, stored, values, seq, now_ms, max_profile_bytes)
            return UpdateOutcome(pc_id, seq, recent)

        return self._write_at_once(write)

    def visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> str:
        self._refuse_unstorable(
            visit.tnt_id, visit.third_party_id or "", *visit.values, *visit.values.values()
        )
        sql = self.sql
        tnt_key = KeyKind.PC_ID.key(visit.tnt_id)
        third_key = None
        if visit.third_party_id is not None:
            third_key = KeyKind.THIRD_PARTY_ID.key(visit.third_party_id)

        def write(db: Connection) -> str:
            keys = [tnt_key, *([third_key] if third_key else []), *visit.aliases]
            self._lock_for_write(db, client_id, keys)
            tnt_profile = self._live_key(db, client_id, tnt_key, expire_before_ms)
            third_exists = third_key is not None and (
                self._live_key(db, client_id, third_key, expire_before_ms) == third_key
            )
            known = None
            if tnt_profile is None and third_key is None:
                found = (self._live_key(db, client_id, a, expire_before_ms) for a in visit.aliases)
                known = next((key for key in found if key is not None), None)
            plan = plan_link(tnt_key, tnt_profile, third_key, third_exists, known)
            target = plan.target
            # The call's ECID and customerIds that do not find its profile yet.
            moved = [a for a in visit.aliases if self._resolve(db, client_id, a) != target]
            if not plan.changes and not moved and not visit.values:
                self._touch(db, client_id, target, now_ms)
                return target
            base = self._new_write(db, client_id, WriteKind.DELIVERY, visit.request_id, now_ms)
            link_seq = base * SEQ_SPAN + 1
            if plan.create:
                db.execute(
                    sql["insert_empty_profile"], (client_id, target, link_seq, link_seq, now_ms)
                )
            if plan.rename:
                db.execute(sql["rename_profile"], (target, client_id, plan.rename))
                db.execute(sql["move_identities"], (target, client_id, plan.rename))
            if plan.absorb:
                self._absorb(db, client_id, target, plan.absorb, link_seq)
            # The renamed or absorbed key stays an id of the profile (it differs from the
            # alias when T was itself an alias of an anonymous profile, through an ECID).
            gone = plan.rename or plan.absorb
            aliases = [plan.alias] if plan.alias else []
            aliases += [gone] if gone and gone != plan.alias else []
            for alias in [*aliases, *moved]:
                db.execute(sql["link_alias"], (client_id, alias, target, link_seq))
            if visit.values:
                self._apply_values(
                    db, client_id, target, visit.values, link_seq + 1, now_ms, max_profile_bytes
                )
            else:
                self._touch(db, client_id, target, now_ms)
            return target

        return self._write_at_once(write)

    def _absorb(
        self, db: Connection, client_id: int, target: str, absorbed: str, link_seq: int
    ) -> None:
        """Merge profile ``absorbed`` into ``target`` (target's values win) and delete it."""
        (t_attrs, t_created, t_max), (a_attrs, a_created, a_max) = (
            db.execute(self.sql["profile_to_absorb"], (client_id, key)).fetchone()
            for key in (target, absorbed)
        )
        db.execute(
            self.sql["replace_profile"],
            (
                absorb_attrs(t_attrs, a_attrs, link_seq),
                min(t_created, a_created),
                max(t_max, a_max, link_seq),
                client_id,
                target,
            ),
        )
        db.execute(self.sql["delete_profile"], (client_id, absorbed))
        db.execute(self.sql["move_identities"], (target, client_id, absorbed))

    def delete_profile(
        self, client_id: int, key: str, now_ms: int, expire_before_ms: int = 0
    ) -> bool:
        if not self._can_store(key):
            return False
        sql = self.sql

        def write(db: Connection) -> bool:
            self._lock_for_write(db, client_id, [key])
            self._wait_for_creation(db, client_id, key)
            stored = self._live_key(db, client_id, key, expire_before_ms)
            keys = {key}
            created = None
            if stored is not None:
                created = db.execute(sql["profile_created_seq"], (client_id, stored)).fetchone()[0]
                keys.add(stored)
                found = db.execute(sql["aliases_of_profile"], (client_id, stored)).fetchall()
                keys.update(alias for (alias,) in found)
                db.execute(sql["delete_profile"], (client_id, stored))
                db.execute(sql["forget_identities"], (client_id, stored))
            # Rows of batches still queued are older than this delete; without queued
            # batches no row can be, and no tombstone is needed.
            if db.execute(sql["client_has_queued_units"], (client_id,)).fetchone() is not None:
                deleted_seq = self._new_write(db, client_id, WriteKind.DELETE, None, now_ms)
                db.cursor().executemany(
                    sql["insert_tombstone"],
                    [(client_id, k, deleted_seq * SEQ_SPAN, now_ms, created) for k in sorted(keys)],
                )
            return stored is not None

        return self._write_at_once(write)

    def expire_profiles(self, client_id: int, before_ms: int) -> int:
        with self._write() as db:
            count = db.execute(self.sql["expire_client_profiles"], (client_id, before_ms)).rowcount
            if count:
                db.execute(self.sql["forget_orphan_identities"], (client_id,))
        return int(count)


#: An export page stops once its profiles hold this much stored JSON (2000 KB profiles exist).
EXPORT_PAGE_CHARS = 8_000_000
#: Stored keys start with 'p:' or 't:' (';' follows ':'): the range of each export.
EXPORT_RANGES = {
    None: ("p:", "t;"),
    KeyKind.PC_ID: ("p:", "p;"),
    KeyKind.THIRD_PARTY_ID: ("t:", "t;"),
}


class SnapshotExport:
    """A read snapshot of one client's profiles on a connection of its own, page by page.

    Keys are compared byte by byte on both backends, so pages come in the same order.
    """

    def __init__(
        self,
        store: ProfileQueries,
        db: Connection,
        client_id: int,
        kind: KeyKind | None,
        expire_before_ms: int,
    ) -> None:
        self.store, self.db, self.client_id = store, db, client_id
        # The web layer may close the snapshot while a page is still being read.
        self.lock = threading.Lock()
        self.closed = False
        low, high = EXPORT_RANGES[kind]
        self.params: tuple[Any, ...] = (client_id, low, high, expire_before_ms)
        # The snapshot starts with the first read and lasts until close().
        db.execute(store.sql["begin_snapshot"])
        found = db.execute(store.sql["client_code"], (client_id,))
        self.code = str(found.fetchone()[0])

    def pages(self, size: int) -> Iterator[list[Profile]]:
        after = ""
        while True:
            with self.lock:
                page = self._page(after, size)
            if not page:
                return
            after = page[-1].ids[0]
            yield page

    def _page(self, after: str, size: int) -> list[Profile]:
        if self.closed:
            return []
        store = self.store
        rows = []
        stored = 0
        for row in self.db.execute(store.sql["export_page"], (*self.params, after, size)):
            rows.append(row)
            stored += len(row[1])
            if stored >= EXPORT_PAGE_CHARS:  # a page of large profiles ends early
                break
        documents = {pkey: json.loads(attrs) for pkey, attrs, _ in rows}
        ids = store._ids_of(self.db, self.client_id, list(documents))
        writes = store._writes_of(self.db, write_numbers(documents.values()))
        return [
            build_profile(self.code, pkey, documents[pkey], modified, ids[pkey], writes)
            for pkey, _, modified in rows
        ]

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.db.execute(self.store.sql["end_snapshot"])
            except Exception:  # the connection broke: closing it ends the snapshot anyway
                pass
            self.db.close()
