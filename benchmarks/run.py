"""Benchmark: every performance figure in one table (`make bench`).

One run, one machine, one table of figure, value, baseline, ratio and goal:

1. the floor (`floor_sqlite.py`, or `floor_postgres.py` with `--database`) and the
   largest batch (500,000 rows) through a default `profilebase serve` on the same
   file, with the memory high-water mark of every server process;
2. the online routes under wrk beside the same server's `/healthz` (online.py), with
   one HTTP process and with two, and single updates while the largest batch is
   applied;
3. linearity: rows/s of 50,000-, 200,000- and 500,000-row batches, each into a
   fresh database, beside their mean;
4. the largest batch into a database that already holds 5,000,000 profiles (loaded
   through the server: ten largest batches, ids changed per batch), beside the same
   batch into an empty one; then fetches and single updates of random profiles among
   those 5,500,000 under wrk, beside the same server's `/healthz`, and single updates
   again once the client's quota window holds a day of minutes (1,439 minute rows
   added, as a client that updates all day has them).

`--quick` skips 3 and 4 and makes the largest batch 50,000 rows. Every server starts
on a fresh database: SQLite files in a temporary directory, or, with `--database`,
PostgreSQL databases created beside the one the URL names (and dropped at the end).
Figures are printed, never asserted: compare the ratios of one run, machines are noisy.

usage: python benchmarks/run.py [--quick] [--database postgresql://...] [--seconds 10]
                                [--reference ../shared/bench]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import online
from bulk import (
    HERE,
    generate_batch,
    peak_rss_by_process,
    run_floor,
    run_server,
    start_server,
    stop_server,
    time_batch,
)

LARGEST = 500_000
QUICK_LARGEST = 50_000
#: The largest batch's time as a multiple of the floor's, at most, by backend.
FLOOR_GOALS = {"sqlite": 1.3, "postgresql": 1.2}
FLOORS = {"sqlite": "floor_sqlite.py", "postgresql": "floor_postgres.py"}
MET = {None: "", True: "yes", False: "NO"}
MAX_PROCESS_MB = 300
BIG_DATABASE = 5_000_000
#: Lua for wrk: a random id among the 5,000,000 loaded profiles (b0-… to b9-…) and the
#: 500,000 added to them (crm-005000000…).
BIG_IDS = f"""function profile_id()
  local part = math.random(0, {BIG_DATABASE // LARGEST})
  if part == {BIG_DATABASE // LARGEST} then
    return string.format("crm-%09d", {BIG_DATABASE} + math.random(0, {LARGEST - 1}))
  end
  return string.format("b%d-%09d", part, math.random(0, {LARGEST - 1}))
end"""
ATTRIBUTES = 7


def step(text: str) -> None:
    """Say on stderr what the run measures now: a full run takes minutes."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the table; ``met`` is None for a figure without a goal."""

    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    met: bool | None = None


class Databases:
    """A fresh database per measurement: SQLite files in ``workdir``, or PostgreSQL
    databases created beside ``base`` and dropped by ``close``."""

    def __init__(self, base: str | None, workdir: Path) -> None:
        self.base = base
        self.workdir = workdir
        self.created: list[str] = []

    @property
    def kind(self) -> str:
        return "postgresql" if self.base else "sqlite"

    def fresh(self, name: str) -> str:
        if not self.base:
            return f"sqlite:///{self.workdir}/{name}.db"
        import postgres

        database = f"pbbench_{os.getpid()}_{name}"
        self.created.append(database)
        return postgres.create_database(self.base, database)

    def close(self) -> None:
        if self.base:
            import postgres

            for name in self.created:
                postgres.drop_database(self.base, name)


def ratio_row(
    figure: str, value: float, baseline: float, unit: str, goal: str, met: bool | None
) -> Row:
    digits = 2 if unit == "s" else 0
    return Row(
        figure,
        f"{value:,.{digits}f} {unit}",
        f"{baseline:,.{digits}f} {unit}",
        f"{value / baseline:.2f}x",
        goal,
        met,
    )


def batch_rows(
    args: argparse.Namespace, databases: Databases, batch: Path, workdir: Path
) -> tuple[list[Row], dict[str, float]]:
    """The floor and the largest batch beside it, and the memory of the server's processes."""
    step(f"the floor and the largest batch ({batch.stat().st_size / 1e6:.0f} MB)")
    floor_database = databases.fresh("floor") if databases.base else ""
    floor = run_floor(args.reference, batch, workdir, floor_database)
    result = run_server(batch, databases.fresh("largest"), 2, workdir)
    most = FLOOR_GOALS[databases.kind]
    rows = [
        Row(
            f"{FLOORS[databases.kind]}, {result['rows']:,} rows",
            f"{floor:.2f} s",
        ),
        ratio_row(
            f"largest batch ({result['rows']:,} rows), POST to complete",
            result["seconds"],
            floor,
            "s",
            f"<= {most}x floor",
            result["seconds"] <= most * floor and result["successful"] == result["rows"],
        ),
        Row(
            "peak RSS of any server process, largest batch",
            f"{result['peak_mb']:.0f} MB",
            goal=f"<= {MAX_PROCESS_MB} MB",
            met=result["peak_mb"] <= MAX_PROCESS_MB,
        ),
        Row(
            "fetch while the largest batch is applied",
            f"median {result['fetch_median_ms']:.1f} ms, max {result['fetch_max_ms']:.1f} ms",
        ),
    ]
    return rows, result


def online_rows(
    args: argparse.Namespace, databases: Databases, batch: Path, batch_seconds: float, workdir: Path
) -> list[Row]:
    """The online routes with one and with two HTTP processes, and how they grow."""
    rows: list[Row] = []
    rates: dict[int, dict[str, float]] = {}
    for processes in (1, 2):
        step(f"online routes with {processes} HTTP process(es), {args.seconds} s each")
        measured, peak = online.measure(
            databases.fresh(f"online{processes}"),
            workdir,
            args.reference,
            seconds=args.seconds,
            processes=processes,
            during=batch,
            during_seconds=max(2, int(batch_seconds * 0.8)),
        )
        rates[processes] = {name: r.requests_per_second for name, r in measured}
        rows += wrk_rows(measured, f", {processes} process{'es' if processes > 1 else ''}")
        rows.append(
            Row(
                f"peak RSS of any server process, online, {processes} process(es)",
                f"{peak:.0f} MB",
                goal=f"<= {MAX_PROCESS_MB} MB",
                met=peak <= MAX_PROCESS_MB,
            )
        )
    for name in rates[1]:
        if name in rates[2]:
            rows.append(
                Row(
                    f"{name}: req/s, 2 processes vs 1",
                    f"{rates[2][name]:,.0f} req/s",
                    f"{rates[1][name]:,.0f} req/s",
                    f"{rates[2][name] / rates[1][name]:.2f}x",
                )
            )
    return rows


def wrk_rows(measured: list[tuple[str, online.WrkResult]], where: str) -> list[Row]:
    """One row per route measured by wrk, beside the first (``/healthz``), with its goal."""
    healthz = measured[0][1].requests_per_second
    rows = []
    for name, r in measured:
        least, most = online.GOALS.get(name, (None, None))
        ratio = r.requests_per_second / healthz
        met = (
            None
            if name == "GET /healthz"
            else (
                (least is None or ratio >= least)
                and (most is None or r.p99_ms <= most)
                and r.timeouts == 0
                and r.errors == 0
            )
        )
        goal = online.goal_text(name)
        rows.append(
            Row(
                f"{name}{where}",
                f"{r.requests_per_second:,.0f} req/s, p99 {r.p99_ms:.1f} ms, "
                f"{r.errors} errors, {r.timeouts} t/o",
                "" if name == "GET /healthz" else f"{healthz:,.0f} req/s",
                "" if name == "GET /healthz" else f"{ratio:.2f}x",
                goal + (", no errors or t/o" if goal else ""),
                met,
            )
        )
    return rows


def linearity_rows(
    args: argparse.Namespace, databases: Databases, largest: dict[str, float], workdir: Path
) -> list[Row]:
    """rows/s of 50,000, 200,000 and 500,000 rows, each beside the mean of the three."""
    rates = {}
    for rows in (50_000, 200_000):
        step(f"linearity: a {rows:,}-row batch")
        batch = generate_batch(args.reference, rows, ATTRIBUTES, workdir)
        rates[rows] = run_server(batch, databases.fresh(f"linear{rows}"), 2, workdir)[
            "rows_per_second"
        ]
    rates[LARGEST] = largest["rows_per_second"]
    mean = statistics.mean(rates.values())
    return [
        ratio_row(
            f"rows/s of a {rows:,}-row batch",
            rate,
            mean,
            "rows/s",
            "0.8x-1.2x of the mean",
            0.8 <= rate / mean <= 1.2,
        )
        for rows, rate in rates.items()
    ]


def big_database_rows(
    args: argparse.Namespace, databases: Databases, largest: dict[str, float], workdir: Path
) -> list[Row]:
    """Load 5,000,000 profiles through the server, then time the largest batch (new ids)."""
    step(f"loading {BIG_DATABASE:,} profiles, then {LARGEST:,} more")
    batch = generate_batch(args.reference, LARGEST, ATTRIBUTES, workdir)
    body = batch.read_bytes()
    big = databases.fresh("big")
    process, url = start_server(big, 2, workdir / "big.log", rows_per_day=str(BIG_DATABASE * 2))
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            started = time.perf_counter()
            for part in range(BIG_DATABASE // LARGEST):  # ids crm-… become b0-…, b1-…
                time_batch(http, body.replace(b"\ncrm-", b"\nb%d-" % part))
            loaded = time.perf_counter() - started
            fresh = generate_batch(args.reference, LARGEST, ATTRIBUTES, workdir, BIG_DATABASE)
            result = time_batch(http, fresh)
        step(f"online routes into {BIG_DATABASE + LARGEST:,} profiles, {args.seconds} s each")
        online_results = [
            (name, online.run_wrk(url, online.ROUTES[name], LARGEST, args.seconds, 32, BIG_IDS))
            for name in ("GET /healthz", "fetch by thirdPartyId", "single update")
        ]
        # A client that updates all day has a day of minutes in its quota's window.
        online.add_a_day_of_updates(big)
        after_a_day = online.run_wrk(
            url, online.ROUTES["single update"], LARGEST, args.seconds, 32, BIG_IDS
        )
        online_results.append(("single update after a day of updates", after_a_day))
        peak = max(peak_rss_by_process(process.pid).values())
    finally:
        stop_server(process)
    return [
        Row(
            f"loading {BIG_DATABASE:,} profiles through the server",
            f"{loaded:.0f} s, {BIG_DATABASE / loaded:,.0f} rows/s",
        ),
        ratio_row(
            f"rows/s of {LARGEST:,} new rows into {BIG_DATABASE:,} profiles",
            result["rows_per_second"],
            largest["rows_per_second"],
            "rows/s",
            ">= 0.8x of an empty database",
            result["rows_per_second"] >= 0.8 * largest["rows_per_second"],
        ),
        *wrk_rows(online_results, f", {(BIG_DATABASE + LARGEST) / 1e6:g}M profiles"),
        Row(
            "peak RSS of any server process, 5M run",
            f"{peak:.0f} MB",
            goal=f"<= {MAX_PROCESS_MB} MB",
            met=peak <= MAX_PROCESS_MB,
        ),
    ]


def print_table(rows: list[Row]) -> None:
    heads = ("figure", "value", "baseline", "ratio", "goal", "met")
    cells = [(r.figure, r.value, r.baseline, r.ratio, r.goal, MET[r.met]) for r in rows]
    widths = [max(len(c[i]) for c in [heads, *cells]) for i in range(len(heads))]
    for line in [heads, tuple("-" * w for w in widths), *cells]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small largest batch; no 3, 4")
    parser.add_argument(
        "--database",
        default=None,
        help="postgresql://... : measure on PostgreSQL, in databases created beside this one",
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk's seconds per route")
    parser.add_argument("--reference", type=Path, default=HERE.parent.parent / "shared" / "bench")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (Debian's package)")
    if args.database and not args.database.startswith("postgres"):
        raise SystemExit("--database takes a postgresql:// URL; SQLite is the default")
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="profilebase-bench-"))
    databases = Databases(args.database, workdir)
    try:
        largest_rows = QUICK_LARGEST if args.quick else LARGEST
        batch = generate_batch(args.reference, largest_rows, ATTRIBUTES, workdir)
        rows, largest = batch_rows(args, databases, batch, workdir)
        rows += online_rows(args, databases, batch, largest["seconds"], workdir)
        if not args.quick:
            rows += linearity_rows(args, databases, largest, workdir)
            rows += big_database_rows(args, databases, largest, workdir)
    finally:
        databases.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"profilebase benchmark on {databases.kind}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{'quick' if args.quick else 'full'} run of {time.perf_counter() - started:.0f} s"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
