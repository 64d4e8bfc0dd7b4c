"""Benchmark: importing profiles from JSON lines beside a batch of the same size, in one run.

Starts `profilebase serve` on a fresh database (SQLite, or PostgreSQL with `--database`)
with two clients, posts a v2
batch of N rows (7 attributes) to the first and waits until it is `complete`, exports
that client as JSON lines (every profile with its ids and times, what `profilebase
export` writes), then imports the file into the second client with the SDK
(`Client.import_profiles`: parts within the server's limits, followed to the end).
Prints both rates. Machines are noisy: compare figures of one run.

usage: python benchmarks/import.py [--rows 100000] [--workers 2] [--database URL]
With a PostgreSQL URL, the benchmark creates a database of its own on that server, and drops it.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bulk import start_server  # noqa: E402
from postgres import create_database, drop_database  # noqa: E402

from profilebase import Client, batchfile  # noqa: E402

NAMES = ["tier", "city", "segment", "score", "language", "device", "newsletter"]


def batch_body(rows: int) -> bytes:
    return batchfile.encode(
        "thirdPartyId",
        NAMES,
        (
            [f"crm-{i:07d}", "gold", "München", f"s{i % 40}", str(i % 997), "de", "mobile", "yes"]
            for i in range(rows)
        ),
    )


def run(database: str, rows: int, workers: int, work: Path) -> tuple[float, float, Any, int]:
    """Time the batch, then the import of its export; (batch s, import s, result, bytes)."""
    subprocess.run(
        [sys.executable, "-m", "profilebase", "clients", "create", "copy", "--database", database],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ},
    )
    process, url = start_server(database, workers, work / "server.log")
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            start = time.perf_counter()
            http.post(
                "/m2/demo/v2/profile/batchUpdate", content=batch_body(rows)
            ).raise_for_status()
            with Client(url, "demo", poll_interval=0.05) as demo:
                demo.wait(demo.list_batches()[0].batch_id)
                batch_seconds = time.perf_counter() - start
                exported = io.BytesIO()
                demo.export_profiles(exported)
        source = work / "demo.jsonl"
        source.write_bytes(exported.getvalue())
        with Client(url, "copy", poll_interval=0.05) as copy:
            start = time.perf_counter()
            result = copy.import_profiles(source)
            import_seconds = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(30)
    return batch_seconds, import_seconds, result, len(exported.getvalue())


def report(
    rows: int,
    workers: int,
    database: str,
    batch_seconds: float,
    import_seconds: float,
    result: Any,
    size: int,
) -> None:
    print(f"{database.split(':')[0]}, {workers} worker(s)")
    print(
        f"batch : {rows:,} rows, {len(batch_body(rows)) / 1e6:.1f} MB, {batch_seconds:.2f} s, "
        f"{rows / batch_seconds:,.0f} rows/s"
    )
    print(
        f"import: {result.rows:,} profiles, {size / 1e6:.1f} MB in {len(result.batch_ids)} "
        f"part(s), {import_seconds:.2f} s, {result.rows / import_seconds:,.0f} profiles/s "
        f"(applied {result.applied:,}, failed {result.failed:,})"
    )
    print(f"import / batch speed: {batch_seconds / import_seconds:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--database",
        default=None,
        help="a PostgreSQL URL to create the benchmark's database on; default: a SQLite file",
    )
    args = parser.parse_args()
    name = f"pbbench_import_{os.getpid()}"
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        database = f"sqlite:///{work}/bench.db"
        if args.database:
            database = create_database(args.database, name)
        try:
            rates = run(database, args.rows, args.workers, work)
        finally:
            if args.database:
                drop_database(args.database, name)
    report(args.rows, args.workers, database, *rates)


if __name__ == "__main__":
    main()
