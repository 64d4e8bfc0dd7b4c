"""Turning stored profile rows into ``Profile`` records, with provenance; shared by backends.

Every attribute is stored as ``[value, seq, modified_at_ms]``. Its seq names the
write that set it (``seq // SEQ_SPAN`` is the row of the ``writes`` table) and, for a
batch, the line of the row (``seq % SEQ_SPAN``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from profilebase.models import SEQ_SPAN, Attribute, Profile, Write, WriteKind, from_ms

#: (kind, ref) of a ``writes`` row, by its seq.
WriteRows = Mapping[int, tuple[str, str | None]]


def write_numbers(documents: Iterable[Mapping[str, Sequence[Any]]]) -> set[int]:
    """The ``writes`` rows the attributes of these decoded documents came from."""
    return {entry[1] // SEQ_SPAN for attrs in documents for entry in attrs.values()}


def provenance(seq: int, writes: WriteRows) -> Write | None:
    """The write that set an attribute, or None if its record has been purged."""
    number, line = divmod(seq, SEQ_SPAN)
    found = writes.get(number)
    if found is None:
        return None
    kind = WriteKind(found[0])
    ref = found[1] or f"{kind}-{number}"
    return Write(kind, ref, line if kind is WriteKind.BATCH else None)


def build_profile(
    client_code: str,
    key: str,
    attrs: Mapping[str, Sequence[Any]],
    modified_ms: int,
    ids: Sequence[str],
    writes: WriteRows,
) -> Profile:
    """A ``Profile`` looked up by ``key``; ``ids`` are its stored key, then its aliases."""
    return Profile(
        client_code=client_code,
        key=key,
        modified_at=from_ms(modified_ms),
        attributes={
            name: Attribute(value, from_ms(ms), seq, provenance(seq, writes))
            for name, (value, seq, ms) in attrs.items()
        },
        ids=tuple(ids),
    )
