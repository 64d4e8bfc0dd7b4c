"""Domain records: small frozen dataclasses and enums shared by every layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

from profilebase import business_hours

#: Sequence numbers order every write: ``batch_seq * SEQ_SPAN + line number``.
#: A batch body under 50 MB has fewer than 10**8 lines, so rows never collide.
SEQ_SPAN = 100_000_000
DAY_MS = 86_400_000


class KeyKind(enum.StrEnum):
    """Which identifier a batch (or a lookup) uses for a profile."""

    #: Target's own visitor id, also called tntId or mboxPC.
    PC_ID = "pcId"
    #: The customer's id, called mbox3rdPartyId in page calls.
    THIRD_PARTY_ID = "thirdPartyId"

    @property
    def prefix(self) -> str:
        """Prefix of the stored profile key, so both id spaces share one table."""
        return "p:" if self is KeyKind.PC_ID else "t:"

    def key(self, identifier: str) -> str:
        return self.prefix + identifier


class WriteKind(enum.StrEnum):
    """What took a write sequence number; an attribute's seq tells which write set it."""

    #: A bulk batch; its ref is the batch id and each row adds its line number.
    BATCH = "batch"
    #: A single profile update call.
    UPDATE = "update"
    #: A Delivery API (page) call: creating, linking and its profileParameters.
    DELIVERY = "delivery"
    #: A profile deletion.
    DELETE = "delete"


class BatchState(enum.StrEnum):
    """Where a batch is; ``status`` below maps it to Target's three words."""

    #: Accepted and on disk; no unit applied yet.
    QUEUED = "queued"
    #: At least one unit applied or claimed, not all done.
    PROCESSING = "processing"
    #: Held back: the client's ``ingest_rows_per_second`` applies now and its next
    #: unit must wait, or (no pacing) its next unit waits to be retried after a
    #: failed attempt.
    THROTTLED = "throttled"
    #: Every row accounted for.
    COMPLETE = "complete"
    #: Neither it nor any earlier batch progressed for ``stuck_after_seconds``;
    #: workers keep retrying.
    STUCK = "stuck"

    @property
    def target_status(self) -> str:
        """The word Target's batchStatus shows: complete, incomplete or stuck."""
        if self is BatchState.COMPLETE:
            return "complete"
        if self is BatchState.STUCK:
            return "stuck"
        return "incomplete"


@dataclass(frozen=True)
class Client:
    """A tenant. ``limits`` overrides the server-wide defaults by name.

    ``api_key`` and ``secret_hash`` are the Basic credentials of the token endpoints;
    a client made by ``ensure_client`` (the ``demo`` client) has none until
    ``profilebase clients new-secret`` gives it some. ``org_id`` is its Adobe organization
    id, by which a request that names no client may find it (``imsOrgId``).
    """

    id: int
    code: str
    require_auth: bool = False
    disabled: bool = False
    limits: dict[str, int | float | str] = field(default_factory=dict)
    api_key: str | None = None
    secret_hash: str | None = field(default=None, repr=False)
    org_id: str | None = None


@dataclass(frozen=True)
class Limits:
    """The limits in force for one client (the server builds them with ``config.client_limits``;
    each is also a server-wide setting).

    The batch limits are all a client of the bulk API needs; the others default to
    Target's documented values (or to none) so that such a client can leave them out.
    """

    max_batch_bytes: int
    max_batch_rows: int
    rows_per_day: int
    max_profile_bytes: int
    max_update_url_bytes: int = 8 * 1024
    max_update_body_bytes: int = 60 * 1024
    updates_per_day: int = 1_000_000
    max_delivery_bytes: int = 60 * 1024 * 1024
    #: 0 means profiles never expire.
    profile_expiry_days: float = 0.0
    token_ttl_seconds: int = 7_775_999
    #: 0 means no limit.
    bulk_requests_per_minute: int = 0
    #: 0 means no limit.
    ingest_rows_per_second: int = 0
    business_hours: str = "mon-fri 09:00-18:00 UTC"

    def expire_before_ms(self, now_ms: int) -> int:
        """Profiles last active before this moment have expired (0 when expiry is off)."""
        if self.profile_expiry_days <= 0:
            return 0
        return now_ms - int(self.profile_expiry_days * DAY_MS)

    def ingest_rate(self, moment: datetime) -> int:
        """Rows per second the workers may apply for this client at ``moment`` (0: no limit)."""
        if self.ingest_rows_per_second and business_hours.parse(self.business_hours).contains(
            moment
        ):
            return self.ingest_rows_per_second
        return 0


@dataclass(frozen=True)
class Token:
    """A stored authorization token: the SHA-256 of its value, and the nonce from which the
    server secret derives the value (None for a token made before tokens could be shown)."""

    client_id: int
    token_hash: str
    last4: str
    scope: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    nonce: str | None = None


@dataclass(frozen=True)
class Counts:
    """Row accounting of a batch; once complete, batch_size == consumed == the other three."""

    consumed: int = 0
    successful: int = 0
    not_found: int = 0
    failed: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.consumed + other.consumed,
            self.successful + other.successful,
            self.not_found + other.not_found,
            self.failed + other.failed,
        )


@dataclass(frozen=True)
class FailedRow:
    """A row that was not applied, with the reason a person can act on."""

    line: int
    id: str
    reason: str
    raw: str = ""


@dataclass(frozen=True)
class Batch:
    """A batch as its status endpoint shows it."""

    seq: int
    batch_id: str
    client_id: int
    client_code: str
    version: int
    key_kind: KeyKind
    batch_size: int
    state: BatchState
    counts: Counts
    accepted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_progress_at: datetime
    units_total: int
    units_done: int
    #: The attribute names of the header, in order (the id column not included).
    names: tuple[str, ...] = ()
    #: When the client's next unit may start, if its ingestion is being paced.
    throttled_until: datetime | None = None


@dataclass(frozen=True)
class Write:
    """Provenance: the write an attribute's value came from."""

    kind: WriteKind
    #: The batch id, the update's id or the page call's requestId.
    ref: str
    #: The line of the batch row (batches only).
    line: int | None = None


@dataclass(frozen=True)
class Attribute:
    """One profile attribute: its value, when it was written and by which write."""

    value: str
    modified_at: datetime
    seq: int
    written_by: Write | None = None


@dataclass(frozen=True)
class Profile:
    """A stored profile, as the fetch endpoint shows it.

    ``key`` is the id it was looked up by; ``ids`` are all its keys, the stored
    (canonical) key first, then the tntIds linked to it.
    """

    client_code: str
    key: str
    modified_at: datetime
    attributes: dict[str, Attribute]
    ids: tuple[str, ...] = ()

    @property
    def visitor_id(self) -> str:
        return self.key[2:]

    def ids_of(self, kind: KeyKind) -> list[str]:
        """The profile's identifiers of one kind, without their key prefix."""
        return [key[2:] for key in self.ids if key.startswith(kind.prefix)]


def now_ms() -> int:
    """Milliseconds since the epoch, the unit every stored timestamp uses."""
    return int(datetime.now(UTC).timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso_ms(moment: datetime) -> str:
    """ISO-8601 with milliseconds and a numeric UTC offset, as Target prints timestamps."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
