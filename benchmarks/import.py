"""Benchmark: importing profiles from JSON lines beside a batch of the same size, in one run.

Starts `profilebase serve` on a fresh database (SQLite, or PostgreSQL with `--database`),
posts a v2 batch of N rows (7 attributes) to a client and waits until it is `complete`, exports
that client as JSON lines (every profile with its ids and times, what `profilebase
export` writes), then imports the file into another client with the SDK
(`Client.import_profiles`: parts within the server's limits, followed to the end).
Each round does this with two new clients; it prints both rates of each round and of the
median round. Machines are noisy: compare figures of one run.

usage: python benchmarks/import.py [--rows 100000] [--workers 2] [--rounds 3] [--database URL]
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
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bulk import start_server  # noqa: E402
from postgres import create_database, drop_database  # noqa: E402

from profilebase import Client, batchfile  # noqa: E402
from profilebase.client.imports import ImportResult  # noqa: E402

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


def run(database: str, rows: int, workers: int, rounds: int, work: Path) -> list[Round]:
    """Each round: time a batch into a new client, then the import of its export into
    another new client."""
    for code in [f"{kind}{n}" for n in range(1, rounds + 1) for kind in ("demo", "copy")]:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "profilebase",
                "clients",
                "create",
                code,
                "--database",
                database,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ},
        )
    process, url = start_server(database, workers, work / "server.log")
    results = []
    try:
        for number in range(1, rounds + 1):
            with httpx.Client(base_url=url, timeout=600) as http:
                start = time.perf_counter()
                http.post(
                    f"/m2/demo{number}/v2/profile/batchUpdate", content=batch_body(rows)
                ).raise_for_status()
                with Client(url, f"demo{number}", poll_interval=0.05) as demo:
                    demo.wait(demo.list_batches()[0].batch_id)
                    batch_seconds = time.perf_counter() - start
                    exported = io.BytesIO()
                    demo.export_profiles(exported)
            source = work / "demo.jsonl"
            source.write_bytes(exported.getvalue())
            with Client(url, f"copy{number}", poll_interval=0.05) as copy:
                start = time.perf_counter()
                result = copy.import_profiles(source)
                import_seconds = time.perf_counter() - start
            results.append(Round(batch_seconds, import_seconds, result, len(exported.getvalue())))
            report(rows, results[-1], f"round {number}")
    finally:
        process.terminate()
        process.wait(30)
    return results


@dataclass(frozen=True)
class Round:
    batch_seconds: float
    import_seconds: float
    result: ImportResult
    size: int

    @property
    def ratio(self) -> float:
        return self.batch_seconds / self.import_seconds


def report(rows: int, done: Round, title: str) -> None:
    print(
        f"{title}: batch {rows:,} rows, {len(batch_body(rows)) / 1e6:.1f} MB, "
        f"{done.batch_seconds:.2f} s, {rows / done.batch_seconds:,.0f} rows/s; "
        f"import {done.result.rows:,} profiles, {done.size / 1e6:.1f} MB in "
        f"{len(done.result.batch_ids)} part(s), {done.import_seconds:.2f} s, "
        f"{done.result.rows / done.import_seconds:,.0f} profiles/s "
        f"(applied {done.result.applied:,}, failed {done.result.failed:,}); "
        f"import / batch speed {done.ratio:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="batch and import pairs to time")
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
            rounds = run(database, args.rows, args.workers, args.rounds, work)
        finally:
            if args.database:
                drop_database(args.database, name)
    middle = sorted(rounds, key=lambda r: r.ratio)[len(rounds) // 2]
    print(f"{database.split(':')[0]}, {args.workers} worker(s), the median round by speed ratio:")
    report(args.rows, middle, "median")


if __name__ == "__main__":
    main()
