"""Dry run of a batch: every check a real batch gets, with nothing written.

By the time a dry run gets here the body has passed the intake, which checks
the ``batch=`` prefix, the header and the byte and row limits and raises
exactly as it does for a real batch. This module then decodes every unit with
the worker's own decoder (so each row fails or passes for the same reason it
would when applied), finds rows too large for any profile, and forecasts the
quotas with the same ``quota.check_batch`` that ``accept_batch`` runs. Every
limit is the client's own (``config.client_limits``: its overrides, else the
server's defaults). What depends on the profiles as they will be when the batch is
applied cannot be known in advance and is not reported: v1 rows for profiles
that do not exist ("not found"), and a profile pushed past its size limit by
the attributes it already has.
"""

from __future__ import annotations

from dataclasses import dataclass

from profilebase.errors import QuotaExceeded
from profilebase.models import Client, FailedRow, KeyKind, Limits
from profilebase.server import quota
from profilebase.server.decoder import Slice, UnitDecoder, raw_text
from profilebase.server.ingest import ReadBatch
from profilebase.server.merge import byte_size
from profilebase.server.narrowing import decoded_parts
from profilebase.server.storage.base import DecodedRow, Store

#: How many failed rows a dry-run report lists by default (all are counted).
DEFAULT_MAX_FAILURES = 1000


@dataclass(frozen=True)
class QuotaForecast:
    """Whether the client's quotas (rows in the rolling 24 hours, batches per minute)
    would take the batch right now; if not, the refusal a real batch would get."""

    rows_per_day: int
    used: int
    batch_size: int
    #: The 429 message a real batch would get now, or None.
    refusal: str | None = None
    #: Its Retry-After in seconds, or None.
    retry_after: int | None = None

    @property
    def fits(self) -> bool:
        return self.refusal is None

    @property
    def remaining(self) -> int:
        return max(0, self.rows_per_day - self.used)


@dataclass(frozen=True)
class DryRunReport:
    """What a batch would do if it were submitted now."""

    version: int
    key_kind: KeyKind
    names: tuple[str, ...]
    batch_size: int
    would_fail: int
    failures: tuple[FailedRow, ...]
    quota: QuotaForecast
    limits: Limits

    @property
    def would_succeed(self) -> int:
        return self.batch_size - self.would_fail

    @property
    def would_be_accepted(self) -> bool:
        return self.quota.fits


def check(
    store: Store,
    client: Client,
    version: int,
    read: ReadBatch,
    limits: Limits,
    now_ms: int,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> DryRunReport:
    """Decode and check every row of ``read``; write nothing; close its spooled units."""
    failures: list[FailedRow] = []
    failed = 0
    # One slice at a time, as the worker decodes: the memory a unit needs stays bounded.
    decoder = UnitDecoder(read.header, 0, now_ms, limits.max_profile_bytes)
    try:
        for unit in read.units:
            for piece, part in decoded_parts(unit.body, unit.first_line, decoder):
                bad = [*part.failures, *too_large(part.rows, piece, limits.max_profile_bytes)]
                failed += len(bad)
                room = max_failures - len(failures)
                if room > 0:
                    failures.extend(sorted(bad, key=lambda f: f.line)[:room])
    finally:
        read.units.close()
    return DryRunReport(
        version=version,
        key_kind=read.header.key_kind,
        names=read.header.names,
        batch_size=read.rows,
        would_fail=failed,
        failures=tuple(failures),
        quota=forecast(store, client, read.rows, limits, now_ms),
        limits=limits,
    )


def too_large(rows: list[DecodedRow], piece: Slice, max_profile_bytes: int) -> list[FailedRow]:
    """The rows whose attributes alone are larger than any profile may be."""
    failures = []
    lines: list[bytes] | None = None
    for row in rows:
        size = byte_size(row.attrs)
        if size > max_profile_bytes:
            lines = lines or piece.body.split(b"\n")
            failures.append(
                FailedRow(
                    row.line,
                    row.id,
                    f"the profile would grow to at least {size} bytes, over the limit of "
                    f"{max_profile_bytes} bytes (max_profile_bytes); send fewer or shorter "
                    "attributes",
                    raw_text(lines[row.line - piece.first_line]),
                )
            )
    return failures


def forecast(store: Store, client: Client, size: int, limits: Limits, now_ms: int) -> QuotaForecast:
    """The quota check a batch of ``size`` rows would meet in ``accept_batch`` now."""
    recent = store.recent_batches(client.id, now_ms - quota.DAY_MS)
    used = sum(rows for _, rows in recent)
    try:
        quota.check_batch(client.code, recent, size, limits, now_ms)
    except QuotaExceeded as exc:
        return QuotaForecast(limits.rows_per_day, used, size, exc.message, exc.retry_after)
    return QuotaForecast(limits.rows_per_day, used, size)


def report_json(report: DryRunReport) -> dict[str, object]:
    """The JSON answer of ``batchUpdate?dryRun=true`` (a profilebase extension)."""
    return {
        "dryRun": True,
        "wouldBeAccepted": report.would_be_accepted,
        "version": report.version,
        "key": str(report.key_kind),
        "attributes": list(report.names),
        "batchSize": report.batch_size,
        "wouldSucceed": report.would_succeed,
        "wouldFail": report.would_fail,
        "failures": [
            {"line": f.line, "id": f.id, "reason": f.reason, "raw": f.raw} for f in report.failures
        ],
        "failuresListed": len(report.failures),
        "quota": {
            "rowsPerDay": report.quota.rows_per_day,
            "usedLast24h": report.quota.used,
            "remaining": report.quota.remaining,
            "fits": report.quota.fits,
            "message": report.quota.refusal,
            "retryAfter": report.quota.retry_after,
        },
        "limits": limits_json(report.limits),
    }


def limits_json(limits: Limits) -> dict[str, float | str]:
    """A client's limits as the extension endpoints show them."""
    return {
        "maxBatchBytes": limits.max_batch_bytes,
        "maxBatchRows": limits.max_batch_rows,
        "rowsPerDay": limits.rows_per_day,
        "maxProfileBytes": limits.max_profile_bytes,
        "maxUpdateUrlBytes": limits.max_update_url_bytes,
        "maxUpdateBodyBytes": limits.max_update_body_bytes,
        "updatesPerDay": limits.updates_per_day,
        "maxDeliveryBytes": limits.max_delivery_bytes,
        "profileExpiryDays": limits.profile_expiry_days,
        "tokenTtlSeconds": limits.token_ttl_seconds,
        "bulkRequestsPerMinute": limits.bulk_requests_per_minute,
        "ingestRowsPerSecond": limits.ingest_rows_per_second,
        "businessHours": limits.business_hours,
    }
