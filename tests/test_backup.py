"""`profilebase backup`: a consistent copy of a live SQLite database taken while a batch is
applied; restored, it serves the same profiles and completes the batch."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import LiveServer

from profilebase.cli import main
from profilebase.models import BatchState, Limits, now_ms
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings
from profilebase.server.storage import open_store
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

ROWS = 8000
LIMITS = Limits(
    max_batch_bytes=10**9, max_batch_rows=10**7, rows_per_day=10**9, max_profile_bytes=10**7
)


def state_of(path: Path) -> tuple[int, int, int]:
    """(profiles, rows the batch consumed, rows of its done units) in a database file."""
    with sqlite3.connect(path) as db:
        profiles = db.execute("SELECT count(*) FROM profiles").fetchone()[0]
        consumed = db.execute("SELECT coalesce(sum(consumed), 0) FROM batch_units").fetchone()[0]
        done = db.execute(
            "SELECT coalesce(sum(row_count), 0) FROM batch_units WHERE state = 'done'"
        ).fetchone()[0]
    return int(profiles), int(consumed), int(done)


def test_backup_while_a_batch_is_applied_restores_and_completes(tmp_path: Path):
    live = tmp_path / "live.db"
    url = f"sqlite:///{live}"
    settings = Settings(database=url, workers=0, unit_rows=25, poll_interval=0.01)
    store = open_store(url)
    prepare(store, settings)
    client = store.get_client("demo")
    assert client is not None
    intake = Intake(LIMITS, settings.unit_rows)
    intake.feed(b"batch=thirdPartyId,n\n" + b"".join(b"p-%05d,%d\n" % (i, i) for i in range(ROWS)))
    _, batch_id = store_batch(store, client, 2, intake.finish(), LIMITS, now_ms())
    worker = Worker(store, settings)
    for _ in range(5):
        assert worker.run_once()

    backup = tmp_path / "backup.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "profilebase", "backup", "--database", url, str(backup)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    applied_during = 0
    while process.poll() is None:  # the batch goes on while the backup runs
        applied_during += worker.run_once()
    out, err = process.communicate()
    assert process.returncode == 0, err
    assert f"to {backup}" in out
    assert applied_during > 0
    store.close()

    # The backup is the database at one moment: every consumed row is a profile.
    profiles, consumed, done = state_of(backup)
    assert profiles == consumed == done and 0 < consumed
    assert not (tmp_path / "backup.db.partial").exists()

    # Restore: the file in the database's place, then serve it.
    restored = tmp_path / "restored.db"
    shutil.copy(backup, restored)
    restored_url = f"sqlite:///{restored}"
    settings = Settings(database=restored_url, workers=0, unit_rows=25)
    store = open_store(restored_url)
    try:
        with (
            LiveServer(settings, store, workers=0) as server,
            httpx.Client(base_url=server.url) as http,
        ):
            early = http.get("/rest/v1/profiles/thirdPartyId/p-00000", params={"client": "demo"})
            assert early.status_code == 200  # applied before the backup
            # A unit being applied when the backup was taken is taken up again once its
            # lease (lease_seconds) has run out: this worker's clock is past it.
            later = now_ms() + int(settings.lease_seconds * 1000) + 1000
            Worker(store, settings, clock=lambda: later).run(until_idle=True)
            status = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()
            assert status["state"] == "complete"
            assert (status["batchSize"], status["consumedCount"], status["successfulUpdates"]) == (
                ROWS,
                ROWS,
                ROWS,
            )
            last = http.get(
                f"/rest/v1/profiles/thirdPartyId/p-{ROWS - 1:05d}", params={"client": "demo"}
            )
            assert last.json()["profileAttributes"]["n"]["value"] == str(ROWS - 1)
        batch = store.get_batch(1, batch_id)
        assert batch is not None and batch.state is BatchState.COMPLETE
    finally:
        store.close()
    assert state_of(restored)[0] == ROWS


def test_backup_never_overwrites_a_file(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/live.db"
    target = tmp_path / "exists.db"
    target.write_bytes(b"precious")
    result = CliRunner().invoke(main, ["backup", "--database", url, str(target)])
    assert result.exit_code == 3 and "exists already" in result.output
    assert target.read_bytes() == b"precious"


def test_postgresql_is_told_to_use_pg_dump(postgres, tmp_path: Path):  # type: ignore[no-untyped-def]
    name = postgres.clone()
    try:
        result = CliRunner().invoke(
            main, ["backup", "--database", postgres.with_database(name), str(tmp_path / "x")]
        )
    finally:
        postgres.drop(name)
    assert result.exit_code == 3 and "pg_dump --format=custom" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("where", ["missing/dir/backup.db"])
def test_backup_into_a_missing_directory_says_so(tmp_path: Path, where: str):
    url = f"sqlite:///{tmp_path}/live.db"
    result = CliRunner().invoke(main, ["backup", "--database", url, str(tmp_path / where)])
    assert result.exit_code == 3 and "Cannot write the backup" in result.output
