"""The profile side of the SQLite backend: identity look-ups, writes that apply at once, exports.

The functions run inside a transaction the caller holds (``SQLiteStore._write``);
``SQLiteExport`` holds a read snapshot on a connection of its own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from profilebase.errors import QuotaExceeded, RequestTooLarge
from profilebase.models import DAY_MS, Client, KeyKind, Profile, WriteKind
from profilebase.storage.links import absorb_attrs
from profilebase.storage.merge import byte_size, dump_attrs, merge_attrs
from profilebase.storage.quota import retry_after_ms, seconds, update_quota_message
from profilebase.storage.records import WriteRows, build_profile, write_numbers

MINUTE_MS = 60_000
#: An export page stops once its profiles hold this much stored JSON (2000 KB profiles exist).
EXPORT_PAGE_CHARS = 8_000_000
#: Stored keys start with 'p:' or 't:' (';' follows ':'): the range of each export.
EXPORT_RANGES = {
    None: ("p:", "t;"),
    KeyKind.PC_ID: ("p:", "p;"),
    KeyKind.THIRD_PARTY_ID: ("t:", "t;"),
}

UPSERT_PROFILE = """
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (client_id, pkey) DO UPDATE SET
    attrs = CASE WHEN profiles.max_seq < excluded.max_seq
                 THEN json_patch(profiles.attrs, excluded.attrs)
                 ELSE pb_merge(profiles.attrs, excluded.attrs) END,
    created_seq = min(profiles.created_seq, excluded.created_seq),
    max_seq = max(profiles.max_seq, excluded.max_seq),
    modified_at = max(profiles.modified_at, excluded.modified_at)
"""


def resolve(db: sqlite3.Connection, client_id: int, key: str) -> str:
    """The key the profile ``key`` finds is stored under (itself unless an alias)."""
    found = db.execute(
        "SELECT pkey FROM identities WHERE client_id = ? AND alias = ?", (client_id, key)
    ).fetchone()
    return key if found is None else str(found[0])


def aliases_of(db: sqlite3.Connection, client_id: int, keys: str) -> dict[str, str]:
    """Alias -> stored key, for the keys of a JSON list that are aliases."""
    return dict(
        db.execute(
            "SELECT alias, pkey FROM identities WHERE client_id = ? "
            "AND alias IN (SELECT value FROM json_each(?))",
            (client_id, keys),
        ).fetchall()
    )


def live_key(db: sqlite3.Connection, client_id: int, key: str, expire_before_ms: int) -> str | None:
    """The stored key of the profile ``key`` finds, or None; an expired one is deleted."""
    stored = resolve(db, client_id, key)
    if expire_before_ms and expire_keys(db, client_id, json_list([stored]), expire_before_ms):
        return None
    found = db.execute(
        "SELECT 1 FROM profiles WHERE client_id = ? AND pkey = ?", (client_id, stored)
    ).fetchone()
    return stored if found else None


def expire_keys(db: sqlite3.Connection, client_id: int, keys: str, before_ms: int) -> set[str]:
    """Delete the profiles of a JSON key list last active before ``before_ms``."""
    expired = {
        pkey
        for (pkey,) in db.execute(
            "SELECT pkey FROM profiles WHERE client_id = ? AND modified_at < ? "
            "AND pkey IN (SELECT value FROM json_each(?))",
            (client_id, before_ms, keys),
        )
    }
    if expired:
        gone = json_list(sorted(expired))
        for table in ("profiles", "identities"):
            db.execute(
                f"DELETE FROM {table} WHERE client_id = ? "
                "AND pkey IN (SELECT value FROM json_each(?))",
                (client_id, gone),
            )
    return expired


def pc_id_of(db: sqlite3.Connection, client_id: int, key: str, stored: str) -> str | None:
    """The tntId to show for a profile: the one asked for, else the latest linked one."""
    for candidate in (key, stored):
        if candidate.startswith(KeyKind.PC_ID.prefix):
            return candidate[2:]
    found = db.execute(
        "SELECT alias FROM identities WHERE client_id = ? AND pkey = ? "
        "ORDER BY linked_seq DESC LIMIT 1",
        (client_id, stored),
    ).fetchone()
    return None if found is None else str(found[0])[2:]


def new_write(
    db: sqlite3.Connection, client_id: int, kind: WriteKind, ref: str | None, now_ms: int
) -> int:
    """Take the next write sequence number."""
    seq = db.execute(
        "INSERT INTO writes (client_id, kind, ref, at) VALUES (?, ?, ?, ?)",
        (client_id, str(kind), ref, now_ms),
    ).lastrowid
    assert seq is not None
    return int(seq)


def apply_values(
    db: sqlite3.Connection,
    client_id: int,
    stored: str,
    values: Mapping[str, str],
    seq: int,
    now_ms: int,
    max_profile_bytes: int,
) -> None:
    """Write ``values`` into an existing profile under ``seq``, within its size limit."""
    attrs = dump_attrs({name: [value, seq, now_ms] for name, value in values.items()})
    current, size = db.execute(
        "SELECT attrs, length(CAST(attrs AS BLOB)) FROM profiles WHERE client_id = ? AND pkey = ?",
        (client_id, stored),
    ).fetchone()
    if size + byte_size(attrs) > max_profile_bytes:
        exact = byte_size(merge_attrs(current, attrs))
        if exact > max_profile_bytes:
            raise RequestTooLarge(
                f"The profile would grow to {exact:,} bytes, over the limit of "
                f"{max_profile_bytes:,} bytes (max_profile_bytes); send fewer or "
                "shorter attributes."
            )
    db.execute(UPSERT_PROFILE, (client_id, stored, attrs, seq, seq, now_ms))


def absorb(
    db: sqlite3.Connection, client_id: int, target: str, absorbed: str, link_seq: int
) -> None:
    """Merge profile ``absorbed`` into ``target`` (target's values win) and delete it."""
    (t_attrs, t_created, t_max), (a_attrs, a_created, a_max) = (
        db.execute(
            "SELECT attrs, created_seq, max_seq FROM profiles WHERE client_id = ? AND pkey = ?",
            (client_id, key),
        ).fetchone()
        for key in (target, absorbed)
    )
    db.execute(
        "UPDATE profiles SET attrs = ?, created_seq = ?, max_seq = ? "
        "WHERE client_id = ? AND pkey = ?",
        (
            absorb_attrs(t_attrs, a_attrs, link_seq),
            min(t_created, a_created),
            max(t_max, a_max, link_seq),
            client_id,
            target,
        ),
    )
    db.execute("DELETE FROM profiles WHERE client_id = ? AND pkey = ?", (client_id, absorbed))
    db.execute(
        "UPDATE identities SET pkey = ? WHERE client_id = ? AND pkey = ?",
        (target, client_id, absorbed),
    )


def touch(db: sqlite3.Connection, client_id: int, stored: str, now_ms: int) -> None:
    """Mark a profile active (a page call counts as activity, like a visit in Target)."""
    db.execute(
        "UPDATE profiles SET modified_at = max(modified_at, ?) WHERE client_id = ? AND pkey = ?",
        (now_ms, client_id, stored),
    )


def take_update_quota(
    db: sqlite3.Connection, client: Client, now_ms: int, updates_per_day: int
) -> None:
    """Count one single update, or raise ``QuotaExceeded`` if the last 24 hours are full."""
    minute = now_ms // MINUTE_MS
    recent = db.execute(
        "SELECT minute, updates FROM update_counts WHERE client_id = ? AND minute >= ?",
        (client.id, (now_ms - DAY_MS) // MINUTE_MS),
    ).fetchall()
    if sum(updates for _, updates in recent) + 1 > updates_per_day:
        # A minute's updates leave the window a day after the minute ends.
        ends = [((m + 1) * MINUTE_MS, n) for m, n in recent]
        wait = retry_after_ms(ends, 1, updates_per_day, now_ms)
        raise QuotaExceeded(
            update_quota_message(client.code, updates_per_day, wait, now_ms),
            retry_after=seconds(wait),
        )
    db.execute(
        "INSERT INTO update_counts (client_id, minute, updates) VALUES (?, ?, 1) "
        "ON CONFLICT (client_id, minute) DO UPDATE SET updates = updates + 1",
        (client.id, minute),
    )


def has_queued_rows(db: sqlite3.Connection, client_id: int) -> bool:
    return (
        db.execute(
            "SELECT 1 FROM batch_units u JOIN batches b ON b.seq = u.batch_seq "
            "WHERE u.state <> 'done' AND b.client_id = ? LIMIT 1",
            (client_id,),
        ).fetchone()
        is not None
    )


def writes_of(db: sqlite3.Connection, numbers: set[int]) -> WriteRows:
    return {
        seq: (kind, ref)
        for seq, kind, ref in db.execute(
            "SELECT seq, kind, ref FROM writes WHERE seq IN (SELECT value FROM json_each(?))",
            (json_list(sorted(numbers)),),
        )
    }


class SQLiteExport:
    """A read snapshot of one client's profiles on a connection of its own."""

    def __init__(
        self, db: sqlite3.Connection, client_id: int, kind: KeyKind | None, expire_before_ms: int
    ) -> None:
        self.db = db
        self.client_id = client_id
        # The web layer may close the snapshot while a page is still being read.
        self.lock = threading.Lock()
        self.closed = False
        low, high = EXPORT_RANGES[kind]
        self.where = "p.client_id = ? AND p.pkey >= ? AND p.pkey < ? AND p.modified_at >= ?"
        self.params: tuple[Any, ...] = (client_id, low, high, expire_before_ms)
        # The snapshot starts with the first read and lasts until close().
        db.execute("BEGIN")
        self.code = str(
            db.execute("SELECT code FROM clients WHERE id = ?", (client_id,)).fetchone()[0]
        )

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
        rows = []
        stored = 0
        for row in self.db.execute(
            f"SELECT p.pkey, p.attrs, p.modified_at FROM profiles p WHERE {self.where} "
            "AND p.pkey > ? ORDER BY p.pkey LIMIT ?",
            (*self.params, after, size),
        ):
            rows.append(row)
            stored += len(row[1])
            if stored >= EXPORT_PAGE_CHARS:  # a page of large profiles ends early
                break
        documents = {pkey: json.loads(attrs) for pkey, attrs, _ in rows}
        ids: dict[str, list[str]] = {pkey: [pkey] for pkey in documents}
        for alias, pkey in self.db.execute(
            "SELECT alias, pkey FROM identities WHERE client_id = ? "
            "AND pkey IN (SELECT value FROM json_each(?)) ORDER BY linked_seq",
            (self.client_id, json_list(list(documents))),
        ):
            ids[pkey].append(alias)
        writes = writes_of(self.db, write_numbers(documents.values()))
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
                self.db.execute("COMMIT")
            except sqlite3.Error:
                pass
            self.db.close()


def json_list(items: Sequence[object]) -> str:
    return json.dumps(items, ensure_ascii=False)
