"""The ``Store`` protocol: everything profilebase asks of a database.

Two backends implement it, ``storage/sqlite/`` and ``storage/postgres/``; one contract
suite (tests/test_store_contract.py) runs against both. Methods are
synchronous; the web layer calls them from a thread pool, except the three made for the
event loop: ``submit_write`` (hands a write to the store's own writer thread, if it has
one), ``get_profile_nowait`` (a fetch that never waits, if the backend can make one) and
``changes_nowait`` (whether anything was committed since it was last asked).

Ordering guarantee, shared by every backend: each stored attribute carries the
seq of the row that wrote it, and a write never replaces an attribute that
carries a higher seq. Creation (``created_seq``) and deletion (tombstones) are
ordered the same way. Units may therefore be applied by any worker in any
order and the result equals applying every accepted row one by one in
acceptance order. Single updates, page calls and deletes take their own write
seq and apply at once, in one transaction; rows of batches accepted before them
but applied later lose to them attribute by attribute.

Identity: a tntId linked to a thirdPartyId's profile is an alias of it (see
``links.py``); every lookup by key resolves aliases first. ``expire_before_ms``
(0: off) makes profiles last active before that moment count as gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from profilebase.models import Batch, Client, Counts, FailedRow, KeyKind, Limits, Profile, Token
from profilebase.server.merge import DecodedRow
from profilebase.server.storage.overview import OverviewReads

T = TypeVar("T")

if TYPE_CHECKING:
    from profilebase.server.storage.batch_control import BatchListing, Cancellation, Cancelled
    from profilebase.server.storage.imports import ImportRow
    from profilebase.server.storage.records import ProfileRecord


class WouldWait(Exception):
    """A ``*_nowait`` read that could not answer without waiting: ask the blocking one."""


@dataclass(frozen=True)
class UnitSpec:
    """One work unit of a batch being accepted: raw lines starting at ``first_line``."""

    first_line: int
    row_count: int
    body: bytes


@dataclass(frozen=True)
class NewBatch:
    """A fully read and validated batch, ready to be stored."""

    client: Client
    version: int
    key_kind: KeyKind
    names: tuple[str, ...]
    batch_size: int
    units: Sequence[UnitSpec]
    #: The client's ``Idempotency-Key`` for this body, if it sent one.
    idempotency_key: str | None = None
    #: SHA-256 of the body (hex), recorded with the key to detect a key reused for another body.
    digest: str = ""


@dataclass(frozen=True)
class UnitClaim:
    """A unit a worker holds a lease on."""

    batch_seq: int
    unit_no: int
    first_line: int
    row_count: int
    body: bytes
    client_id: int
    version: int
    key_kind: KeyKind
    names: tuple[str, ...]
    owner: str
    attempts: int = 1
    #: The client's limit overrides (``Client.limits``).
    client_limits: Mapping[str, int | float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitsSummary:
    """Where the work units of one batch stand, for the extended status."""

    pending: int
    running: int
    done: int
    #: Pending units that wait for a retry time still in the future.
    retrying: int
    #: The earliest of those retry times (ms), or None.
    retry_at_ms: int | None
    #: The error of the most recent failed attempt on a unit not yet done, or None.
    last_error: str | None
    #: Units of batches accepted earlier (any client) that are not done yet.
    units_ahead: int


@dataclass(frozen=True)
class Visit:
    """The profile side of one page call: its ids and its profileParameters."""

    tnt_id: str
    third_party_id: str | None
    values: Mapping[str, str]
    request_id: str
    #: Keys of its ECID and customerIds (``links.ecid_key``, ``links.customer_id_key``).
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpdateOutcome:
    """A single update that found its profile."""

    #: A tntId of the profile (the one updated, or the latest linked), for the reply.
    pc_id: str | None
    #: The update's seq; None when there was no attribute to write.
    seq: int | None
    #: The client's single updates counted in the quota's window, this one included, in
    #: the shape ``Store.recent_updates`` gives (minute's end, updates), summed into one
    #: pair dated by the window's oldest minute; None when the update counted none.
    recent: tuple[tuple[int, int], ...] | None = None


class ProfileExport(Protocol):
    """A consistent snapshot of one client's profiles, read page by page."""

    def pages(self, size: int) -> Iterator[list[Profile]]:
        """The profiles in key order, at most ``size`` at a time (fewer when they are large,
        so that a page stays a few MB); each keyed by its stored key.

        May be called more than once; every pass reads the same snapshot.
        """
        ...

    def close(self) -> None:
        """End the snapshot and release its connection."""
        ...


class WriterApart(Protocol):
    """The online writes of a serving process, made by a process of their own and awaited on
    the event loop (SQLite: ``sqlite/apart.py``). It belongs to the loop that opens it."""

    async def open(self) -> None: ...

    async def write(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``: the store's ``update_profile``, ``visit`` or ``delete_profile``."""
        ...

    async def close(self) -> None: ...


class Store(OverviewReads, Protocol):
    """A profilebase database (``OverviewReads``: the dashboard's and the metrics' reads)."""

    def migrate(self) -> list[str]:
        """Apply pending schema migrations in order; return the names applied."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def pending_migrations(self) -> list[str]:
        """The names of the schema migrations not applied yet (empty when up to date).

        Raises ``DatabaseUnavailable`` when the database cannot be reached within the
        store's timeout: ``GET /readyz`` answers from this.
        """
        ...

    def ensure_client(self, code: str) -> Client:
        """Return the client ``code``, creating it (authorization off) if missing."""
        ...

    def get_client(self, code: str) -> Client | None:
        """Return the client with this code, or None."""
        ...

    def list_clients(self) -> list[Client]:
        """Every client, in code order."""
        ...

    def find_client_by_org(self, org_id: str) -> Client | None:
        """The client whose organization id is ``org_id`` (at most one has it), or None."""
        ...

    def create_client(
        self, code: str, require_auth: bool, api_key: str, secret_hash: str, now_ms: int
    ) -> Client:
        """Create a client with its Basic credentials; ``ClientExists`` if the code is taken."""
        ...

    def update_client(
        self,
        code: str,
        *,
        require_auth: bool | None = None,
        disabled: bool | None = None,
        limits: Mapping[str, int | float | str] | None = None,
        credentials: tuple[str, str] | None = None,
        org_id: str | None = None,
    ) -> Client:
        """Change the fields given (``limits`` replaces the whole overrides object,
        ``credentials`` is (api_key, secret_hash), an empty ``org_id`` removes it);
        ``UnknownClient`` if there is none, ``OrganizationTaken`` if another client has
        ``org_id``."""
        ...

    def create_token(self, token: Token, others_revoked_at_ms: int) -> None:
        """Store ``token``. Every other token of its client and scope that would still be
        valid at ``others_revoked_at_ms`` is revoked then (the rotation's grace period)."""
        ...

    def find_token(self, token_hash: str) -> Token | None:
        """The token with this hash, whatever its client or state, or None."""
        ...

    def active_token(self, client_id: int, scope: str, now_ms: int) -> Token | None:
        """The newest token of the client and scope neither expired nor revoked at ``now_ms``."""
        ...

    def revoke_tokens(self, client_id: int, now_ms: int) -> int:
        """Revoke at ``now_ms`` every token of the client still valid then; return how many."""
        ...

    def revoke_all_tokens(self, now_ms: int) -> int:
        """Revoke at ``now_ms`` every token of every client still valid then (the server
        secret changed); return how many."""
        ...

    def claim_secret(self, fingerprint: str, now_ms: int, replace: bool = False) -> str:
        """Record ``fingerprint`` as the server secret's if none is recorded (or, with
        ``replace``, in place of the recorded one); return the one recorded now."""
        ...

    def accept_batch(self, batch: NewBatch, now_ms: int, limits: Limits) -> tuple[int, str]:
        """Store a batch and its units atomically; return (seq, batch id).

        With ``batch.idempotency_key`` set: if this client already has a batch
        accepted under that key, return its (seq, batch id) and store nothing (raise
        ``IdempotencyConflict`` if its ``digest`` differs); otherwise record the key
        in the same transaction. Keys are kept at least 24 hours. A replay is
        answered before any quota check: it stores no rows.

        Otherwise raises ``QuotaExceeded`` (writing nothing) when ``quota.check_batch``
        refuses the batch given the client's batches of the last 24 hours
        (``rows_per_day``, ``bulk_requests_per_minute``); the check runs inside the
        same transaction.
        """
        ...

    def recent_batches(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        """(accepted_at, rows) of the client's batches accepted after ``since_ms``."""
        ...

    def rows_accepted_since(self, client_id: int, since_ms: int) -> int:
        """Rows of the client's batches accepted at or after ``since_ms``."""
        ...

    def claim_unit(
        self, owner: str, now_ms: int, lease_ms: int, paced: Mapping[int, int] | None = None
    ) -> UnitClaim | None:
        """Lease the oldest claimable unit: pending, or running with an expired lease.

        A unit of a v1 batch is claimable only once every earlier batch of its client
        is done, because v1 rows count profiles that exist at their seq.

        ``paced`` maps client ids to the rows per second their ingestion is limited to
        right now. A unit of such a client is claimable only from the client's
        ``ingest_pacing.not_before`` on, and claiming it moves ``not_before`` on by the
        unit's rows divided by the rate, in the same transaction: however many workers
        run, the client's rows are applied at that rate on average.
        """
        ...

    def apply_unit(
        self,
        claim: UnitClaim,
        rows: Sequence[DecodedRow],
        failures: Sequence[FailedRow],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
        through_line: int | None = None,
    ) -> Counts | None:
        """Apply decoded rows of a unit and record its failed rows, all in one transaction.

        v1 rows update existing profiles only (others count as not found); v2 rows
        create missing ones. A row that would make a profile larger than
        ``max_profile_bytes`` fails. Rows keyed by a linked tntId apply to its
        profile; expired profiles the unit touches are deleted first.

        A unit may be applied in parts, in line order: ``through_line`` says that
        ``rows`` and ``failures`` are those of the unit's lines up to that one, and
        the unit stays running with its progress recorded; None means they run to
        the unit's end, and the unit is marked done. Rows and failures at or before
        the recorded progress are skipped (an earlier part, perhaps of a worker
        that died since, applied them), so no row is applied or counted twice.
        The part's counts are added to the unit's and returned, or None (changing
        nothing) if the lease was lost to another worker.
        """
        ...

    def release_unit(self, claim: UnitClaim, error: str, retry_at_ms: int) -> None:
        """Give a unit back after a failure so that it is retried at ``retry_at_ms``.

        ``error`` is shown to users in the batch status: a sentence, no internals.
        The unit keeps the progress of the parts already applied.
        """
        ...

    def transient_reason(self, error: BaseException) -> str | None:
        """If trying again later can cure ``error`` — the database unreachable, busy,
        locked or out of room — a short phrase saying so, for the batch status (e.g.
        "the database was unavailable"); None for any other error (a value the
        database refuses, or a bug)."""
        ...

    def get_batch(self, client_id: int, batch_id: str) -> Batch | None:
        """The batch with its counts, or None if this client has no such batch.

        ``last_progress_at`` is the latest progress of this batch or of any batch accepted
        before it: a batch waiting its turn behind work that moves is not stuck.
        ``throttled_until`` is the client's ``ingest_pacing.not_before``, if any.
        """
        ...

    def units_summary(self, batch_seq: int, now_ms: int) -> UnitsSummary:
        """Counts of the batch's units by state, its pending retries and its queue position."""
        ...

    def failed_rows(
        self, batch_seq: int, after_line: int = 0, limit: int = 1000
    ) -> list[FailedRow]:
        """Failed rows of a batch in line order, starting after ``after_line``."""
        ...

    def cancel_batch(self, client_id: int, batch_id: str, by: str, now_ms: int) -> Cancelled | None:
        """Stop a batch in one transaction: every row not yet applied fails with reason
        ``cancelled`` and the batch completes, recording ``by`` and the time; nothing
        applied is undone. A unit a worker is applying either commits first (applied) or
        is stopped (its ``apply_unit`` then writes nothing). None if the client has no
        such batch; ``BatchFinished`` if it completed uncancelled; a second cancel
        changes nothing (``already``)."""
        ...

    def apply_import_unit(
        self,
        claim: UnitClaim,
        rows: Sequence[ImportRow],
        failures: Sequence[FailedRow],
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> Counts | None:
        """Apply a decoded unit of a profile import (batch version 3) and mark it done, in
        one transaction: profiles merged by seq with their modified times, tntIds linked
        (``storage/imports.py``). None, changing nothing, if the lease was lost."""
        ...

    def batch_cancellation(self, batch_seq: int) -> Cancellation | None:
        """Who cancelled the batch and when, or None."""
        ...

    def batch_listings(
        self, client_id: int, limit: int = 50, unfinished: bool = False
    ) -> list[BatchListing]:
        """The client's batches, newest first (only those not finished, if asked)."""
        ...

    def get_profile(self, client_id: int, key: str, expire_before_ms: int = 0) -> Profile | None:
        """The profile ``key`` ('p:' or 't:' prefixed) finds, with provenance, or None."""
        ...

    def writer_apart(self, answer_timeout: float, log_format: str = "text") -> WriterApart | None:
        """A process of its own for the online writes a serving process awaits on its event
        loop (SQLite; None elsewhere), logging in ``log_format``: a group it has not
        answered within ``answer_timeout`` seconds of starting it fails with 503 and the
        process is replaced."""
        ...

    def submit_write(self, call: Callable[..., T], *args: Any) -> Future[T] | None:
        """Hand ``call(*args)``, where ``call`` is this store's ``update_profile``,
        ``visit`` or ``delete_profile``, to the store's own threads and return its future;
        None if the backend has none for it (then make the call from a thread). SQLite's
        writer thread runs the online writes waiting together in one transaction; on
        PostgreSQL, a leader thread runs a client's waiting single updates and page calls
        in one (group commit). Callable from the event loop: does not wait."""
        ...

    def get_profile_nowait(
        self, client_id: int, key: str, expire_before_ms: int = 0
    ) -> ProfileRecord | None:
        """``get_profile``'s row, if the backend can answer at once without waiting for
        anything (a lock, the network, a large profile); else ``WouldWait``, and the caller
        asks ``get_profile`` from a thread. Callable from the event loop."""
        ...

    async def get_profile_async(
        self, client_id: int, key: str, expire_before_ms: int = 0
    ) -> ProfileRecord | None:
        """``get_profile``'s row, awaited on the event loop, if the backend has a driver that
        can (PostgreSQL); else, or on any error, ``WouldWait``, and the caller asks
        ``get_profile`` from a thread, which reports an outage as usual."""
        ...

    async def close_async(self) -> None:
        """Close what the store opened on the running event loop (``get_profile_async``);
        called before the loop ends."""
        ...

    def changes_nowait(self) -> object:
        """A value that differs from the last one read whenever anything was committed to
        the database in between, by any connection of any process: replies read since the
        last one are still the database's. ``WouldWait`` if the backend cannot tell at once
        (then nothing read may be kept). Callable from the event loop."""
        ...

    async def changes_async(self) -> object:
        """``changes_nowait``, awaited on the event loop, for a backend that must ask its
        server (PostgreSQL); ``WouldWait`` if it cannot (then nothing read may be kept)."""
        ...

    def update_profile(
        self,
        client: Client,
        key: str,
        values: Mapping[str, str],
        now_ms: int,
        updates_per_day: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> UpdateOutcome | None:
        """Apply a single update now, under a new write seq; None if no profile has ``key``.

        Creates nothing. Raises ``QuotaExceeded`` when the client made
        ``updates_per_day`` updates in the last 24 hours and ``RequestTooLarge``
        when the profile would outgrow ``max_profile_bytes``; either writes nothing.
        """
        ...

    def recent_updates(self, client_id: int, since_ms: int) -> list[tuple[int, int]]:
        """(end of the minute, updates) of each minute of the client's single updates from
        the minute of ``since_ms`` on: an update counts against ``updates_per_day`` until
        24 hours after its minute ends."""
        ...

    def visit(
        self,
        client_id: int,
        visit: Visit,
        now_ms: int,
        max_profile_bytes: int,
        expire_before_ms: int = 0,
    ) -> str:
        """Apply a page call now: create or link profiles (``links.plan_link``), point its
        ECID and customerIds (``visit.aliases``) at the profile, then apply its values after
        the link. Returns the stored key of its profile.

        A call that changes nothing only marks the profile active.
        """
        ...

    def delete_profile(
        self, client_id: int, key: str, now_ms: int, expire_before_ms: int = 0
    ) -> bool:
        """Delete the profile ``key`` finds with all its ids; False if there was none.

        While batches of the client are still queued, every id gets a tombstone with
        the delete's seq, so their older rows do not bring the profile back.
        """
        ...

    def open_export(
        self, client_id: int, kind: KeyKind | None = None, expire_before_ms: int = 0
    ) -> ProfileExport:
        """A snapshot of the client's profiles: all, or those stored under ``kind``'s keys."""
        ...

    def expire_profiles(self, client_id: int, before_ms: int) -> int:
        """Delete the client's profiles last active before ``before_ms``; return how many."""
        ...

    def purge(self, older_than_ms: int) -> int:
        """Delete finished batches accepted before ``older_than_ms`` and tokens expired or
        revoked before it; return how many batches.

        Idempotency keys go too once older than both ``older_than_ms`` and 24 hours.
        Also forgets what no longer matters: tombstones no queued row is older than,
        quota counts older than a day, and the records of single updates, page
        calls and deletes accepted before ``older_than_ms`` (their provenance).
        """
        ...

    def pending_units(self) -> int:
        """Units not yet done (for draining and metrics)."""
        ...

    def latest_batch(self) -> int:
        """The seq of the batch accepted last, 0 if none: cheap enough to poll often."""
        ...
