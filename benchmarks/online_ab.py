"""Benchmark: two source trees' online routes side by side, runs interleaved.

On a machine shared with other work, two runs of `online.py` minutes apart see different
loads. This starts one server from each tree (`--before SRC`, `--after SRC`: the `src`
folders; default after: this checkout's), on fresh databases seeded alike (SQLite files, or
with `--database` PostgreSQL databases created beside that one and dropped), then runs
wrk on each route against one and the other in turn (before, after, after, before, …),
`--rounds` times, and prints the median of each: requests/s, ratio to the same server's
`/healthz` measured in the same round, p99. Figures are printed, never asserted.

usage: python benchmarks/online_ab.py --before /path/to/old/src [--after src] [--rounds 3]
                                      [--seconds 3] [--processes N] [--profiles 10000]
                                      [--database postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import httpx
from bulk import HERE, start_server, stop_server
from online import ROUTES, WrkResult, run_wrk, seed
from run import Databases


def started(
    src: Path,
    workdir: Path,
    name: str,
    processes: int | None,
    reference: Path,
    profiles: int,
    database: str,
):
    """A server running the code of ``src`` on ``database``, seeded with ``profiles``
    profiles."""
    extra = {"processes": str(processes)} if processes else {}
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src)
    try:
        process, url = start_server(database, 2, workdir / f"{name}.log", **extra)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    with httpx.Client(base_url=url, timeout=600) as http:
        seed(http, reference, profiles, workdir)
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=HERE.parent / "src")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--reference", type=Path, default=HERE.parent.parent / "shared" / "bench")
    parser.add_argument(
        "--database",
        default=None,
        help="postgresql://... : both servers on PostgreSQL, in databases created beside "
        "this one and dropped (default: fresh SQLite files)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="profilebase-online-ab-"))
    databases = Databases(args.database, workdir)
    servers = {}
    results: dict[tuple[str, str], list[tuple[WrkResult, float]]] = {}
    try:
        for name, src in (("before", args.before), ("after", args.after)):
            servers[name] = started(
                src.resolve(),
                workdir,
                name,
                args.processes,
                args.reference,
                args.profiles,
                databases.fresh(name),
            )
        for round_no in range(args.rounds):
            order = ["before", "after"] if round_no % 2 == 0 else ["after", "before"]
            for route, script in ROUTES.items():
                for name in order:
                    url = servers[name][1]
                    if route == "GET /healthz":
                        health = run_wrk(url, script, args.profiles, args.seconds, args.connections)
                        results.setdefault((name, route), []).append((health, 1.0))
                        continue
                    result = run_wrk(url, script, args.profiles, args.seconds, args.connections)
                    healthz = results[(name, "GET /healthz")][-1][0].requests_per_second
                    results.setdefault((name, route), []).append(
                        (result, result.requests_per_second / healthz)
                    )
    finally:
        for process, _ in servers.values():
            stop_server(process)
        databases.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{databases.kind}, {args.rounds} rounds interleaved, {args.seconds} s per route, "
        f"{args.connections} connections, processes {args.processes or 'default'}; medians"
    )
    print(f"{'route':<24} {'before: req/s ratio p99 ms':>30} {'after: req/s ratio p99 ms':>30}")
    for route in ROUTES:
        cells = []
        for name in ("before", "after"):
            runs = results[(name, route)]
            rate = statistics.median(r.requests_per_second for r, _ in runs)
            ratio = statistics.median(ratio for _, ratio in runs)
            p99 = statistics.median(r.p99_ms for r, _ in runs)
            cells.append(f"{rate:>9,.0f} {ratio:>5.2f}x {p99:>8.1f}")
        print(f"{route:<24} {cells[0]:>30} {cells[1]:>30}")


if __name__ == "__main__":
    main()
