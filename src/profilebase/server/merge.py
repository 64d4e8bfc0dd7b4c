"""Backend-independent rules for applying a unit's rows.

A backend supplies a ``RowWriter`` (buffered writes plus one exact size query)
and the stored state of the unit's profiles; ``apply_rows`` decides, row by
row in line order, what happens to each row. The database's own JSON merge
(``json_patch`` / ``||``) is used when the row is newer than everything in the
profile; ``merge_attrs`` is the exact per-attribute rule otherwise.

Attribute values are right whatever order units are applied in; whether a v1
row finds its profile is not, so a v1 unit is only claimed once every earlier
batch of its client is done (the ``claim_unit`` query of each dialect).

Pure rules: no I/O, no database (an import-linter contract keeps it so).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import msgspec

from profilebase.models import Counts, FailedRow


class DecodedRow(NamedTuple):
    """A data row ready to apply: ``attrs`` is the JSON patch ``{name: [value, seq, ms]}``.

    A named tuple rather than a dataclass: the largest batch makes half a million.
    """

    line: int
    id: str
    seq: int
    attrs: str


@dataclass
class ProfileState:
    """What applying a unit needs to know of a stored profile."""

    created_seq: int
    max_seq: int
    size: int


@dataclass
class Tombstone:
    """One delete of a profile key: rows older than ``deleted_seq`` must not bring it back."""

    deleted_seq: int
    #: ``created_seq`` of the profile the delete removed (None if there was none), so that
    #: an older v1 row still knows whether the profile existed at its seq.
    created_seq: int | None = None


def delete_after(tombstones: Sequence[Tombstone] | None, seq: int) -> Tombstone | None:
    """The first delete after ``seq`` (``tombstones`` sorted by deleted_seq), or None."""
    for tombstone in tombstones or ():
        if tombstone.deleted_seq > seq:
            return tombstone
    return None


class RowWriter(Protocol):
    def write(self, key: str, row: DecodedRow, create: bool) -> None:
        """Buffer an upsert of ``row`` into profile ``key``."""
        ...

    def write_all(self, rows: Sequence[DecodedRow], prefix: str) -> None:
        """Upsert every row, in order, into the profile ``prefix + row.id``."""
        ...

    def merged_size(self, key: str, row: DecodedRow) -> int:
        """Flush buffered writes; return the byte size the profile would have with ``row``."""
        ...

    def tombstone_created(self, key: str, deleted_seq: int, created_seq: int) -> None:
        """Record that a row older than that delete of ``key`` created it at ``created_seq``."""
        ...

    def flush(self) -> None:
        """Write whatever is still buffered."""
        ...


def group_tombstones(found: Iterable[tuple[str, int, int]]) -> dict[str, list[Tombstone]]:
    """(pkey, deleted_seq, created_seq) rows, ordered by pkey and deleted_seq, per profile key."""
    tombstones: dict[str, list[Tombstone]] = {}
    for pkey, deleted, created in found:
        tombstones.setdefault(pkey, []).append(Tombstone(deleted, created))
    return tombstones


def merge_attrs(old: str, new: str) -> str:
    """Merge two ``{name: [value, seq, ms]}`` documents: per attribute, the higher seq wins."""
    merged = json.loads(old)
    for name, entry in json.loads(new).items():
        current = merged.get(name)
        if current is None or current[1] < entry[1]:
            merged[name] = entry
    return dump_attrs(merged)


#: Encodes as ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` does, byte for
#: byte (the same escapes), in a tenth of the time: every written row is encoded.
_encode = msgspec.json.Encoder().encode


def dump_attrs(attrs: dict[str, list[object]]) -> str:
    """``{name: [value, seq, ms]}`` as compact JSON text, non-ASCII characters as they are."""
    try:
        return _encode(attrs).decode()
    except (UnicodeEncodeError, OverflowError, TypeError):  # a lone surrogate, a str subclass
        return json.dumps(attrs, ensure_ascii=False, separators=(",", ":"))


def byte_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


#: A character takes at most this many bytes in UTF-8: 4 * len(text) bounds its size.
MAX_BYTES_PER_CHAR = 4


def needs_no_checks(
    rows: Sequence[DecodedRow], existing: dict[str, ProfileState], max_profile_bytes: int
) -> bool:
    """True when no row can fail: ids are unique in the unit and even the largest stored
    profile plus the largest row stays under the size limit. Most units of a large
    batch qualify, and are written without looking at rows one by one."""
    if len({row.id for row in rows}) != len(rows):
        return False
    largest_row = max(map(len, [row.attrs for row in rows]), default=0)
    largest_profile = max((state.size for state in existing.values()), default=0)
    return largest_profile + MAX_BYTES_PER_CHAR * largest_row <= max_profile_bytes


def apply_rows(
    rows: Sequence[DecodedRow],
    prefix: str,
    create: bool,
    existing: dict[str, ProfileState],
    tombstones: Mapping[str, Sequence[Tombstone]],
    max_profile_bytes: int,
    writer: RowWriter,
    aliases: Mapping[str, str] | None = None,
) -> tuple[Counts, list[FailedRow]]:
    """Apply ``rows`` in order through ``writer``; return their counts and failures.

    ``tombstones`` lists each key's deletes by seq; ``existing`` is keyed by stored key;
    ``aliases`` maps a row's key (a tntId linked to a thirdPartyId's profile) to the key its
    profile is stored under.

    0. Units where no row can fail are written in one go (``needs_no_checks``).
    1. A row older than a delete of its profile is skipped: in acceptance order it was
       applied (or, v1, not found), then deleted. A skipped v2 row still created the
       profile before that delete; the tombstone remembers it for v1 rows in between.
    2. A v1 row (``create`` false) for a profile that does not exist at its seq is
       "not found"; a v2 row creates it.
    3. A row that could push the profile past ``max_profile_bytes`` gets an exact
       check and fails if it would.
    """
    fast = create and not tombstones and not aliases
    if fast and needs_no_checks(rows, existing, max_profile_bytes):
        writer.write_all(rows, prefix)
        return Counts(successful=len(rows)), []
    successful = not_found = 0
    failures: list[FailedRow] = []
    for row in rows:
        key = prefix + row.id
        tombstone = delete_after(tombstones.get(key), row.seq)
        if tombstone is not None:
            created = tombstone.created_seq
            if create and (created is None or row.seq < created):
                tombstone.created_seq = row.seq
                writer.tombstone_created(key, tombstone.deleted_seq, row.seq)
            if create or (created is not None and created < row.seq):
                successful += 1
            else:
                not_found += 1
            continue
        if aliases:
            key = aliases.get(key, key)
        state = existing.get(key)
        exists = state is not None and state.created_seq < row.seq
        if not exists and not create:
            not_found += 1
            continue
        bound = MAX_BYTES_PER_CHAR * len(row.attrs) + (state.size if state is not None else 0)
        if bound > max_profile_bytes:
            exact = byte_size(row.attrs) if state is None else writer.merged_size(key, row)
            if exact > max_profile_bytes:
                failures.append(
                    FailedRow(
                        row.line,
                        row.id,
                        f"the profile would grow to {exact} bytes, over the limit of "
                        f"{max_profile_bytes} bytes (max_profile_bytes); send fewer or "
                        "shorter attributes",
                    )
                )
                continue
            bound = exact
        writer.write(key, row, create)
        if state is None:
            existing[key] = ProfileState(row.seq, row.seq, bound)
        else:
            state.created_seq = min(state.created_seq, row.seq)
            state.max_seq = max(state.max_seq, row.seq)
            state.size = bound
        successful += 1
    counts = Counts(consumed=0, successful=successful, not_found=not_found, failed=len(failures))
    return counts, failures
