"""Domain records: small frozen dataclasses and enums shared by every layer."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from profilebase import business_hours
from profilebase.errors import ConfigError

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


class Bound(enum.StrEnum):
    """The smallest value a number setting takes; its text is what a refusal says."""

    #: More than 0.
    POSITIVE = "positive"
    #: 0 or more (0 usually means off, or no limit).
    ZERO_OR_MORE = "0 or more"


@dataclass(frozen=True)
class Setting:
    """One setting, declared once: the settings, per-client limits, their checks, the CLI
    flags and the documentation are all derived from these declarations."""

    name: str
    #: Its type is the setting's type: int, float, str or bool.
    default: int | float | str | bool
    #: One or two sentences; the CLI flag's help and the docs table say it.
    help: str
    bound: Bound | None = None
    #: The values a text setting may take (compared ignoring case when ``any_case``).
    choices: tuple[str, ...] = ()
    any_case: bool = False
    #: A client may override it for itself (``clients set CODE --limit NAME=VALUE``).
    limit: bool = False
    #: The commands that take it as a flag, ``--NAME`` (``serve``, ``worker``).
    flags: tuple[str, ...] = ()
    #: Kept out of repr and logs.
    secret: bool = False

    @property
    def kind(self) -> type:
        return type(self.default)

    def check(self, value: object) -> None:
        """Refuse a value outside the declared bound or choices, naming the setting."""
        if self.bound is not None and isinstance(value, int | float):
            low = value <= 0 if self.bound is Bound.POSITIVE else value < 0
            if low:
                raise ConfigError(f"Setting {self.name} must be {self.bound}, got {value}.")
        if self.choices and isinstance(value, str):
            given = value.upper() if self.any_case else value
            if given not in self.choices:
                two = len(self.choices) == 2
                allowed = " or ".join(self.choices) if two else "one of " + ", ".join(self.choices)
                raise ConfigError(f"Setting {self.name} must be {allowed}, got {value!r}.")


MB = 1024 * 1024

#: The settings a client may override for itself; each is also a server-wide setting.
LIMIT_SETTINGS = (
    Setting(
        "max_batch_bytes",
        50 * MB,
        "A batch body must be smaller than this many bytes (Target: < 50 MB).",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "max_batch_rows",
        500_000,
        "Most data rows in one batch (Target: 500,000).",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "rows_per_day",
        1_000_000,
        "Most batch rows a client may submit in any rolling 24 hours.",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "max_profile_bytes",
        2000 * 1024,
        "Largest stored size of one profile; a row that would exceed it fails.",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "max_update_url_bytes",
        8 * 1024,
        "Longest request line of a GET single profile update (Target: 8 KB).",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "max_update_body_bytes",
        60 * 1024,
        "Largest body (plus query string) of a POST single profile update (Target: 60 KB).",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "updates_per_day",
        1_000_000,
        "Most single profile updates a client may make in any rolling 24 hours.",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "max_delivery_bytes",
        60 * MB,
        "Largest body of a Delivery API call (Target: 60 MB).",
        Bound.POSITIVE,
        limit=True,
    ),
    Setting(
        "profile_expiry_days",
        0.0,
        "A profile with no activity for this many days expires and is deleted (Target: 14); "
        "0 keeps profiles for ever.",
        Bound.ZERO_OR_MORE,
        limit=True,
    ),
    Setting(
        "bulk_requests_per_minute",
        0,
        "Most batches a client may submit in any 60 seconds (0: no limit; Target: 50).",
        Bound.ZERO_OR_MORE,
        limit=True,
    ),
    Setting(
        "ingest_rows_per_second",
        0,
        "Rows per second the workers apply for one client during business_hours (0: no limit).",
        Bound.ZERO_OR_MORE,
        limit=True,
    ),
    Setting(
        "business_hours",
        "mon-fri 09:00-18:00 UTC",
        "When ingest_rows_per_second applies: `always` or `[days] HH:MM-HH:MM [time zone]`.",
        limit=True,
    ),
    Setting(
        "token_ttl_seconds",
        7_775_999,
        "Lifetime of a token from the token endpoint (Target: 7775999, about 90 days).",
        Bound.POSITIVE,
        limit=True,
    ),
)

LIMIT_DEFAULTS: dict[str, Any] = {s.name: s.default for s in LIMIT_SETTINGS}


@dataclass(frozen=True)
class Limits:
    """The limits in force for one client (the server builds them with
    ``server.settings.client_limits``). Their names, defaults and checks are declared once,
    in ``LIMIT_SETTINGS``; a client of the bulk API that learns only the batch limits from a
    server leaves the others at their declared defaults (Target's documented values, or none).
    """

    max_batch_bytes: int = LIMIT_DEFAULTS["max_batch_bytes"]
    max_batch_rows: int = LIMIT_DEFAULTS["max_batch_rows"]
    rows_per_day: int = LIMIT_DEFAULTS["rows_per_day"]
    max_profile_bytes: int = LIMIT_DEFAULTS["max_profile_bytes"]
    max_update_url_bytes: int = LIMIT_DEFAULTS["max_update_url_bytes"]
    max_update_body_bytes: int = LIMIT_DEFAULTS["max_update_body_bytes"]
    updates_per_day: int = LIMIT_DEFAULTS["updates_per_day"]
    max_delivery_bytes: int = LIMIT_DEFAULTS["max_delivery_bytes"]
    #: 0 means profiles never expire.
    profile_expiry_days: float = LIMIT_DEFAULTS["profile_expiry_days"]
    token_ttl_seconds: int = LIMIT_DEFAULTS["token_ttl_seconds"]
    #: 0 means no limit.
    bulk_requests_per_minute: int = LIMIT_DEFAULTS["bulk_requests_per_minute"]
    #: 0 means no limit.
    ingest_rows_per_second: int = LIMIT_DEFAULTS["ingest_rows_per_second"]
    business_hours: str = LIMIT_DEFAULTS["business_hours"]

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
    return time.time_ns() // 1_000_000


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(moment: datetime) -> int:
    """``from_ms``'s inverse: the milliseconds since the epoch of ``moment``, exactly."""
    return (moment - _EPOCH) // _MILLISECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


#: The texts ``iso_ms`` made lately of UTC moments (``from_ms``'s): a profile's attributes
#: mostly share a few moments (those of the writes that set them), and a fetch prints each
#: one. Emptied when full.
_ISO_TEXTS: dict[datetime, str] = {}
_ISO_TEXTS_MOST = 4096


def iso_ms(moment: datetime) -> str:
    """ISO-8601 with milliseconds and a numeric UTC offset, as Target prints timestamps."""
    if moment.tzinfo is not UTC:  # kept for UTC only: equal local times may differ in fold
        return moment.astimezone(UTC).isoformat(timespec="milliseconds")
    text = _ISO_TEXTS.get(moment)
    if text is None:
        text = moment.isoformat(timespec="milliseconds")
        if len(_ISO_TEXTS) >= _ISO_TEXTS_MOST:
            _ISO_TEXTS.clear()
        _ISO_TEXTS[moment] = text
    return text


#: ``iso_ms_of``'s texts, by the milliseconds they were made of. Emptied when full.
_ISO_TEXTS_OF_MS: dict[int, str] = {}


def iso_ms_of(ms: int) -> str:
    """``iso_ms(from_ms(ms))``, kept by ``ms``: no moment is made for a text made lately."""
    text = _ISO_TEXTS_OF_MS.get(ms)
    if text is None:
        text = iso_ms(from_ms(ms))
        if len(_ISO_TEXTS_OF_MS) >= _ISO_TEXTS_MOST:
            _ISO_TEXTS_OF_MS.clear()
        _ISO_TEXTS_OF_MS[ms] = text
    return text
