"""Applying a unit of a profile import: whole profiles with their ids and modified times.

An import is a batch of its own (``batches.version`` 3, ``profile_import.py``): it is
accepted like a batch, takes one write seq, and its rows carry ``seq + line`` like a
batch's rows, so the ordering rule is the batch rule. A worker applies each unit in
one transaction, which ``apply_import_unit`` here carries out:

1. The unit must still be leased to this worker (a cancelled unit is not).
2. Rows keyed by a tntId linked to another profile apply to that profile; expired
   profiles the unit touches are deleted first.
3. A row older than a delete of its profile is skipped (applied, then deleted); a
   tntId deleted after the import was accepted is not linked again.
4. Rows for one profile are merged in line order; a row that would push the profile
   past ``max_profile_bytes`` fails. Each profile is upserted, attribute by attribute
   by seq (the profile keeps the later of its own and the imported modified time).
5. Each tntId of a row is linked to its profile unless linked later elsewhere; an
   anonymous profile stored under that tntId is merged into it first (as a page call
   joining the two would).
6. The unit's counts and failures are recorded, as for a batch unit.

The SQL that differs between backends sits in ``SQLiteImports`` and
``PostgresImports``; every statement runs with the profiles in key order, so on
PostgreSQL imports and batch units take their locks in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from profilebase.models import Counts, FailedRow
from profilebase.server.storage.base import UnitClaim
from profilebase.server.storage.merge import MAX_BYTES_PER_CHAR, byte_size, merge_attrs
from profilebase.server.storage.queries import Connection, SharedQueries


class ImportRow(NamedTuple):
    """One profile of an import: its stored key, tntIds and attributes with their times."""

    line: int
    #: The stored key: 't:' + thirdPartyId, or 'p:' + tntId for an anonymous profile.
    key: str
    #: 'p:' + each tntId linked to the profile (none for an anonymous one).
    aliases: tuple[str, ...]
    seq: int
    #: ``{name: [value, seq, modified_ms]}`` as JSON.
    attrs: str
    #: The profile's modified time (its last activity, for expiry).
    modified_ms: int


@dataclass
class Stored:
    """A profile as the import finds it."""

    attrs: str
    created_seq: int
    max_seq: int
    size: int


@dataclass
class Change:
    """What the unit writes to one profile: its rows merged."""

    key: str
    attrs: str
    min_seq: int
    max_seq: int
    modified_ms: int


class ImportQueries(SharedQueries):
    """``apply_import_unit`` on the connections of the store that inherits this."""

    #: Test of ``pkey`` against a list of keys bound as one parameter (``keys_param``).
    IN_KEYS = ""
    #: Appended to the query that reads the unit's profiles (PostgreSQL locks them).
    LOCK_PROFILES = ""
    #: Appended to the lease check (PostgreSQL locks the unit's row).
    LOCK_UNIT = ""
    #: The stored attributes as text, and their size in bytes.
    ATTRS = ""
    SIZE = ""
    #: Upsert of (client_id, pkey, attrs, min seq, max seq, modified_at) merging by seq.
    UPSERT = ""
    #: How a link meets an existing one: the later link wins.
    LINK_CONFLICT = (
        " ON CONFLICT (client_id, alias) DO UPDATE SET pkey = excluded.pkey, "
        "linked_seq = excluded.linked_seq WHERE identities.linked_seq < excluded.linked_seq"
    )

    def keys_param(self, keys: Sequence[str]) -> Any:
        raise NotImplementedError

    def import_refusals(
        self, rows: Sequence[ImportRow], failures: Sequence[FailedRow]
    ) -> tuple[list[ImportRow], list[FailedRow]]:
        """Rows the backend cannot store at all, moved to the failures."""
        return list(rows), list(failures)

    def apply_import_unit(
        self,
        claim: UnitClaim,
        rows: Sequence[ImportRow],
        failures: Sequence[FailedRow],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> Counts | None:
        """Apply a decoded import unit and mark it done, in one transaction; None (writing
        nothing) if the unit is no longer this worker's (lost lease, cancelled)."""
        good, failed = self.import_refusals(rows, failures)
        with self._write() as db:
            ours = db.execute(
                self._sql(
                    "SELECT 1 FROM batch_units WHERE batch_seq = ? AND unit_no = ? "
                    "AND state = 'running' AND lease_owner = ?" + self.LOCK_UNIT
                ),
                (claim.batch_seq, claim.unit_no, claim.owner),
            ).fetchone()
            if ours is None:
                return None
            applied, too_large = self._apply_profiles(
                db, claim.client_id, good, now_ms, max_profile_bytes, expire_before_ms
            )
            consumed = len(good) + len(failed)
            return self._finish_unit(
                db, claim, consumed, Counts(successful=applied), [*failed, *too_large], now_ms
            )

    def _apply_profiles(
        self,
        db: Connection,
        client_id: int,
        rows: Sequence[ImportRow],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int,
    ) -> tuple[int, list[FailedRow]]:
        """Steps 2 to 5; returns the rows applied and the rows that failed."""
        query = self._query(db)
        keys = sorted({row.key for row in rows} | {a for row in rows for a in row.aliases})
        linked = {}
        if query("SELECT 1 FROM identities WHERE client_id = ? LIMIT 1", (client_id,)):
            linked = dict(
                query(
                    "SELECT alias, pkey FROM identities WHERE client_id = ? "
                    f"AND alias {self.IN_KEYS}",
                    (client_id, self.keys_param(keys)),
                )
            )
        deletes: dict[str, int] = {}
        if query("SELECT 1 FROM tombstones WHERE client_id = ? LIMIT 1", (client_id,)):
            for pkey, deleted_seq in query(
                f"SELECT pkey, max(deleted_seq) FROM tombstones WHERE client_id = ? "
                f"AND pkey {self.IN_KEYS} GROUP BY pkey",
                (client_id, self.keys_param(keys)),
            ):
                deletes[str(pkey)] = int(deleted_seq)
        targets = sorted({linked.get(row.key, row.key) for row in rows} | set(keys))
        if expire_before_ms:
            expired = [
                str(pkey)
                for (pkey,) in query(
                    "DELETE FROM profiles WHERE client_id = ? AND modified_at < ? "
                    f"AND pkey {self.IN_KEYS} RETURNING pkey",
                    (client_id, expire_before_ms, self.keys_param(targets)),
                )
            ]
            if expired:
                query(
                    f"DELETE FROM identities WHERE client_id = ? AND pkey {self.IN_KEYS}",
                    (client_id, self.keys_param(sorted(expired))),
                    fetch=False,
                )
                linked = {a: k for a, k in linked.items() if k not in expired}
                targets = sorted({linked.get(row.key, row.key) for row in rows} | set(keys))
        stored = {
            str(pkey): Stored(str(attrs), int(created), int(latest), int(size))
            for pkey, attrs, created, latest, size in query(
                f"SELECT pkey, {self.ATTRS}, created_seq, max_seq, {self.SIZE} FROM profiles "
                f"WHERE client_id = ? AND pkey {self.IN_KEYS}" + self.LOCK_PROFILES,
                (client_id, self.keys_param(targets)),
            )
        }
        changes, links, failures, applied = self._changes(
            rows, deletes, linked, stored, max_profile_bytes
        )
        absorbed = sorted(alias for alias in links if alias in stored)
        for alias in absorbed:  # an anonymous profile joins the profile its tntId links to
            was = stored[alias]
            self._merge(
                changes,
                Change(links[alias][0], was.attrs, was.created_seq, was.max_seq, 0),
            )
        self._upsert(db, client_id, [changes[key] for key in sorted(changes)])
        for alias in absorbed:
            query(
                "DELETE FROM profiles WHERE client_id = ? AND pkey = ?",
                (client_id, alias),
                fetch=False,
            )
            query(
                "UPDATE identities SET pkey = ? WHERE client_id = ? AND pkey = ?",
                (links[alias][0], client_id, alias),
                fetch=False,
            )
        if links:
            self._link(db, client_id, [(alias, *links[alias]) for alias in sorted(links)])
        return applied, failures

    def _changes(
        self,
        rows: Sequence[ImportRow],
        deletes: dict[str, int],
        linked: dict[str, str],
        stored: dict[str, Stored],
        max_profile_bytes: int,
    ) -> tuple[dict[str, Change], dict[str, tuple[str, int]], list[FailedRow], int]:
        """Steps 3 to 5 for each row in line order: what the unit writes to each profile, the
        links to make (alias: profile, seq), the rows that fail and the number applied.

        A unit whose profiles are all different, none deleted nor reached through a link,
        and none able to outgrow the limit (the largest stored plus the largest row, as
        ``needs_no_checks`` for batches), needs no row-by-row checks: most units of a
        large import qualify.
        """
        keys = {row.key for row in rows}
        largest_row = max((len(row.attrs) for row in rows), default=0)
        largest_profile = max((found.size for found in stored.values()), default=0)
        if (
            not deletes
            and len(keys) == len(rows)
            and keys.isdisjoint(linked)
            and largest_profile + MAX_BYTES_PER_CHAR * largest_row <= max_profile_bytes
        ):
            plain = {
                row.key: Change(row.key, row.attrs, row.seq, row.seq, row.modified_ms)
                for row in rows
            }
            links = {
                alias: (row.key, row.seq)
                for row in rows
                for alias in row.aliases
                if alias != row.key
            }
            return plain, links, [], len(rows)
        changes: dict[str, Change] = {}
        links = {}
        failures: list[FailedRow] = []
        applied = 0
        for row in rows:  # line order
            if deletes.get(row.key, 0) > row.seq:
                applied += 1  # in acceptance order: imported, then deleted
                continue
            target = linked.get(row.key, row.key)
            if not self._fits(row, target, stored, changes, max_profile_bytes):
                failures.append(
                    FailedRow(
                        row.line,
                        row.key[2:],
                        "the profile would grow past max_profile_bytes "
                        f"({max_profile_bytes} bytes); import fewer or shorter attributes",
                    )
                )
                continue
            self._merge(changes, Change(target, row.attrs, row.seq, row.seq, row.modified_ms))
            for alias in row.aliases:
                if deletes.get(alias, 0) < row.seq and alias != target:
                    links[alias] = (target, row.seq)
            applied += 1
        return changes, links, failures, applied

    def _upsert(self, db: Connection, client_id: int, ordered: Sequence[Change]) -> None:
        """Write each change (in key order) with ``UPSERT``."""
        db.cursor().executemany(
            self._sql(self.UPSERT),
            [(client_id, c.key, c.attrs, c.min_seq, c.max_seq, c.modified_ms) for c in ordered],
        )

    def _link(self, db: Connection, client_id: int, links: Sequence[tuple[str, str, int]]) -> None:
        """Link each (tntId alias, profile key, seq), in alias order, unless linked later."""
        db.cursor().executemany(
            self._sql(
                "INSERT INTO identities (client_id, alias, pkey, linked_seq) VALUES (?, ?, ?, ?)"
            )
            + self.LINK_CONFLICT,
            [(client_id, *link) for link in links],
        )

    def _query(self, db: Connection) -> Callable[..., list[Any]]:
        def run(sql: str, params: Sequence[object], fetch: bool = True) -> list[Any]:
            cursor = db.execute(self._sql(sql), params)
            return list(cursor.fetchall()) if fetch else []

        return run

    @staticmethod
    def _merge(changes: dict[str, Change], change: Change) -> None:
        """Add a row's (or an absorbed profile's) attributes to what the unit writes."""
        current = changes.get(change.key)
        if current is None:
            changes[change.key] = change
            return
        current.attrs = merge_attrs(current.attrs, change.attrs)
        current.min_seq = min(current.min_seq, change.min_seq)
        current.max_seq = max(current.max_seq, change.max_seq)
        current.modified_ms = max(current.modified_ms, change.modified_ms)

    @staticmethod
    def _fits(
        row: ImportRow,
        target: str,
        stored: dict[str, Stored],
        changes: dict[str, Change],
        max_profile_bytes: int,
    ) -> bool:
        """True if the profile stays within ``max_profile_bytes`` with this row merged."""
        before = stored.get(target)
        pending = changes.get(target)
        # A character takes at most 4 bytes: most rows are judged without encoding them.
        bound = (before.size if before else 0) + MAX_BYTES_PER_CHAR * len(row.attrs)
        bound += MAX_BYTES_PER_CHAR * len(pending.attrs) if pending else 0
        if bound <= max_profile_bytes:
            return True
        attrs = before.attrs if before else "{}"
        if pending is not None:
            attrs = merge_attrs(attrs, pending.attrs)
        return byte_size(merge_attrs(attrs, row.attrs)) <= max_profile_bytes
