"""Benchmark on PostgreSQL: the largest batch with 1, 2 and 4 worker processes, beside the floor.

For each worker count, on a fresh database: an API-only server (`serve --workers 0`)
and `profilebase worker --concurrency N` start, the reference batch (500,000 rows,
7 attributes, about 47 MB) is posted, and the status is polled until `complete`
(bulk.py's measurement). Then `floor_postgres.py` loads the same file into another
fresh database. Machines are noisy: compare figures of one run.

usage: python benchmarks/postgres.py [--rows 500000] [--workers 1,2,4]
           [--url postgresql://root@127.0.0.1:5432/test] [--reference ../shared/bench]
           [--no-floor]
The URL names a database to connect to for creating and dropping the benchmark's own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import bulk
import psycopg
from bulk import HERE, generate_batch, run_server


def create_database(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        db.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


def drop_database(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def start_workers(database: str, count: int, log: Path) -> subprocess.Popen[bytes]:
    """`profilebase worker --concurrency count`, once all its processes have started."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "profilebase", "worker", "--concurrency", str(count)],
            env={**os.environ, "PROFILEBASE_DATABASE": database},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while log.read_text().count(" started") < count:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit(f"workers did not start; see {log}")
        time.sleep(0.05)
    return process


def run(batch: Path, url: str, workers: int, workdir: Path) -> dict[str, float]:
    name = f"pbbench_{os.getpid()}_{workers}"
    database = create_database(url, name)
    pool = None
    try:
        subprocess.run(
            [sys.executable, "-m", "profilebase", "migrate", "--database", database],
            check=True,
            capture_output=True,
        )
        pool = start_workers(database, workers, workdir / f"workers-{workers}.log")
        return run_server(batch, database, 0, workdir)
    finally:
        if pool is not None:
            pool.send_signal(signal.SIGTERM)
            try:
                pool.wait(60)
            except subprocess.TimeoutExpired:
                pool.kill()
        drop_database(url, name)


def run_floor(reference: Path, batch: Path, url: str) -> float:
    name = f"pbbench_{os.getpid()}_floor"
    database = create_database(url, name)
    try:
        return bulk.run_floor(reference, batch, Path(tempfile.gettempdir()), database)
    finally:
        drop_database(url, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--attrs", type=int, default=7)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts to measure")
    parser.add_argument("--url", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--reference", type=Path, default=HERE.parent.parent / "shared" / "bench")
    parser.add_argument("--no-floor", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="profilebase-bench-"))
    try:
        batch = generate_batch(args.reference, args.rows, args.attrs, workdir)
        size_mb = batch.stat().st_size / 1e6
        print(f"batch: {args.rows:,} rows, {size_mb:.1f} MB, {args.attrs} attributes")
        for workers in [int(n) for n in args.workers.split(",")]:
            result = run(batch, args.url, workers, workdir)
            print(
                f"profilebase on PostgreSQL, {workers} worker process(es): "
                f"POST->complete {result['seconds']:.2f} s "
                f"(upload+accept {result['accept_seconds']:.2f} s), "
                f"{result['rows_per_second']:,.0f} rows/s, "
                f"fetch while applying: median {result['fetch_median_ms']:.1f} ms, "
                f"max {result['fetch_max_ms']:.1f} ms",
                flush=True,
            )
        if not args.no_floor:
            print(f"floor_postgres: {run_floor(args.reference, batch, args.url):.2f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
