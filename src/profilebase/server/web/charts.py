"""The overview's chart of rows per minute, laid out here and drawn as SVG by its template.

Server-side SVG needs no script and no chart library: the layout is a list of bars
with their coordinates, every number computed here, every label escaped by the
template like any other value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from profilebase.models import from_ms
from profilebase.server.storage.overview import MinuteRows

WIDTH = 600
HEIGHT = 160
#: Room for the labels under the bars.
LABELS = 20


@dataclass(frozen=True)
class Bar:
    """One minute: its applied rows (bottom) and failed rows (stacked on top)."""

    x: float
    width: float
    applied_y: float
    applied_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    total_applied: int
    total_failed: int
    width: int = WIDTH
    height: int = HEIGHT
    plot_height: int = HEIGHT - LABELS


def rows_per_minute(rows: Sequence[MinuteRows], now_ms: int, minutes: int = 60) -> Chart:
    """Bars for the ``minutes`` minutes up to the one of ``now_ms`` (the last, still running)."""
    last = now_ms // 60_000
    first = last - minutes + 1
    by_minute = {r.minute: r for r in rows if first <= r.minute <= last}
    peak = max((r.applied + r.failed for r in by_minute.values()), default=0)
    plot = HEIGHT - LABELS
    slot = WIDTH / minutes
    bars = []
    for i in range(minutes):
        minute = first + i
        found = by_minute.get(minute)
        applied = found.applied if found else 0
        failed = found.failed if found else 0
        scale = plot / peak if peak else 0
        applied_height = applied * scale
        failed_height = failed * scale
        at = from_ms(minute * 60_000).strftime("%H:%M UTC")
        bars.append(
            Bar(
                x=round(i * slot + 1, 2),
                width=round(slot - 2, 2),
                applied_y=round(plot - applied_height, 2),
                applied_height=round(applied_height, 2),
                failed_y=round(plot - applied_height - failed_height, 2),
                failed_height=round(failed_height, 2),
                title=f"{at}: {applied:,} applied, {failed:,} failed",
            )
        )
    return Chart(
        bars,
        peak,
        sum(r.applied for r in by_minute.values()),
        sum(r.failed for r in by_minute.values()),
    )
