"""Failed authentications per address: more than the limit in a minute and the address waits.

The count lives in this process's memory: it costs no database write per failure (an
attacker cannot use it to load the database) and it is lost on restart, which is
harmless for a one-minute window. Only the offending address is slowed down, so the
legitimate client calling from elsewhere is not locked out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable

from profilebase.errors import TooManyFailures

WINDOW_MS = 60_000
#: Addresses remembered at most; the least recently failing are forgotten first.
MAX_ADDRESSES = 100_000


class FailedAttempts:
    """A sliding one-minute window of failed authentications for each address."""

    def __init__(self, limit: int, clock: Callable[[], int]) -> None:
        self.limit = limit
        self.clock = clock
        self._failures: OrderedDict[str, deque[int]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """Raise ``TooManyFailures`` while ``address`` has more than ``limit`` recent failures."""
        if not self.limit:
            return
        now = self.clock()
        with self._lock:
            failures = self._failures.get(address)
            if failures is None or len(self._prune(failures, now)) <= self.limit:
                return
            # Wait until all but `limit` of the failures have left the window.
            count = len(failures)
            wait = failures[count - self.limit - 1] + WINDOW_MS - now
        raise TooManyFailures(
            f"Too many failed authentications from {address}: {count} in the last "
            f"minute, the limit is {self.limit} (auth_failures_per_minute). Retry in "
            f"{-(-wait // 1000)} seconds, with valid credentials.",
            retry_after=-(-wait // 1000),
        )

    def record(self, address: str) -> None:
        """Count one failed authentication of ``address``."""
        if not self.limit:
            return
        now = self.clock()
        with self._lock:
            failures = self._failures.setdefault(address, deque())
            self._prune(failures, now).append(now)
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)

    @staticmethod
    def _prune(failures: deque[int], now: int) -> deque[int]:
        while failures and failures[0] <= now - WINDOW_MS:
            failures.popleft()
        return failures
