"""Benchmark: importing profiles from JSON lines beside a batch of the same size, in one run.

Starts `profilebase serve` on a fresh SQLite database with two clients, posts a v2
batch of N rows (7 attributes) to the first and waits until it is `complete`, exports
that client as JSON lines (every profile with its ids and times, what `profilebase
export` writes), then imports the file into the second client with the SDK
(`Client.import_profiles`: parts within the server's limits, followed to the end).
Prints both rates. Machines are noisy: compare figures of one run.

usage: python benchmarks/import.py [--rows 100000] [--workers 2]
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

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bulk import start_server  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        database = f"sqlite:///{work}/bench.db"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "profilebase",
                "clients",
                "create",
                "copy",
                "--database",
                database,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ},
        )
        process, url = start_server(database, args.workers, work / "server.log")
        try:
            body = batch_body(args.rows)
            with httpx.Client(base_url=url, timeout=600) as http:
                start = time.perf_counter()
                http.post("/m2/demo/v2/profile/batchUpdate", content=body).raise_for_status()
                with Client(url, "demo", poll_interval=0.05) as demo:
                    batch_id = demo.list_batches()[0].batch_id
                    demo.wait(batch_id)
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
    mb = len(exported.getvalue()) / 1e6
    print(
        f"batch : {args.rows:,} rows, {len(body) / 1e6:.1f} MB, {batch_seconds:.2f} s, "
        f"{args.rows / batch_seconds:,.0f} rows/s"
    )
    print(
        f"import: {result.rows:,} profiles, {mb:.1f} MB in {len(result.batch_ids)} part(s), "
        f"{import_seconds:.2f} s, {result.rows / import_seconds:,.0f} profiles/s "
        f"(applied {result.applied:,}, failed {result.failed:,})"
    )
    print(f"import / batch speed: {batch_seconds / import_seconds:.2f}x")


if __name__ == "__main__":
    main()
