"""What profile servers answer, as typed records: Target's XML and JSON, profilebase's JSON.

Target's documentation shows its replies in several shapes over the years, and
its own examples are not always well-formed: a ``<batchStatus>`` URL with a raw
``&`` (``…?batchId=demo-1845664501&m2Node=00``), stray spaces inside
``<batchId>``, per-profile statuses without a batch status (before May 2020),
``failed`` in one document and ``error`` in another. The parsers here accept
all of them: a raw ``&`` that starts no entity is escaped before parsing (with
defusedxml, which refuses entity-expansion tricks), text is trimmed, unknown
status words are kept as they are and count as not finished. A reply that is
not XML at all falls back to the substring search real Target clients use.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException

from profilebase.models import BatchState, Limits

#: Target's documented limits: a body under 50 MB (read as 50,000,000 bytes, the safe
#: reading) and at most 500,000 rows; 64 KB of external data per profile.
TARGET_LIMITS = Limits(
    max_batch_bytes=50_000_000,
    max_batch_rows=500_000,
    rows_per_day=1_000_000,
    max_profile_bytes=64 * 1024,
)
#: Target's batch status words that mean the batch will not change any more.
FINISHED = frozenset({"complete", "stuck"})

_RAW_AMPERSAND = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9A-Fa-f]+);)")


def parse_xml(text: str) -> Element | None:
    """Parse an XML reply, escaping raw ``&`` first; None if it is not XML."""
    try:
        root: Element = SafeElementTree.fromstring(_RAW_AMPERSAND.sub("&amp;", text.strip()))
    except (SafeElementTree.ParseError, DefusedXmlException):
        return None
    return root


def child_text(root: Element, tag: str) -> str | None:
    found = root.find(tag)
    return None if found is None else (found.text or "").strip()


def to_int(text: str | None) -> int | None:
    if text is None or not text.strip().lstrip("-").isdigit():
        return None
    return int(text)


def to_datetime(text: object) -> datetime | None:
    """An ISO-8601 timestamp, or None for anything else (Classic docs print placeholders)."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def batch_id_from_url(url: str) -> str:
    """The ``batchId`` query parameter of a batchStatus URL ("" if it has none)."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("batchId", [""])
    return values[0].strip()


@dataclass(frozen=True)
class Submitted:
    """The answer to batchUpdate: where to ask for the batch's status."""

    success: bool
    batch_status_url: str
    message: str

    @property
    def batch_id(self) -> str:
        return batch_id_from_url(self.batch_status_url)


def parse_submitted(text: str) -> Submitted:
    """Target's ``<response><success/><batchStatus/><message/></response>``."""
    root = parse_xml(text)
    if root is None:
        # Real clients do this: look for the pieces, whatever surrounds them.
        url = re.search(r"<batchStatus>\s*(.*?)\s*</batchStatus>", text, re.S)
        message = re.search(r"<message>\s*(.*?)\s*</message>", text, re.S)
        return Submitted(
            success="<success>true</success>" in text,
            batch_status_url=url.group(1).replace("&amp;", "&") if url else "",
            message=message.group(1) if message else text.strip()[:200],
        )
    return Submitted(
        success=(child_text(root, "success") or "").lower() == "true",
        batch_status_url=child_text(root, "batchStatus") or "",
        message=child_text(root, "message") or "",
    )


@dataclass(frozen=True)
class BatchStatus:
    """A batch's status. Counts are None where the server did not say (no showDetails)."""

    batch_id: str
    #: Target's word: complete, incomplete or stuck (an unknown word is kept as sent).
    status: str
    batch_size: int | None = None
    consumed: int | None = None
    successful: int | None = None
    not_found: int | None = None
    failed: int | None = None
    #: Ids Target lists as failed (v2, ``showDetails=true``).
    failed_ids: tuple[str, ...] = ()
    #: profilebase only: queued, processing, throttled, complete or stuck.
    state: BatchState | None = None
    #: profilebase only: why it is queued, throttled or stuck.
    reason: str | None = None
    #: profilebase only: until when a throttled batch waits (pacing, or a retry).
    throttled_until: datetime | None = None
    accepted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows_per_second: float | None = None
    #: profilebase only: when the batch was cancelled, and who asked (else None).
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None

    @property
    def finished(self) -> bool:
        """True once the batch will not change: complete or stuck."""
        return self.status in FINISHED

    @property
    def applied(self) -> int:
        """Rows processed so far (consumed), for progress."""
        if self.consumed is not None:
            return self.consumed
        if self.status == "complete" and self.batch_size is not None:
            return self.batch_size
        return 0


def parse_batch_status_xml(text: str) -> BatchStatus:
    """Target's batchStatus XML in any of its documented shapes."""
    root = parse_xml(text)
    if root is None:
        raise ValueError(f"not a batchStatus reply: {text[:200]!r}")
    profiles = [
        ((p.findtext("id") or "").strip(), (p.findtext("status") or "").strip().lower())
        for p in root.findall("profile")
    ]
    status = (child_text(root, "status") or "").lower()
    if not status:
        # Before May 2020 v2 listed every profile and no batch status.
        status = "incomplete" if any(s == "pending" for _, s in profiles) else "complete"
    consumed = to_int(child_text(root, "consumedCount"))
    if consumed is None and profiles and child_text(root, "status") is None:
        consumed = sum(1 for _, s in profiles if s != "pending")
    return BatchStatus(
        batch_id=child_text(root, "batchId") or "",
        status=status,
        batch_size=to_int(child_text(root, "batchSize")),
        consumed=consumed,
        successful=to_int(child_text(root, "successfulUpdates")),
        not_found=to_int(child_text(root, "profilesNotFound")),
        failed=to_int(child_text(root, "failedUpdates")),
        failed_ids=tuple(i for i, s in profiles if s in {"failed", "error"}),
    )


def parse_batch_status_json(data: Mapping[str, Any]) -> BatchStatus:
    """profilebase's JSON batch status (``/profilebase/v1/.../batches/{id}``)."""
    state = str(data.get("state"))
    return BatchStatus(
        batch_id=str(data["batchId"]),
        status=str(data["status"]),
        batch_size=data.get("batchSize"),
        consumed=data.get("consumedCount"),
        successful=data.get("successfulUpdates"),
        not_found=data.get("profilesNotFound"),
        failed=data.get("failedUpdates"),
        state=BatchState(state) if state in BatchState._value2member_map_ else None,
        reason=data.get("reason"),
        throttled_until=to_datetime(data.get("throttledUntil")),
        accepted_at=to_datetime(data.get("acceptedAt")),
        started_at=to_datetime(data.get("startedAt")),
        finished_at=to_datetime(data.get("finishedAt")),
        rows_per_second=data.get("rowsPerSecond"),
        cancelled_at=to_datetime((data.get("cancelled") or {}).get("at")),
        cancelled_by=(data.get("cancelled") or {}).get("by"),
    )


@dataclass(frozen=True)
class ProfileAttribute:
    value: str
    modified_at: datetime | None


@dataclass(frozen=True)
class RemoteProfile:
    """A fetched profile. ``visitor_id`` is the id it was fetched by."""

    client: str
    visitor_id: str
    modified_at: datetime | None
    attributes: dict[str, ProfileAttribute]

    def values(self) -> dict[str, str]:
        """Attribute name to value, without timestamps."""
        return {name: attribute.value for name, attribute in self.attributes.items()}


def parse_profile(data: Mapping[str, Any]) -> RemoteProfile:
    """Target's fetch JSON: the current shape, or Classic's (``mboxPC``, ``thirdPartyId``)."""
    visitor = data.get("visitorId") or data.get("thirdPartyId") or data.get("mboxPC") or ""
    attributes = {
        str(name): ProfileAttribute(
            value="" if entry.get("value") is None else str(entry.get("value")),
            modified_at=to_datetime(entry.get("modifiedAt")),
        )
        for name, entry in (data.get("profileAttributes") or {}).items()
        if isinstance(entry, Mapping)
    }
    return RemoteProfile(
        client=str(data.get("client") or data.get("clientCode") or ""),
        visitor_id=str(visitor),
        modified_at=to_datetime(data.get("modifiedAt")),
        attributes=attributes,
    )


@dataclass(frozen=True)
class UpdateResult:
    """The answer to the single profile update."""

    success: bool
    pc_id: str
    message: str


def parse_update(text: str) -> UpdateResult:
    """``<response><success>true</success><pcId/><message/></response>``, or its tag-less text."""
    root = parse_xml(text)
    if root is None:
        # The current docs show the reply as a browser renders it: "trueRequest successfully…".
        stripped = text.strip()
        success = stripped.lower().startswith("true")
        return UpdateResult(success, "", stripped[4:] if success else stripped)
    return UpdateResult(
        success=(child_text(root, "success") or "").lower() == "true",
        pc_id=child_text(root, "pcId") or "",
        message=child_text(root, "message") or "",
    )


def error_message(text: str, status: int) -> str:
    """The sentence a server gave with an error: XML ``<message>``, JSON ``message``, or text."""
    stripped = text.strip()
    if stripped.startswith("<"):
        root = parse_xml(stripped)
        if root is not None and child_text(root, "message"):
            return child_text(root, "message") or ""
    elif stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            if data.get("message"):
                return str(data["message"])
            errors = data.get("errors")  # Adobe I/O shape: {"errors": [{"message": …}]}
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                return str(errors[0].get("message", ""))
    if stripped and len(stripped) <= 300 and "<html" not in stripped.lower():
        return stripped
    return f"HTTP {status}"


@dataclass(frozen=True)
class ServerInfo:
    """What the client knows of the server: its limits, and whether it is profilebase."""

    limits: Limits
    profilebase: bool
    version: str = ""
    #: Rows the client may still submit in the rolling 24 hours (profilebase only).
    quota_remaining: int | None = None
    #: The import endpoint takes gzip bodies (``Content-Encoding: gzip``).
    gzip_imports: bool = False


def parse_server_info(data: Mapping[str, Any]) -> ServerInfo:
    """profilebase's ``/profilebase/v1/clients/{client}``."""
    limits = data["limits"]
    return ServerInfo(
        limits=Limits(
            max_batch_bytes=int(limits["maxBatchBytes"]),
            max_batch_rows=int(limits["maxBatchRows"]),
            rows_per_day=int(limits["rowsPerDay"]),
            max_profile_bytes=int(limits["maxProfileBytes"]),
        ),
        profilebase=True,
        version=str(data.get("version", "")),
        quota_remaining=int(data["quota"]["remaining"]),
        gzip_imports=(data.get("extensions") or {}).get("profileImportGzip") is True,
    )


@dataclass(frozen=True)
class ServerFailure:
    """A row the server failed: its line in the batch, its id, and why."""

    line: int
    id: str
    reason: str


@dataclass(frozen=True)
class DryRunReport:
    """profilebase's answer to ``batchUpdate?dryRun=true``."""

    batch_size: int
    would_fail: int
    failures: tuple[ServerFailure, ...]
    would_be_accepted: bool
    quota_remaining: int


def parse_dry_run(data: Mapping[str, Any]) -> DryRunReport:
    return DryRunReport(
        batch_size=int(data["batchSize"]),
        would_fail=int(data["wouldFail"]),
        failures=tuple(
            ServerFailure(int(f["line"]), str(f["id"]), str(f["reason"])) for f in data["failures"]
        ),
        would_be_accepted=bool(data["wouldBeAccepted"]),
        quota_remaining=int(data["quota"]["remaining"]),
    )
