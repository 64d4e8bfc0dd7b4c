"""The profile side of the PostgreSQL backend: identities, writes that apply at once, exports.

The same steps as ``sqlite_profiles.py`` in PostgreSQL's SQL; the rules they carry
out (``links.py``, ``merge.py``, ``records.py``, ``quota.py``) are shared. Every
function runs inside a transaction the caller holds. Writes that apply at once lock
their client's row first (their seq is then visible in order, as a batch's is) and
then the profiles they touch in key order, as applying a unit does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from profilebase.errors import BadRequest, QuotaExceeded, RequestTooLarge
from profilebase.models import DAY_MS, Client, KeyKind, WriteKind
from profilebase.server.merge import byte_size, dump_attrs, merge_attrs
from profilebase.server.quota import MINUTE_MS, retry_after_ms, seconds, update_quota_message
from profilebase.server.storage.records import WriteRows

Connection = psycopg.Connection[Any]

#: The stored attributes as JSON text, in a query over ``profiles p``.
ATTRS_TEXT = "p.attrs::text"

#: PostgreSQL's text and jsonb cannot hold U+0000; SQLite can. Rows, ids and values
#: carrying it are refused here with this reason rather than stored differently.
NUL_REASON = (
    "PostgreSQL cannot store the character U+0000 (NUL): remove it from the id, the "
    "attribute names and the values"
)


def has_nul(*texts: str) -> bool:
    return any("\x00" in text for text in texts)


def row_has_nul(identifier: str, attrs: str) -> bool:
    """True if a decoded row's id, names or values hold U+0000 (JSON spells it \\u0000)."""
    if "\x00" in identifier:
        return True
    if "u0000" not in attrs:
        return False
    return any(has_nul(name, entry[0]) for name, entry in json.loads(attrs).items())


def refuse_nul(*texts: str) -> None:
    if has_nul(*texts):
        raise BadRequest(NUL_REASON + ".")


def lock_client(db: Connection, client_id: int) -> None:
    """Order this write among the client's writes: its seq becomes visible in order."""
    db.execute("SELECT 1 FROM clients WHERE id = %s FOR UPDATE", (client_id,))


def resolve(db: Connection, client_id: int, key: str) -> str:
    """The key the profile ``key`` finds is stored under (itself unless an alias)."""
    found = db.execute(
        "SELECT pkey FROM identities WHERE client_id = %s AND alias = %s", (client_id, key)
    ).fetchone()
    return key if found is None else str(found[0])


def aliases_of(db: Connection, client_id: int, keys: list[str]) -> dict[str, str]:
    """Alias -> stored key, for those of ``keys`` that are aliases."""
    return dict(
        db.execute(
            "SELECT alias, pkey FROM identities WHERE client_id = %s AND alias = ANY(%b)",
            (client_id, keys),
        ).fetchall()
    )


def lock_profiles(db: Connection, client_id: int, keys: Iterable[str]) -> set[str]:
    """Lock the profiles of ``keys`` that exist, in key order; return those keys."""
    return {
        str(pkey)
        for (pkey,) in db.execute(
            "SELECT pkey FROM profiles WHERE client_id = %s AND pkey = ANY(%b) "
            "ORDER BY pkey FOR UPDATE",
            (client_id, sorted(set(keys))),
        )
    }


def expire_keys(db: Connection, client_id: int, keys: list[str], before_ms: int) -> set[str]:
    """Delete the profiles of ``keys`` last active before ``before_ms``; return their keys."""
    expired = {
        str(pkey)
        for (pkey,) in db.execute(
            "DELETE FROM profiles WHERE client_id = %s AND modified_at < %s AND pkey = ANY(%b) "
            "RETURNING pkey",
            (client_id, before_ms, keys),
        )
    }
    if expired:
        db.execute(
            "DELETE FROM identities WHERE client_id = %s AND pkey = ANY(%b)",
            (client_id, sorted(expired)),
        )
    return expired


def live_key(db: Connection, client_id: int, key: str, expire_before_ms: int) -> str | None:
    """The stored key of the profile ``key`` finds, locked, or None; an expired one is deleted."""
    stored = resolve(db, client_id, key)
    if expire_before_ms and expire_keys(db, client_id, [stored], expire_before_ms):
        return None
    return stored if lock_profiles(db, client_id, [stored]) else None


def pc_id_of(db: Connection, client_id: int, key: str, stored: str) -> str | None:
    """The tntId to show for a profile: the one asked for, else the latest linked one."""
    for candidate in (key, stored):
        if candidate.startswith(KeyKind.PC_ID.prefix):
            return candidate[2:]
    found = db.execute(
        "SELECT alias FROM identities WHERE client_id = %s AND pkey = %s "
        "AND alias >= 'p:' AND alias < 'p;' ORDER BY linked_seq DESC LIMIT 1",
        (client_id, stored),
    ).fetchone()
    return None if found is None else str(found[0])[2:]


def new_write(db: Connection, client_id: int, kind: WriteKind, ref: str | None, now_ms: int) -> int:
    """Take the next write sequence number (the client's row must be locked)."""
    found = db.execute(
        "INSERT INTO writes (client_id, kind, ref, at) VALUES (%s, %s, %s, %s) RETURNING seq",
        (client_id, str(kind), ref, now_ms),
    ).fetchone()
    assert found is not None
    return int(found[0])


def apply_values(
    db: Connection,
    client_id: int,
    stored: str,
    values: Mapping[str, str],
    seq: int,
    now_ms: int,
    max_profile_bytes: int,
) -> None:
    """Write ``values`` into an existing, locked profile under ``seq``, within its size limit."""
    attrs = dump_attrs({name: [value, seq, now_ms] for name, value in values.items()})
    found = db.execute(
        "SELECT attrs::text, max_seq FROM profiles WHERE client_id = %s AND pkey = %s",
        (client_id, stored),
    ).fetchone()
    assert found is not None
    current, max_seq = found
    if byte_size(current) + byte_size(attrs) > max_profile_bytes:  # jsonb text is larger
        exact = byte_size(merge_attrs(current, attrs))
        if exact > max_profile_bytes:
            raise RequestTooLarge(
                f"The profile would grow to {exact:,} bytes, over the limit of "
                f"{max_profile_bytes:,} bytes (max_profile_bytes); send fewer or "
                "shorter attributes."
            )
    db.execute(
        "UPDATE profiles SET attrs = CASE WHEN max_seq < %(seq)s THEN attrs || %(attrs)s::jsonb "
        "ELSE pb_merge(attrs, %(attrs)s::jsonb) END, max_seq = greatest(max_seq, %(seq)s), "
        "modified_at = greatest(modified_at, %(now)s) WHERE client_id = %(client)s "
        "AND pkey = %(key)s",
        {"seq": seq, "attrs": attrs, "now": now_ms, "client": client_id, "key": stored},
    )


def touch(db: Connection, client_id: int, stored: str, now_ms: int) -> None:
    """Mark a profile active (a page call counts as activity, like a visit in Target)."""
    db.execute(
        "UPDATE profiles SET modified_at = greatest(modified_at, %s) "
        "WHERE client_id = %s AND pkey = %s",
        (now_ms, client_id, stored),
    )


def take_update_quota(db: Connection, client: Client, now_ms: int, updates_per_day: int) -> None:
    """Count one single update, or raise ``QuotaExceeded`` if the last 24 hours are full."""
    recent = db.execute(
        "SELECT minute, updates FROM update_counts WHERE client_id = %s AND minute >= %s",
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
        "INSERT INTO update_counts (client_id, minute, updates) VALUES (%s, %s, 1) "
        "ON CONFLICT (client_id, minute) DO UPDATE SET updates = update_counts.updates + 1",
        (client.id, now_ms // MINUTE_MS),
    )


def has_queued_rows(db: Connection, client_id: int) -> bool:
    return (
        db.execute(
            "SELECT 1 FROM batch_units u JOIN batches b ON b.seq = u.batch_seq "
            "WHERE u.state <> 'done' AND b.client_id = %s LIMIT 1",
            (client_id,),
        ).fetchone()
        is not None
    )


def writes_of(db: Connection, numbers: set[int]) -> WriteRows:
    return {
        int(seq): (kind, ref)
        for seq, kind, ref in db.execute(
            "SELECT seq, kind, ref FROM writes WHERE seq = ANY(%b)", (sorted(numbers),)
        )
    }


def ids_of(db: Connection, client_id: int, stored: list[str]) -> dict[str, list[str]]:
    """Each stored key, then its aliases in link order."""
    ids: dict[str, list[str]] = {key: [key] for key in stored}
    for alias, pkey in db.execute(
        "SELECT alias, pkey FROM identities WHERE client_id = %s AND pkey = ANY(%b) "
        "ORDER BY linked_seq",
        (client_id, stored),
    ):
        ids[pkey].append(alias)
    return ids
