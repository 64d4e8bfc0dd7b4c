"""Benchmark: the largest batch, from POST to `complete`, beside the floor, in one run.

Generates the reference workload (500,000 rows, 7 attributes, about 47 MB) with
the reference generator, starts `profilebase serve` on a fresh database, posts
the file, polls the status until `complete`, and prints the elapsed time, rows/s
and the server's peak memory (VmHWM). Then it runs the floor script on the same
file and prints the ratio. Machines are noisy: compare figures of one run.

usage: python benchmarks/bulk.py [--rows 500000] [--workers 2] [--database URL]
                                 [--reference ../shared/bench] [--no-floor]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
#: Seconds between two polls of a batch's status (each with a fetch).
POLL_SECONDS = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process it started, and they started, from /proc."""
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        try:
            task = Path(f"/proc/{found[-1]}/task/{found[-1]}/children")
            todo.extend(int(child) for child in task.read_text().split())
        except OSError:  # it exited meanwhile
            continue
    return found


def peak_rss_by_process(pid: int) -> dict[int, float]:
    """The memory high-water mark (MB) of the server and each of its processes."""
    peaks = {}
    for each in descendants(pid):
        try:
            peaks[each] = peak_rss_mb(each)
        except OSError:  # it exited meanwhile
            continue
    return peaks


def start_server(
    database: str, workers: int, log: Path, **settings: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`profilebase serve` on a free port, once it answers /healthz; ``settings`` are more
    PROFILEBASE_* variables (by setting name)."""
    port = free_port()
    env = {**os.environ, "PROFILEBASE_DATABASE": database, "PROFILEBASE_WORKERS": str(workers)}
    env.update({"PROFILEBASE_" + name.upper(): value for name, value in settings.items()})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "profilebase",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"server did not start; see {log}")


def time_batch(http: httpx.Client, batch: Path | bytes) -> dict[str, float]:
    """Post ``batch`` and poll its status until `complete`, fetching a profile between polls
    (a fetch while the batch is applied must not wait behind it); return the figures."""
    start = time.perf_counter()
    if isinstance(batch, bytes):
        response = http.post("/m2/demo/v2/profile/batchUpdate", content=batch)
    else:
        with batch.open("rb") as body:
            response = http.post("/m2/demo/v2/profile/batchUpdate", content=body)
    accepted = time.perf_counter() - start
    match = re.search(r"batchId=([^<&]+)", response.text)
    if response.status_code != 200 or not match:
        raise SystemExit(f"batch refused: {response.status_code} {response.text}")
    batch_id = match.group(1)
    fetches: list[float] = []
    while True:
        status = http.get(
            "/m2/demo/profile/batchStatus", params={"batchId": batch_id, "showDetails": "true"}
        ).text
        if "<status>complete</status>" in status:
            break
        asked = time.perf_counter()
        http.get("/rest/v1/profiles/thirdPartyId/crm-000000001", params={"client": "demo"})
        fetches.append(time.perf_counter() - asked)
        # Polled often: the time counted runs to the first poll that finds it complete, and
        # a 50,000-row batch takes under half a second.
        time.sleep(POLL_SECONDS)
    elapsed = time.perf_counter() - start
    rows = int(re.search(r"<batchSize>(\d+)</batchSize>", status).group(1))  # type: ignore[union-attr]
    ok = int(re.search(r"<successfulUpdates>(\d+)<", status).group(1))  # type: ignore[union-attr]
    return {
        "rows": rows,
        "successful": ok,
        "accept_seconds": accepted,
        "seconds": elapsed,
        "rows_per_second": rows / elapsed,
        "fetches": len(fetches),
        "fetch_max_ms": 1000 * max(fetches, default=0.0),
        "fetch_median_ms": 1000 * sorted(fetches)[len(fetches) // 2] if fetches else 0.0,
    }


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an operator would; SIGKILL if it has not stopped within a minute."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def run_server(
    batch: Path, database: str, workers: int, workdir: Path, **settings: str
) -> dict[str, float]:
    """Post ``batch`` to a new server and wait for `complete`; ``settings`` as start_server's.
    ``peak_mb`` is the largest high-water mark of any of the server's processes."""
    process, url = start_server(database, workers, workdir / "server.log", **settings)
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            result = time_batch(http, batch)
        return {**result, "peak_mb": max(peak_rss_by_process(process.pid).values())}
    finally:
        stop_server(process)


def run_floor(reference: Path, batch: Path, workdir: Path, database: str = "") -> float:
    """Seconds of the floor on ``batch``: floor_sqlite.py, or floor_postgres.py into
    ``database`` (a PostgreSQL URL of a fresh database)."""
    script, target = ("floor_sqlite.py", str(workdir / "floor.db"))
    if database.startswith("postgres"):
        script, target = ("floor_postgres.py", database)
    out = subprocess.run(
        [sys.executable, str(reference / script), str(batch), target],
        capture_output=True,
        text=True,
        check=True,
        cwd=reference,
    ).stdout
    return float(re.search(r"seconds=([\d.]+)", out).group(1))  # type: ignore[union-attr]


def generate_batch(
    reference: Path, rows: int, attrs: int, workdir: Path, id_offset: int = 0
) -> Path:
    """Write the reference workload with the reference generator (ids from ``id_offset``);
    return the file, which is kept for the next call with the same arguments."""
    generator = reference / "gen_batch.py"
    if not generator.exists():
        raise SystemExit(f"reference workload not found at {generator}; pass --reference DIR")
    batch = workdir / f"batch-{rows}-{attrs}-{id_offset}.txt"
    if not batch.exists():
        command = [sys.executable, str(generator), str(rows), str(batch), "--attrs", str(attrs)]
        subprocess.run([*command, "--id-offset", str(id_offset)], check=True)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--attrs", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--reference", type=Path, default=HERE.parent.parent / "shared" / "bench")
    parser.add_argument("--no-floor", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="profilebase-bench-"))
    from run import Databases  # here: run.py imports this module

    databases = Databases(args.database, workdir)  # fresh ones, dropped at the end
    try:
        batch = generate_batch(args.reference, args.rows, args.attrs, workdir)
        size_mb = batch.stat().st_size / 1e6
        database = databases.fresh("bulk")
        result = run_server(batch, database, args.workers, workdir)
        print(f"batch: {result['rows']:,} rows, {size_mb:.1f} MB, {args.attrs} attributes")
        print(
            f"profilebase ({args.workers} workers, {database.split(':')[0]}): "
            f"POST->complete {result['seconds']:.2f} s "
            f"(upload+accept {result['accept_seconds']:.2f} s), "
            f"{result['rows_per_second']:,.0f} rows/s, "
            f"peak server memory {result['peak_mb']:.0f} MB"
        )
        print(
            f"fetches during ingestion: {result['fetches']}, "
            f"median {result['fetch_median_ms']:.1f} ms, max {result['fetch_max_ms']:.1f} ms"
        )
        if not args.no_floor:
            floor = run_floor(args.reference, batch, workdir, databases.fresh("floor"))
            print(f"floor_{databases.kind.removesuffix('ql')}: {floor:.2f} s")
            print(f"ratio profilebase/floor: {result['seconds'] / floor:.2f}x")
    finally:
        databases.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
