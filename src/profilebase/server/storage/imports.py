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

Its SQL is named queries (``import_profiles`` and those it shares with batch units);
writing a unit's profiles and links is each backend's own (``_upsert``, ``_link``:
``executemany`` on SQLite, one JSON document per unit on PostgreSQL). Every statement
runs with the profiles in key order, so on PostgreSQL imports and batch units take
their locks in the same order.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from profilebase.models import Counts, FailedRow
from profilebase.server.merge import MAX_BYTES_PER_CHAR, byte_size, merge_attrs
from profilebase.server.storage.base import UnitClaim
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

        def apply() -> Counts | None:
            with self._write() as db:
                ours = db.execute(
                    self.sql["unit_progress"], (claim.batch_seq, claim.unit_no, claim.owner)
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

        return self._racing(claim, apply)

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
        sql = self.sql
        keys = sorted({row.key for row in rows} | {a for row in rows for a in row.aliases})
        keys_param = self._list(keys)
        linked: dict[str, str] = {}
        if db.execute(sql["client_has_identities"], (client_id,)).fetchone():
            linked = dict(db.execute(sql["aliases_of_keys"], (client_id, keys_param)))
        deletes: dict[str, int] = {}
        if db.execute(sql["client_has_tombstones"], (client_id,)).fetchone():
            found = db.execute(sql["tombstones_of_keys"], (client_id, keys_param)).fetchall()
            for pkey, deleted_seq, _ in found:  # in seq order: the latest delete stays
                deletes[str(pkey)] = int(deleted_seq)
        targets = sorted({linked.get(row.key, row.key) for row in rows} | set(keys))
        if expire_before_ms:
            expired = self._expire_keys(db, client_id, targets, expire_before_ms)
            if expired:
                linked = {a: k for a, k in linked.items() if k not in expired}
                targets = sorted({linked.get(row.key, row.key) for row in rows} | set(keys))
        stored = {
            str(pkey): Stored(str(attrs), int(created), int(latest), int(size))
            for pkey, attrs, created, latest, size in db.execute(
                sql["import_profiles"], (client_id, self._list(targets))
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
        # A tombstone of a new profile newer than the newest one read above is a delete
        # that committed meanwhile (its seq is newer than every row of the import).
        created = [(key, deletes.get(key, -1)) for key in changes if key not in stored]
        self._created_profiles(db, client_id, created)
        for alias in absorbed:
            db.execute(sql["delete_profile"], (client_id, alias))
            db.execute(sql["move_identities"], (links[alias][0], client_id, alias))
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

    def _created_profiles(
        self, db: Connection, client_id: int, created: Sequence[tuple[str, int]]
    ) -> None:
        """After a unit inserted the profiles ``created`` (key, and the seq no tombstone of
        it the unit took into account exceeds): a backend whose writers run side by side
        checks that no delete of them committed unseen meanwhile (PostgreSQL). SQLite's
        one writer at a time has none to check."""

    @abstractmethod
    def _upsert(self, db: Connection, client_id: int, ordered: Sequence[Change]) -> None:
        """Write each change, in key order, merging attribute by attribute by seq."""

    @abstractmethod
    def _link(self, db: Connection, client_id: int, links: Sequence[tuple[str, str, int]]) -> None:
        """Link each (tntId alias, profile key, seq), in alias order, unless linked later."""

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
