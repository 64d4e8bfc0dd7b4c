"""Rolling quotas of a client's batches: the check, when they free up, and how to say so.

Both backends call ``check_batch`` inside the transaction that accepts a batch,
with the (accepted_at, rows) of the client's batches of the last 24 hours, so
the check and the acceptance are one atomic step. The web layer calls it once
more before reading a body, to refuse early without reading 50 MB.
"""

from __future__ import annotations

from collections.abc import Sequence

from profilebase.errors import QuotaExceeded
from profilebase.models import Limits, from_ms, iso_ms

DAY_MS = 86_400_000
MINUTE_MS = 60_000


def check_batch(
    client: str, recent: Sequence[tuple[int, int]], size: int | None, limits: Limits, now_ms: int
) -> None:
    """Raise ``QuotaExceeded`` if a batch of ``size`` rows may not be accepted at ``now_ms``.

    1. ``bulk_requests_per_minute`` (when set): batches accepted in the last 60 seconds.
    2. ``rows_per_day``: rows accepted in the last 24 hours plus this batch's. A size of
       None (the body is not read yet) asks whether the quota has any row left.
    """
    per_minute = limits.bulk_requests_per_minute
    if per_minute:
        last_minute = sorted(at for at, _ in recent if at > now_ms - MINUTE_MS)
        if len(last_minute) >= per_minute:
            wait = last_minute[len(last_minute) - per_minute] + MINUTE_MS - now_ms
            raise QuotaExceeded(
                f"Too many batches for client {client!r}: {len(last_minute)} were accepted in "
                f"the last 60 seconds, the limit is {per_minute} (bulk_requests_per_minute). "
                f"It resets in {seconds(wait)} seconds, at {at(now_ms + wait)}.",
                retry_after=seconds(wait),
            )
    day = [(accepted, rows) for accepted, rows in recent if accepted > now_ms - DAY_MS]
    used = sum(rows for _, rows in day)
    if used + (size or 1) > limits.rows_per_day:
        wait = retry_after_ms(day, size or 1, limits.rows_per_day, now_ms)
        raise QuotaExceeded(
            quota_message(client, limits.rows_per_day, used, size, wait, now_ms),
            retry_after=seconds(wait),
        )


def rate_limit_headers(
    recent: Sequence[tuple[int, int]], limit: int, now_ms: int
) -> dict[str, str]:
    """``X-RateLimit-*`` of a rolling 24-hour quota: the limit, what is left, and the
    seconds until the oldest counted rows leave the window (when Remaining grows)."""
    day = [(accepted, rows) for accepted, rows in recent if accepted > now_ms - DAY_MS and rows]
    used = sum(rows for _, rows in day)
    reset = seconds(min(accepted for accepted, _ in day) + DAY_MS - now_ms) if day else 0
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, limit - used)),
        "X-RateLimit-Reset": str(reset),
    }


def retry_after_ms(recent: Sequence[tuple[int, int]], size: int, limit: int, now_ms: int) -> int:
    """Milliseconds until ``size`` more rows fit, given (accepted_at, rows) of the last day.

    Rows leave the window 24 hours after their batch was accepted, oldest first. A
    batch larger than the whole quota never fits; the answer is then a full day.
    """
    if size > limit:
        return DAY_MS
    excess = sum(rows for _, rows in recent) + size - limit
    for accepted_at, rows in sorted(recent):
        excess -= rows
        if excess <= 0:
            return max(1000, accepted_at + DAY_MS - now_ms)
    return DAY_MS


def seconds(ms: int) -> int:
    """Whole seconds, rounded up, at least 1: what Retry-After may say."""
    return max(1, -(-ms // 1000))


def at(ms: int) -> str:
    return iso_ms(from_ms(ms))


def quota_message(
    client: str, limit: int, used: int, size: int | None, wait_ms: int, now_ms: int
) -> str:
    if size is None:
        return (
            f"Daily row quota used up for client {client!r}: {used:,} rows were accepted in the "
            f"last 24 hours, the limit is {limit:,} (rows_per_day). Quota frees up in "
            f"{seconds(wait_ms)} seconds, at {at(now_ms + wait_ms)}."
        )
    if size > limit:
        return (
            f"This batch has {size:,} rows, more than client {client!r} may submit in 24 hours "
            f"(rows_per_day = {limit:,}). Split it into smaller batches sent over more than a day."
        )
    return (
        f"Daily row quota exceeded for client {client!r}: {used:,} rows were accepted in the "
        f"last 24 hours and this batch adds {size:,}, over the limit of {limit:,} "
        f"(rows_per_day). Enough quota frees up in {seconds(wait_ms)} seconds, at "
        f"{at(now_ms + wait_ms)}; retry then, or send a smaller batch."
    )


def update_quota_message(client: str, limit: int, wait_ms: int, now_ms: int) -> str:
    return (
        f"Daily single-update quota exceeded for client {client!r}: {limit:,} updates were "
        f"made in the last 24 hours (updates_per_day). The next update fits in "
        f"{seconds(wait_ms)} seconds, at {at(now_ms + wait_ms)}; retry then, or send many "
        "updates at once as a batch."
    )
