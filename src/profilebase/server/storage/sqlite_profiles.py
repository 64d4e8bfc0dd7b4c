"""The profile side of the SQLite backend: identity look-ups, steps of writes that apply at once.

The functions run inside a transaction the caller holds (``SQLiteStore._write``).
``postgres_profiles.py`` has the same functions in PostgreSQL's SQL; the methods
that call them (``storage/queries.py``) are shared.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence

from profilebase.errors import QuotaExceeded, RequestTooLarge
from profilebase.models import DAY_MS, Client, KeyKind, WriteKind
from profilebase.server.merge import byte_size, dump_attrs, merge_attrs
from profilebase.server.quota import MINUTE_MS, retry_after_ms, seconds, update_quota_message
from profilebase.server.storage.records import WriteRows

#: The stored attributes as JSON text, in a query over ``profiles p``.
ATTRS_TEXT = "p.attrs"

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
        "AND alias >= 'p:' AND alias < 'p;' ORDER BY linked_seq DESC LIMIT 1",
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


def ids_of(db: sqlite3.Connection, client_id: int, stored: list[str]) -> dict[str, list[str]]:
    """Each stored key, then its aliases in link order."""
    ids: dict[str, list[str]] = {key: [key] for key in stored}
    for alias, pkey in db.execute(
        "SELECT alias, pkey FROM identities WHERE client_id = ? "
        "AND pkey IN (SELECT value FROM json_each(?)) ORDER BY linked_seq",
        (client_id, json_list(stored)),
    ):
        ids[pkey].append(alias)
    return ids


def json_list(items: Sequence[object]) -> str:
    return json.dumps(items, ensure_ascii=False)
