"""When the client retries a request, and how long it waits first.

A request is retried after a network error (the connection failed, dropped or
timed out) and after HTTP 429, 503 or any other 5xx: Target answers 503 when its
50-calls-a-minute limit is hit, profilebase 429 when a daily quota is used up.
The wait is the server's ``Retry-After`` when it sends one, otherwise an
exponential backoff with jitter. A ``Retry-After`` longer than the policy is
willing to wait ends the retries at once, so a quota that frees up in six hours
is reported instead of slept through.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently the client retries."""

    #: Tries in all, the first one included.
    attempts: int = 8
    #: The first backoff, in seconds; each later one doubles, up to ``cap``.
    base: float = 1.0
    #: The longest backoff, in seconds.
    cap: float = 60.0
    #: A Retry-After longer than this (seconds) is not waited for: the call fails instead.
    max_retry_after: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (from 1), jittered."""
        bound = min(self.cap, self.base * 2 ** (attempt - 1))
        return random.uniform(bound / 2, bound)


def is_retryable(status: int) -> bool:
    """True for the statuses worth trying again: 429 and every 5xx."""
    return status == 429 or status >= 500


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay or HTTP date), or None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
