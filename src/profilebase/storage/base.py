"""The ``Store`` protocol: everything profilebase asks of a database.

Two backends implement it, ``sqlite.py`` and ``postgres.py``; one contract
suite (tests/test_store_contract.py) runs against both. Methods are
synchronous; the web layer calls them from a thread pool.

Ordering guarantee, shared by every backend: each stored attribute carries the
seq of the row that wrote it, and a write never replaces an attribute that
carries a higher seq. Creation (``created_seq``) and deletion (tombstones) are
ordered the same way. Units may therefore be applied by any worker in any
order and the result equals applying every accepted row one by one in
acceptance order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from profilebase.models import Batch, Client, Counts, FailedRow, KeyKind, Profile


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


class DecodedRow(NamedTuple):
    """A data row ready to apply: ``attrs`` is the JSON patch ``{name: [value, seq, ms]}``.

    A named tuple rather than a dataclass: the largest batch makes half a million.
    """

    line: int
    id: str
    seq: int
    attrs: str


class Store(Protocol):
    """A profilebase database."""

    def migrate(self) -> list[str]:
        """Apply pending schema migrations in order; return the names applied."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def ensure_client(self, code: str) -> Client:
        """Return the client ``code``, creating it (authorization off) if missing."""
        ...

    def get_client(self, code: str) -> Client | None:
        """Return the client with this code, or None."""
        ...

    def accept_batch(
        self, batch: NewBatch, now_ms: int, rows_per_day: int
    ) -> tuple[int, str]:
        """Store a batch and its units atomically; return (seq, batch id).

        Raises ``QuotaExceeded`` (writing nothing) when the client's rows accepted in
        the last 24 hours plus this batch exceed ``rows_per_day``.

        With ``batch.idempotency_key`` set: if this client already has a batch
        accepted under that key, return its (seq, batch id) and store nothing (raise
        ``IdempotencyConflict`` if its ``digest`` differs); otherwise record the key
        in the same transaction. Keys are kept at least 24 hours.
        """
        ...

    def rows_accepted_since(self, client_id: int, since_ms: int) -> int:
        """Rows of the client's batches accepted at or after ``since_ms``."""
        ...

    def claim_unit(self, owner: str, now_ms: int, lease_ms: int) -> UnitClaim | None:
        """Lease the oldest claimable unit: pending, or running with an expired lease.

        A unit of a v1 batch is claimable only once every earlier batch of its client
        is done, because v1 rows count profiles that exist at their seq.
        """
        ...

    def apply_unit(
        self,
        claim: UnitClaim,
        rows: Sequence[DecodedRow],
        failures: Sequence[FailedRow],
        now_ms: int,
        max_profile_bytes: int,
    ) -> Counts | None:
        """Apply a decoded unit and mark it done, all in one transaction.

        v1 rows update existing profiles only (others count as not found); v2 rows
        create missing ones. A row that would make a profile larger than
        ``max_profile_bytes`` fails. Returns the unit's counts, or None (changing
        nothing) if the lease was lost to another worker.
        """
        ...

    def release_unit(self, claim: UnitClaim, error: str, retry_at_ms: int) -> None:
        """Give a unit back after a failure so that it is retried at ``retry_at_ms``."""
        ...

    def get_batch(self, client_id: int, batch_id: str) -> Batch | None:
        """The batch with its counts, or None if this client has no such batch.

        ``last_progress_at`` is the latest progress of this batch or of any batch accepted
        before it: a batch waiting its turn behind work that moves is not stuck.
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

    def get_profile(self, client_id: int, key: str) -> Profile | None:
        """The profile stored under ``key`` ('p:' or 't:' prefixed), or None."""
        ...

    def purge(self, older_than_ms: int) -> int:
        """Delete finished batches accepted before ``older_than_ms``; return how many.

        Idempotency keys go too once older than both ``older_than_ms`` and 24 hours.
        """
        ...

    def pending_units(self) -> int:
        """Units not yet done (for draining and metrics)."""
        ...
