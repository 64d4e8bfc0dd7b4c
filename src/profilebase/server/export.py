"""Profiles written out: Target's fetch JSON, JSON lines, and v2 batch files. No I/O.

The fetch shape is Target's (``client``, ``visitorId``, ``modifiedAt``,
``profileAttributes``); each attribute adds ``writtenBy``, the write its value
came from, which Target clients ignore. A batch export is a valid v2 batch body:
posted back, it restores the same attribute values.

A batch file is keyed by one kind of id, and a profile without an id of that
kind has no row in it: a profile made by a thirdPartyId batch and never linked
to a visitor has no tntId, an anonymous visitor has no thirdPartyId. Such a
batch export never drops them silently: ``plan_batch`` counts them, the server
sends the count in the ``X-Profilebase-Unkeyed-Profiles`` reply header, and
``profilebase export`` prints a warning with the count.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from profilebase import batchfile
from profilebase.models import Attribute, KeyKind, Profile, Write, iso_ms, iso_ms_of
from profilebase.server.storage.links import CUSTOMER_ID_PREFIX, ECID_PREFIX, customer_id_of
from profilebase.server.storage.records import ProfileRecord, provenance


def attribute_json(
    attribute: Attribute, sources: dict[Write, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An attribute's JSON; ``sources`` keeps the ``writtenBy`` of each write made so far,
    for the attributes of one profile that share it."""
    out: dict[str, Any] = {
        "value": attribute.value,
        "modifiedAt": iso_ms(attribute.modified_at),
    }
    source = attribute.written_by
    if source is not None:
        written = None if sources is None else sources.get(source)
        if written is None:
            written = attribute_source(source)
            if sources is not None:
                sources[source] = written
        out["writtenBy"] = written
    return out


def attribute_source(source: Write) -> dict[str, Any]:
    """An attribute's ``writtenBy``."""
    written: dict[str, Any] = {"kind": str(source.kind), "id": source.ref}
    if source.line is not None:
        written["line"] = source.line
    return written


def profile_json(profile: Profile, with_ids: bool = False) -> dict[str, Any]:
    """Target's fetch shape; ``with_ids`` adds the profile's ``thirdPartyId``, ``tntIds``,
    ``marketingCloudVisitorIds`` and ``customerIds`` (``{integrationCode, id}``)."""
    sources: dict[Write, dict[str, Any]] = {}
    out: dict[str, Any] = {
        "client": profile.client_code,
        "visitorId": profile.visitor_id,
        "modifiedAt": iso_ms(profile.modified_at),
        "profileAttributes": {
            name: attribute_json(attribute, sources)
            for name, attribute in sorted(profile.attributes.items())
        },
    }
    if with_ids:
        third_party = profile.ids_of(KeyKind.THIRD_PARTY_ID)
        if third_party:
            out["thirdPartyId"] = third_party[0]
        tnt_ids = profile.ids_of(KeyKind.PC_ID)
        if tnt_ids:
            out["tntIds"] = tnt_ids
        ecids = [key[2:] for key in profile.ids if key.startswith(ECID_PREFIX)]
        if ecids:
            out["marketingCloudVisitorIds"] = ecids
        customers = [customer_id_of(k) for k in profile.ids if k.startswith(CUSTOMER_ID_PREFIX)]
        if customers:
            out["customerIds"] = customers
    return out


def fetch_document(record: ProfileRecord) -> dict[str, Any]:
    """``profile_json(record.profile())``, made from the fetch's row directly: a fetch's
    reply, without a ``Profile``, ``Attribute``, ``Write`` or moment made for it (half a
    fetch's time in Python otherwise, docs/design.md#the-fetch-reply-made-from-its-row)."""
    written: dict[int, dict[str, Any] | None] = {}
    attributes: dict[str, Any] = {}
    attrs, writes = record.attrs, record.writes
    for name in sorted(attrs):
        value, seq, ms = attrs[name]
        out = {"value": value, "modifiedAt": iso_ms_of(ms)}
        if seq in written:
            source_json = written[seq]
        else:
            source = provenance(seq, writes)
            source_json = written[seq] = None if source is None else attribute_source(source)
        if source_json is not None:
            out["writtenBy"] = source_json
        attributes[name] = out
    return {
        "client": record.client_code,
        "visitorId": record.key[2:],
        "modifiedAt": iso_ms_of(record.modified_ms),
        "profileAttributes": attributes,
    }


def jsonl_lines(profiles: Iterable[Profile]) -> str:
    """One fetch-shaped JSON object per line, with the profile's ids, keyed by its stored id."""
    return "".join(
        json.dumps(profile_json(profile, with_ids=True), ensure_ascii=False) + "\n"
        for profile in profiles
    )


def batch_header(key_kind: KeyKind, names: Sequence[str]) -> str:
    return batchfile.encode_header(key_kind, names) + "\n"


def batch_lines(key_kind: KeyKind, names: Sequence[str], profiles: Iterable[Profile]) -> str:
    """One row per id of ``key_kind`` a profile has (a profile with none has no row).

    Empty trailing cells are left out: a row may be shorter than the header.
    """
    lines = []
    for profile in profiles:
        values = [
            profile.attributes[name].value if name in profile.attributes else "" for name in names
        ]
        while values and not values[-1]:
            values.pop()
        for identifier in profile.ids_of(key_kind):
            lines.append(batchfile.encode_row([identifier, *values]) + "\n")
    return "".join(lines)


#: Reply header of a batch export: how many profiles have no id of the requested key.
UNKEYED_HEADER = "X-Profilebase-Unkeyed-Profiles"
FORMATS = ("jsonl", "batch")


@dataclass(frozen=True)
class BatchPlan:
    """What the first pass over a snapshot finds for a batch export."""

    #: Every attribute name, sorted: the header.
    names: list[str]
    #: Profiles with no id of the requested kind: they have no row in the file.
    unkeyed: int


def plan_batch(pages: Iterable[Sequence[Profile]], key_kind: KeyKind) -> BatchPlan:
    """The header's attribute names and the profiles the export cannot key."""
    found: set[str] = set()
    unkeyed = 0
    for page in pages:
        for profile in page:
            found.update(profile.attributes)
            if not profile.ids_of(key_kind):
                unkeyed += 1
    return BatchPlan(sorted(found), unkeyed)


def export_chunks(
    pages: Iterable[Sequence[Profile]],
    form: str,
    key_kind: KeyKind = KeyKind.PC_ID,
    plan: BatchPlan | None = None,
) -> Iterator[str]:
    """The export's text, a page at a time: JSON lines, or (with the first pass's ``plan``)
    a batch file's header and rows."""
    if form == "batch":
        names = plan.names if plan is not None else []
        yield batch_header(key_kind, names)
        for page in pages:
            yield batch_lines(key_kind, names, page)
        return
    for page in pages:
        yield jsonl_lines(page)
