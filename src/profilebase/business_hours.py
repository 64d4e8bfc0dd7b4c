"""Business hours: the weekly window in which a client's ingestion may be throttled.

The seeds warn that Target throttles ingestion during business hours; profilebase
can do the same on purpose (``ingest_rows_per_second``), so a shared server keeps
room for page traffic when it matters. The window is written as::

    always
    [DAYS] HH:MM-HH:MM [TIME ZONE]      e.g.  mon-fri 09:00-18:00 Europe/Berlin

DAYS is a comma list of days or day ranges (``mon-fri``, ``sat,sun``, ``fri-mon``),
every day when left out; the end may be ``24:00``; the time zone is an IANA name,
UTC when left out.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from profilebase.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TIME_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
FORMAT_HINT = (
    "write it as `always` or `[days] HH:MM-HH:MM [time zone]`, e.g. `mon-fri 09:00-18:00 UTC`"
)


@dataclass(frozen=True)
class BusinessHours:
    """A weekly window: these weekdays (0 = Monday), ``start`` to ``end`` minutes of the day."""

    text: str
    weekdays: frozenset[int]
    start: int
    end: int
    zone: tzinfo

    def contains(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.weekdays and self.start <= minute < self.end


@functools.lru_cache(maxsize=256)
def parse(text: str) -> BusinessHours:
    """Parse a business-hours string; ``ConfigError`` says what is wrong with it."""
    words = text.strip().split()
    if [w.lower() for w in words] == ["always"]:
        return BusinessHours(text, frozenset(range(7)), 0, 24 * 60, UTC)
    days = frozenset(range(7))
    if words and not words[0][0].isdigit():
        days = _days(words.pop(0), text)
    if not words:
        raise ConfigError(f"Business hours {text!r} have no time range; {FORMAT_HINT}.")
    start, end = _times(words.pop(0), text)
    zone: tzinfo = UTC
    if words:
        name = words.pop(0)
        try:
            zone = zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"Business hours {text!r} name an unknown time zone {name!r}; use an IANA "
                "name such as Europe/Berlin or UTC."
            ) from None
    if words:
        raise ConfigError(f"Business hours {text!r} have extra words; {FORMAT_HINT}.")
    return BusinessHours(text, days, start, end, zone)


def _days(word: str, text: str) -> frozenset[int]:
    found: set[int] = set()
    for part in word.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ConfigError(
                f"Business hours {text!r}: {part!r} is not a day or day range "
                f"(days are {', '.join(DAYS)}); {FORMAT_HINT}."
            )
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        found.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(found)


def _times(word: str, text: str) -> tuple[int, int]:
    match = TIME_RANGE.match(word)
    if match is None:
        raise ConfigError(f"Business hours {text!r}: {word!r} is not HH:MM-HH:MM; {FORMAT_HINT}.")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start >= end:
        raise ConfigError(
            f"Business hours {text!r}: {word!r} must run forward within one day "
            "(00:00 to 24:00, start before end)."
        )
    return start, end
