"""The rolling 24-hour row quota: when it frees up and how to say so."""

from __future__ import annotations

from collections.abc import Sequence

DAY_MS = 86_400_000


def retry_after_ms(
    recent: Sequence[tuple[int, int]], size: int, limit: int, now_ms: int
) -> int:
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


def quota_message(client: str, limit: int, used: int, size: int, wait_ms: int) -> str:
    seconds = -(-wait_ms // 1000)
    if size > limit:
        return (
            f"This batch has {size:,} rows, more than client {client!r} may submit in 24 hours "
            f"(rows_per_day = {limit:,}). Split it into smaller batches sent over more than a day."
        )
    return (
        f"Daily row quota exceeded for client {client!r}: {used:,} rows were accepted in the "
        f"last 24 hours and this batch adds {size:,}, over the limit of {limit:,} "
        f"(rows_per_day). Enough quota frees up in {seconds} seconds; retry then, or send "
        "a smaller batch."
    )


def update_quota_message(client: str, limit: int, wait_ms: int) -> str:
    seconds = -(-wait_ms // 1000)
    return (
        f"Daily single-update quota exceeded for client {client!r}: {limit:,} updates were "
        f"made in the last 24 hours (updates_per_day). The next update fits in {seconds} "
        "seconds; retry then, or send many updates at once as a batch."
    )
