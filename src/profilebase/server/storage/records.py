"""Database rows to domain records, the same for every backend.

Each backend selects the columns in the order these functions name them, so the
rules (which state a batch is in, how attributes and provenance read) live in one
place.

Every attribute is stored as ``[value, seq, modified_at_ms]``. Its seq names the
write that set it (``seq // SEQ_SPAN`` is the row of the ``writes`` table) and, for a
batch, the line of the row (``seq % SEQ_SPAN``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from profilebase.models import (
    SEQ_SPAN,
    Attribute,
    Batch,
    BatchState,
    Client,
    Counts,
    KeyKind,
    Profile,
    Write,
    WriteKind,
    from_ms,
)
from profilebase.server.storage.base import UnitClaim

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
    if kind is WriteKind.UPDATE and line > 1:  # a later update of a run sharing the write
        ref = f"{ref}-{line}"
    return Write(kind, ref, line if kind is WriteKind.BATCH else None)


class ProfileRecord(NamedTuple):
    """A profile as a fetch's statement reads it, before ``build_profile``: the fetch's
    reply is made from it directly (``export.fetch_document``), without the records in
    between."""

    client_code: str
    #: The key it was looked up by.
    key: str
    #: Its stored attributes, ``{name: [value, seq, modified_at_ms]}``.
    attrs: Mapping[str, Sequence[Any]]
    modified_ms: int
    #: The stored key, then its aliases in link order.
    ids: Sequence[str]
    writes: WriteRows

    def profile(self) -> Profile:
        return build_profile(*self)


def build_profile(
    client_code: str,
    key: str,
    attrs: Mapping[str, Sequence[Any]],
    modified_ms: int,
    ids: Sequence[str],
    writes: WriteRows,
) -> Profile:
    """A ``Profile`` looked up by ``key``; ``ids`` are its stored key, then its aliases.

    Attributes set by one write share its moment and its provenance: each is made once."""
    moments: dict[int, datetime] = {}
    sources: dict[int, Write | None] = {}
    attributes = {}
    for name, (value, seq, ms) in attrs.items():
        moment = moments.get(ms)
        if moment is None:
            moment = moments[ms] = from_ms(ms)
        if seq in sources:
            source = sources[seq]
        else:
            source = sources[seq] = provenance(seq, writes)
        attributes[name] = Attribute(value, moment, seq, source)
    return Profile(
        client_code=client_code,
        key=key,
        modified_at=from_ms(modified_ms),
        attributes=attributes,
        ids=tuple(ids),
    )


def client_from_row(row: Sequence[Any] | None) -> Client | None:
    """A client from (id, code, require_auth, disabled, limits, api_key, secret_hash,
    org_id), the columns of the ``client_by_*`` queries; limits is JSON text or a dict."""
    if row is None:
        return None
    limits = row[4]
    return Client(
        id=int(row[0]),
        code=str(row[1]),
        require_auth=bool(row[2]),
        disabled=bool(row[3]),
        limits=dict(json.loads(limits) if isinstance(limits, str | bytes) else limits),
        api_key=None if row[5] is None else str(row[5]),
        secret_hash=None if row[6] is None else str(row[6]),
        org_id=None if row[7] is None else str(row[7]),
    )


def claim_from_row(row: Sequence[Any], owner: str) -> UnitClaim:
    """A claimed unit from (batch_seq, unit_no, first_line, row_count, body, attempts,
    client_id, version, key_kind, header, client limits); header and limits are JSON
    as text, or decoded."""
    (batch_seq, unit_no, first_line, row_count, body, attempts,
     client_id, version, key_kind, header, limits) = row  # fmt: skip
    return UnitClaim(
        batch_seq=int(batch_seq),
        unit_no=int(unit_no),
        first_line=int(first_line),
        row_count=int(row_count),
        body=bytes(body),
        client_id=int(client_id),
        version=int(version),
        key_kind=KeyKind(key_kind),
        names=tuple(json.loads(header) if isinstance(header, str) else header),
        owner=owner,
        attempts=int(attempts),
        client_limits=json.loads(limits) if isinstance(limits, str | bytes) else dict(limits),
    )


def batch_from_row(row: Sequence[Any]) -> Batch:
    """A batch from the columns of a batch-status query, in this order.

    seq, batch_id, client_id, client code, version, key_kind, batch_size, units_total,
    accepted_at, started_at, finished_at, last_progress_at, header (a JSON array as
    text or a list), then the sums over its units of consumed, successful, not_found,
    failed and units done, and the client's pacing ``not_before`` (or None).
    """
    (seq, bid, cid, code, version, kind, size, total, accepted, started, finished,
     progress, header, consumed, successful, not_found, failed, done, paced) = row  # fmt: skip
    if finished is not None:
        state = BatchState.COMPLETE
    elif started is not None:
        state = BatchState.PROCESSING
    else:
        state = BatchState.QUEUED
    return Batch(
        seq=int(seq),
        batch_id=bid,
        client_id=int(cid),
        client_code=code,
        version=int(version),
        key_kind=KeyKind(kind),
        batch_size=int(size),
        state=state,
        counts=Counts(int(consumed), int(successful), int(not_found), int(failed)),
        accepted_at=from_ms(accepted),
        started_at=None if started is None else from_ms(started),
        finished_at=None if finished is None else from_ms(finished),
        last_progress_at=from_ms(progress),
        units_total=int(total),
        units_done=int(done),
        names=tuple(json.loads(header) if isinstance(header, str) else header),
        throttled_until=None if paced is None else from_ms(paced),
    )
