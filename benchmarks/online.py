"""Benchmark: the online routes under wrk, beside the same server's /healthz, in one run.

Starts `profilebase serve` on a fresh database (SQLite by default, `--database` for
PostgreSQL), loads `--profiles` profiles with one batch from the reference generator,
then runs wrk (32 connections, `--seconds` per route) against `/healthz`, a fetch by
thirdPartyId (twice: the second run finds the replies the first left kept), a single
profile update and a page call (`/rest/v1/delivery`), each on random profiles, and prints
one table: requests/s, ratio to `/healthz`, p99 latency, errors and time-outs. With
`--during-batch` it also measures single updates while the largest batch is applied.
Figures are printed, never asserted: compare ratios of one run.

usage: python benchmarks/online.py [--database URL] [--profiles 10000] [--seconds 10]
                                   [--connections 32] [--during-batch] [--processes N]
wrk comes from Debian's packages (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from bulk import HERE, generate_batch, peak_rss_by_process, start_server, stop_server

#: Lua for wrk: each request names a random profile (``profile_id``, defined by ``run_wrk``).
ROUTES = {
    "GET /healthz": 'request = function() return wrk.format("GET", "/healthz") end',
    "fetch by thirdPartyId": """
request = function()
  local id = profile_id()
  return wrk.format("GET", "/rest/v1/profiles/thirdPartyId/" .. id .. "?client=demo")
end""",
    "single update": """
counter = 0
request = function()
  counter = counter + 1
  local id = profile_id()
  return wrk.format("GET", "/m2/demo/profile/update?mbox3rdPartyId=" .. id ..
    "&profile.visits=" .. counter .. "&profile.source=bench")
end""",
    "page call": """
counter = 0
request = function()
  counter = counter + 1
  local id = profile_id()
  local body = '{"context":{"channel":"web"},"id":{"thirdPartyId":"' .. id .. '"},' ..
    '"execute":{"pageLoad":{"profileParameters":{"lastPage":"p' .. counter .. '"}}}}'
  return wrk.format("POST", "/rest/v1/delivery?client=demo&sessionId=s" .. counter,
    {["Content-Type"] = "application/json"}, body)
end""",
}
FETCH = "fetch by thirdPartyId"
#: The same fetches right after the first run, nothing written in between: each HTTP
#: process sends the replies it kept again (fetch_cache_mb, SQLite), where the first run
#: reads most profiles for the first time.
FETCH_AGAIN = "fetch by thirdPartyId, again"
#: The goals of the online path: (least ratio to /healthz, most p99 in ms).
GOALS = {
    FETCH: (0.7, 15.0),
    FETCH_AGAIN: (0.7, 15.0),
    "single update": (0.5, 25.0),
    "page call": (0.5, 25.0),
    "single update during the largest batch": (None, 100.0),
    "single update after a day of updates": (0.5, 25.0),
}


def add_a_day_of_updates(database: str, client: str = "demo") -> None:
    """Count one single update in each minute of the last day for ``client``, as a client
    that updates all day has them: the quota's window then holds 1,440 minute rows."""
    now_minute = int(time.time() * 1000) // 60_000
    rows = [(now_minute - m,) for m in range(1, 1440)]
    insert = "INSERT INTO update_counts (client_id, minute, updates) VALUES ({0}, {1}, 1) "
    insert += "ON CONFLICT (client_id, minute) DO NOTHING"
    if database.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database.removeprefix("sqlite:///"), timeout=60) as db:
            (client_id,) = db.execute("SELECT id FROM clients WHERE code = ?", (client,)).fetchone()
            db.executemany(insert.format(client_id, "?"), rows)
        return
    import psycopg

    with psycopg.connect(database, autocommit=True) as db:
        (client_id,) = db.execute("SELECT id FROM clients WHERE code = %s", (client,)).fetchone()
        with db.cursor() as cursor:
            cursor.executemany(insert.format(client_id, "%s"), rows)


@dataclass
class WrkResult:
    requests_per_second: float
    p99_ms: float
    errors: int
    timeouts: int


def parse_duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


#: Lua: a random id of the profiles one batch of the reference generator loaded.
SEEDED_IDS = (
    'function profile_id() return string.format("crm-%09d", math.random(0, PROFILES - 1)) end'
)


def run_wrk(
    url: str,
    script: str,
    profiles: int,
    seconds: int,
    connections: int,
    ids: str = SEEDED_IDS,
) -> WrkResult:
    """Run wrk on one route; ``ids`` is Lua defining ``profile_id()``, the id each request
    names."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(f"PROFILES = {profiles}\nmath.randomseed(os.time())\n{ids}\n{script}\n")
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(lua.name)
    rate_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99_match = re.search(r"99%\s+(\d\S*)", out)
    if not rate_match or not p99_match:
        raise SystemExit(f"wrk printed no rate or latency for {url}:\n{out}")
    rate = float(rate_match.group(1))
    p99 = parse_duration_ms(p99_match.group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return WrkResult(
        rate,
        p99,
        errors + (int(non_2xx.group(1)) if non_2xx else 0),
        int(timeouts.group(1)) if timeouts else 0,
    )


def post_batch(http: httpx.Client, batch: Path) -> str:
    with batch.open("rb") as body:
        response = http.post("/m2/demo/v2/profile/batchUpdate", content=body)
    match = re.search(r"batchId=([^<&]+)", response.text)
    if response.status_code != 200 or not match:
        raise SystemExit(f"batch refused: {response.status_code} {response.text}")
    return match.group(1)


def wait_complete(http: httpx.Client, batch_id: str) -> None:
    while True:
        status = http.get("/m2/demo/profile/batchStatus", params={"batchId": batch_id}).text
        if "<status>complete</status>" in status:
            return
        time.sleep(0.2)


def seed(http: httpx.Client, reference: Path, profiles: int, workdir: Path) -> None:
    """Load ``profiles`` profiles (crm-000000000…) with one batch of the reference generator."""
    wait_complete(http, post_batch(http, generate_batch(reference, profiles, 7, workdir)))


def measure(
    database: str,
    workdir: Path,
    reference: Path,
    profiles: int = 10_000,
    seconds: int = 10,
    connections: int = 32,
    processes: int | None = None,
    during: Path | None = None,
    during_seconds: int | None = None,
) -> tuple[list[tuple[str, WrkResult]], float]:
    """Start a server (``processes`` HTTP processes, two batch workers) on ``database``, seed
    it, run wrk on each route; with ``during``, single updates while that batch is applied
    (for ``during_seconds``, default ``seconds``). Return the rows and the largest memory
    high-water mark (MB) of any of the server's processes."""
    extra = {"processes": str(processes)} if processes else {}
    process, url = start_server(database, 2, workdir / "server.log", **extra)
    rows: list[tuple[str, WrkResult]] = []
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            seed(http, reference, profiles, workdir)
            for name, script in ROUTES.items():
                rows.append((name, run_wrk(url, script, profiles, seconds, connections)))
                if name == FETCH:  # again, with the replies the first run left kept
                    rows.append((FETCH_AGAIN, run_wrk(url, script, profiles, seconds, connections)))
            if during is not None:
                batch_id = post_batch(http, during)
                result = run_wrk(
                    url, ROUTES["single update"], profiles, during_seconds or seconds, connections
                )
                rows.append(("single update during the largest batch", result))
                wait_complete(http, batch_id)
        peak = max(peak_rss_by_process(process.pid).values())
    finally:
        stop_server(process)
    return rows, peak


def goal_text(name: str) -> str:
    least, most = GOALS.get(name, (None, None))
    parts = (f">= {least}x" if least else "", f"p99 <= {most:g} ms" if most else "")
    return ", ".join(part for part in parts if part)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", type=int, default=None, help="HTTP processes of serve")
    parser.add_argument("--during-batch", action="store_true")
    parser.add_argument("--reference", type=Path, default=HERE.parent.parent / "shared" / "bench")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk (Debian's package)")
    workdir = Path(tempfile.mkdtemp(prefix="profilebase-online-"))
    database = args.database or f"sqlite:///{workdir}/bench.db"
    try:
        largest = generate_batch(args.reference, 500_000, 7, workdir) if args.during_batch else None
        rows, peak = measure(
            database,
            workdir,
            args.reference,
            args.profiles,
            args.seconds,
            args.connections,
            args.processes,
            largest,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    healthz = rows[0][1].requests_per_second
    print(
        f"database: {database.split(':')[0]}, {args.profiles:,} profiles, "
        f"{args.connections} connections, {args.seconds} s per route"
    )
    print(f"{'route':<40} {'req/s':>9} {'ratio':>6} {'p99 ms':>8} {'errors':>7} {'t/o':>5}  goal")
    for name, r in rows:
        print(
            f"{name:<40} {r.requests_per_second:>9,.0f} {r.requests_per_second / healthz:>5.2f}x "
            f"{r.p99_ms:>8.1f} {r.errors:>7} {r.timeouts:>5}  {goal_text(name)}"
        )
    print(f"peak server memory (largest process): {peak:.0f} MB")


if __name__ == "__main__":
    main()
