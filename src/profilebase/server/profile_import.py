"""Importing profiles from JSON lines, as ``profilebase export`` writes them.

Each line is one profile::

    {"visitorId": "crm-1", "thirdPartyId": "crm-1", "tntIds": ["t1"], "modifiedAt": "…",
     "profileAttributes": {"tier": {"value": "gold", "modifiedAt": "…"}}}

An import goes through the batch machinery, so it has a batch's guarantees:

1. The body is read, cut into units of ``unit_rows`` lines (the first of half as many,
   as a batch's: ``ingest.first_unit_rows``) and stored in one
   transaction under one write seq (``Store.accept_batch``, batch version 3), within
   the client's batch limits and quotas; an ``Idempotency-Key`` works as for a batch.
2. Workers apply units in any order, each in one transaction
   (``Store.apply_import_unit``): a row's seq is the import's seq plus its line, so
   per attribute a later write wins whatever the order, as with batch rows.
3. Every line ends applied or failed with its reason, and the status, failed rows,
   cancel and listing work as for any batch.

Lines that are not a profile fail with the reason; an empty value is no change, as
in a batch. Attribute and profile modified times are kept as exported. The SDK sends
each line in the compact form of ``profilelines.compact`` (no provenance, an attribute
at the profile's time as its value alone), which this decodes as it decodes the line.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from profilebase import batchfile, ids, profilelines
from profilebase.errors import BatchTooLarge
from profilebase.models import SEQ_SPAN, Client, Counts, FailedRow, KeyKind, Limits
from profilebase.server.ingest import SpooledUnits, UnitCutter
from profilebase.server.merge import dump_attrs
from profilebase.server.storage.base import NewBatch, Store, UnitClaim
from profilebase.server.storage.batch_control import IMPORT_VERSION
from profilebase.server.storage.imports import ImportRow

__all__ = ["IMPORT_VERSION", "ImportIntake", "accept", "apply_claim", "decode_line", "decode_unit"]


class ImportIntake(UnitCutter):
    """Cuts a JSON-lines body into units as it streams, within the byte and row limits.

    Its units are stored compressed (``SpooledUnits(compressed=True)``).
    """

    TOO_LONG = "The import has {span:,} lines or more; split it."
    TOO_MANY = (
        "The import has more than {limit:,} profiles (max_batch_rows); send it in parts "
        "(profilebase import does)."
    )

    def __init__(self, limits: Limits, unit_rows: int, digest: bool = False) -> None:
        import hashlib

        super().__init__(limits, unit_rows, first_line=1, compressed=True)
        self.hash = hashlib.sha256() if digest else None
        self.total = 0
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.hash is not None:
            self.hash.update(chunk)
        if self.total >= self.limits.max_batch_bytes:
            raise BatchTooLarge(
                f"The import is {self.total:,} bytes or more; one request must be smaller than "
                f"{self.limits.max_batch_bytes:,} bytes (max_batch_bytes). Send the file in "
                "parts (profilebase import does)."
            )
        data = self.partial + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self.partial = data
            return
        self.partial = data[cut + 1 :]
        self._take_lines(data[:cut].split(b"\n"))

    def finish(self) -> SpooledUnits:
        if self.partial:
            self._take_lines([self.partial])
            self.partial = b""
        self._cut_unit()
        return self.units

    @property
    def digest(self) -> str:
        return "" if self.hash is None else self.hash.hexdigest()


async def read(
    chunks: AsyncIterator[bytes], limits: Limits, unit_rows: int, digest: bool
) -> ImportIntake:
    """Feed a streamed body to an intake."""
    intake = ImportIntake(limits, unit_rows, digest)
    try:
        async for chunk in chunks:
            intake.feed(chunk)
        intake.finish()
    except BaseException:
        intake.units.close()
        raise
    return intake


def accept(
    store: Store,
    client: Client,
    intake: ImportIntake,
    limits: Limits,
    now_ms: int,
    idempotency_key: str | None = None,
) -> tuple[int, str]:
    """Store the import's units under one seq (a batch of version 3); (seq, batch id)."""
    try:
        return store.accept_batch(
            NewBatch(
                client=client,
                version=IMPORT_VERSION,
                key_kind=KeyKind.THIRD_PARTY_ID,
                names=(),
                batch_size=intake.rows,
                units=intake.units,
                idempotency_key=idempotency_key,
                digest=intake.digest,
            ),
            now_ms,
            limits,
        )
    finally:
        intake.units.close()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


class LineError(ValueError):
    """A line that is not a profile; the message says why."""


def to_ms(text: object, what: str) -> int:
    if not isinstance(text, str):
        raise LineError(f"{what} must be an ISO-8601 time such as 2026-01-31T12:00:00.000+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise LineError(
            f"{what} {text[:40]!r} is not an ISO-8601 time such as 2026-01-31T12:00:00.000+00:00"
        ) from None
    if moment.tzinfo is None:
        raise LineError(f"{what} {text[:40]!r} has no time zone: add +00:00 (UTC)")
    return (moment - EPOCH) // MILLISECOND  # exact: no float rounding


def checked_id(kind: KeyKind, value: object, field: str) -> str:
    if not isinstance(value, str):
        raise LineError(f"{field} must be text")
    if not value:
        raise LineError(f"{field} is empty")
    problem = batchfile.check_id(kind, value)
    if problem:
        raise LineError(problem)
    return value


def attribute(name: object, entry: object, seq: int, default_ms: int) -> tuple[str, Any] | None:
    """One attribute as stored, ``[value, seq, ms]``; None for an empty value (no change)."""
    if not isinstance(name, str) or not name:
        raise LineError("an attribute name is empty")
    if name.startswith("profile."):
        raise LineError(
            f"attribute {name!r}: write names without the `profile.` prefix "
            f"(here: {name.removeprefix('profile.')!r})"
        )
    modified = default_ms
    if isinstance(entry, dict):
        if entry.get("modifiedAt") is not None:
            modified = to_ms(entry["modifiedAt"], f"modifiedAt of attribute {name!r}")
        entry = entry.get("value")
    if not isinstance(entry, str):
        raise LineError(f"the value of attribute {name!r} must be text")
    if not entry:
        return None
    return name, [entry, seq, modified]


def decode_line(line: bytes, number: int, seq: int, now_ms: int) -> ImportRow:
    """One line as a profile to import; ``LineError`` says what is wrong with it."""
    try:
        document = json.loads(line)
    except UnicodeDecodeError:
        raise LineError("the line is not UTF-8") from None
    except ValueError as exc:
        raise LineError(f"the line is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise LineError("the line is not a JSON object (one profile per line)")
    third = document.get("thirdPartyId")
    visitor = document.get("visitorId")
    tnt_ids = document.get("tntIds", [])
    if not isinstance(tnt_ids, list):
        raise LineError("tntIds must be a list of tntIds")
    aliases: list[str] = []
    if third is not None:
        key = KeyKind.THIRD_PARTY_ID.key(checked_id(KeyKind.THIRD_PARTY_ID, third, "thirdPartyId"))
        if visitor is not None and visitor != third:
            tnt_ids = [visitor, *tnt_ids]
        for tnt_id in tnt_ids:
            alias = KeyKind.PC_ID.key(checked_id(KeyKind.PC_ID, tnt_id, "tntIds"))
            if alias not in aliases:
                aliases.append(alias)
    else:
        if visitor is None:
            raise LineError("the profile has neither thirdPartyId nor visitorId")
        key = KeyKind.PC_ID.key(checked_id(KeyKind.PC_ID, visitor, "visitorId"))
        if any(t != visitor for t in tnt_ids):
            raise LineError(
                "a profile without a thirdPartyId is a visitor's own: its tntIds can only "
                "be its visitorId"
            )
    default_ms = now_ms
    if document.get("modifiedAt") is not None:  # null is no time, as leaving it out
        default_ms = to_ms(document["modifiedAt"], "modifiedAt")
    found = document.get("profileAttributes", {})
    if not isinstance(found, dict):
        raise LineError("profileAttributes must be an object: name -> {value, modifiedAt}")
    attrs = dict(
        item
        for item in (attribute(n, e, seq, default_ms) for n, e in found.items())
        if item is not None
    )
    modified = max([default_ms, *(entry[2] for entry in attrs.values())])
    return ImportRow(number, key, tuple(aliases), seq, dump_attrs(attrs), modified)


ENCODE = msgspec.json.Encoder()


class Seen:
    """What a unit's lines have shown so far, which later lines need not check again: the
    milliseconds of each time (an export repeats few), and the attribute names that are
    valid (not empty, no ``profile.`` prefix)."""

    __slots__ = ("names", "times")

    def __init__(self) -> None:
        self.times: dict[str | None, int] = {}
        self.names: set[str] = set()

    def ms(self, text: str | None) -> int | None:
        """The milliseconds of a time; None if it is not a valid time."""
        found = self.times.get(text)
        if found is not None:
            return found
        try:
            found = self.times[text] = to_ms(text, "")
        except LineError:
            return None
        return found

    def valid_names(self, names: Iterable[str]) -> bool:
        """True if every name is one an attribute may have."""
        if self.names.issuperset(names):
            return True
        for name in names:
            if not name or name.startswith("profile."):
                return False
            self.names.add(name)
        return True


def fast_line(line: bytes, number: int, seq: int, now_ms: int, seen: Seen) -> ImportRow | None:
    """``decode_line`` for the common, valid line, typed by msgspec; None for any line it
    cannot vouch for, which ``decode_line`` then judges and explains.

    A line whose attributes are all plain text (the compact form the SDK sends) is decoded
    by ``PLAIN_DECODER`` and takes the profile's time for each without looking at them one
    by one.
    """
    document: profilelines.Profile | profilelines.PlainProfile
    try:
        document = profilelines.PLAIN_DECODER.decode(line)
    except msgspec.DecodeError:
        try:
            document = profilelines.DECODER.decode(line)
        except msgspec.DecodeError:
            return None
    found = document.profileAttributes
    if not seen.valid_names(found):
        return None
    default_ms = now_ms
    if document.modifiedAt is not None:
        stamp = seen.ms(document.modifiedAt)
        if stamp is None:
            return None
        default_ms = stamp
    latest = default_ms
    # Tuples: msgspec writes them as the JSON arrays lists would be, and they cost less.
    attrs: dict[str, tuple[str, int, int]]
    if isinstance(document, profilelines.PlainProfile):
        attrs = {
            name: (value, seq, default_ms)
            for name, value in document.profileAttributes.items()
            if value
        }
    else:
        attrs = {}
        for name, entry in document.profileAttributes.items():
            if isinstance(entry, str):  # the profile's time
                if entry:
                    attrs[name] = (entry, seq, default_ms)
                continue
            ms = default_ms
            if entry.modifiedAt is not None:  # every time must be valid, an empty value's too
                found_ms = seen.ms(entry.modifiedAt)
                if found_ms is None:
                    return None
                ms = found_ms
            if entry.value:
                attrs[name] = (entry.value, seq, ms)
                if ms > latest:
                    latest = ms
    third, visitor = document.thirdPartyId, document.visitorId
    aliases: list[str] = []
    if third is not None:
        if not ids.is_valid_third_party_id(third):
            return None
        tnt_ids = document.tntIds
        if visitor is not None and visitor != third:
            tnt_ids = [visitor, *tnt_ids]
        for tnt_id in tnt_ids:
            if not tnt_id or batchfile.check_id(KeyKind.PC_ID, tnt_id):
                return None
            if "p:" + tnt_id not in aliases:
                aliases.append("p:" + tnt_id)
        key = "t:" + third
    else:
        if not visitor or batchfile.check_id(KeyKind.PC_ID, visitor):
            return None
        if any(t != visitor for t in document.tntIds):
            return None
        key = "p:" + visitor
    return ImportRow(number, key, tuple(aliases), seq, ENCODE.encode(attrs).decode(), latest)


def decode_unit(
    body: bytes, first_line: int, batch_seq: int, now_ms: int
) -> tuple[list[ImportRow], list[FailedRow]]:
    """A stored unit's lines as rows to apply, and the lines that fail with their reasons."""
    rows: list[ImportRow] = []
    failures: list[FailedRow] = []
    seen = Seen()
    base = batch_seq * SEQ_SPAN + first_line
    for offset, line in enumerate(body.split(b"\n")):
        fast = fast_line(line, first_line + offset, base + offset, now_ms, seen)
        if fast is not None:
            rows.append(fast)
        elif not batchfile.is_blank(line):  # msgspec decodes no blank line
            number = first_line + offset
            try:
                rows.append(decode_line(line, number, base + offset, now_ms))
            except LineError as exc:
                failures.append(FailedRow(number, line_id(line), str(exc), raw_text(line)))
    return rows, failures


def unit_body(stored: bytes) -> bytes:
    """A stored unit's lines (they are kept compressed)."""
    return zlib.decompress(stored)


def line_id(line: bytes) -> str:
    from profilebase.server.storage.batch_control import row_id

    return row_id(IMPORT_VERSION, line)


def raw_text(line: bytes) -> str:
    text = line.rstrip(b"\r").decode("utf-8", errors="replace")
    return text if len(text) <= 2000 else text[:2000] + "…"


def apply_claim(
    store: Store,
    claim: UnitClaim,
    now_ms: int,
    max_profile_bytes: int,
    expire_before_ms: int = 0,
) -> Counts | None:
    """Decode and apply one claimed unit of an import, as a worker does."""
    body = unit_body(claim.body)
    rows, failures = decode_unit(body, claim.first_line, claim.batch_seq, now_ms)
    return store.apply_import_unit(
        claim, rows, failures, now_ms, max_profile_bytes, expire_before_ms
    )


def lines_of(profiles: Iterable[dict[str, Any]]) -> bytes:
    """JSON lines of profile documents (for tests and tools)."""
    return b"".join(json.dumps(p, ensure_ascii=False).encode() + b"\n" for p in profiles)
