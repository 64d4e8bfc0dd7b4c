"""The command line: serve's defaults and environment, clear errors, migrate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from test_crash import ServerProcess, wait_until
from test_store_contract import accept

from profilebase.cli import main
from profilebase.errors import ConfigError
from profilebase.models import BatchState
from profilebase.server.storage import Store, open_store


def test_serve_uses_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With no database configured, serve creates ./profilebase-data/profilebase.db and has `demo`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROFILEBASE_DATABASE", raising=False)
    server = ServerProcess(None, tmp_path / "log")
    try:
        response = httpx.get(server.url + "/m2/demo/profile/batchStatus", params={"batchId": "x"})
        assert response.status_code == 404 and b"No batch" in response.content
    finally:
        server.kill()
    assert (tmp_path / "profilebase-data" / "profilebase.db").exists()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PROFILEBASE_PORT": "eighty"}, "PROFILEBASE_PORT='eighty' is not a valid int"),
        ({"PROFILEBASE_DATABASE": "mysql://x"}, "Unsupported database URL"),
        ({"PROFILEBASE_UNIT_ROWS": "0"}, "unit_rows must be positive"),
    ],
)
def test_bad_configuration_is_one_clear_line(env: dict[str, str], fragment: str, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "profilebase", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_is_idempotent(empty_database: str):
    runner = CliRunner()
    url = empty_database
    first = runner.invoke(main, ["migrate", "--database", url])
    assert first.exit_code == 0 and "0001_foundation" in first.output
    second = runner.invoke(main, ["migrate", "--database", url])
    assert second.exit_code == 0 and "up to date" in second.output


def test_postgres_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    """Without the driver, a postgresql:// URL says which extra to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    backend = "profilebase.server.storage.postgres"
    for name in [n for n in sys.modules if n == backend or n.startswith(backend + ".")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError, match=r"pip install 'profilebase\[postgres\]'"):
        open_store("postgresql://root@127.0.0.1:5432/test")


@pytest.mark.parametrize("command", ["worker", "migrate", "serve"])
def test_unreachable_postgres_is_one_clear_line_without_the_password(command: str, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "profilebase", command],
        env={**os.environ, "PROFILEBASE_DATABASE": "postgresql://pb:s3cret@127.0.0.1:1/pb"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Cannot connect to PostgreSQL at postgresql://pb:***@127.0.0.1:1/pb" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_worker_processes_apply_batches_and_stop_on_sigterm(
    store: Store, database_url: str, tmp_path: Path
):
    """`profilebase worker --concurrency 2` applies what is queued and exits 0 on SIGTERM."""
    _, batch_id = accept(
        store, b"batch=thirdPartyId,a\n" + b"".join(b"w%d,v\n" % i for i in range(9))
    )
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "profilebase", "worker", "--concurrency", "2"],
            env={**os.environ, "PROFILEBASE_DATABASE": database_url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def complete() -> bool:
        batch = store.get_batch(1, batch_id)
        return batch is not None and batch.state is BatchState.COMPLETE

    try:
        wait_until(complete, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert store.get_batch(1, batch_id).counts.successful == 9  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("command", "flag", "value", "refused"),
    [
        ("serve", "--processes", "64", False),
        ("serve", "--processes", "65", True),
        ("serve", "--workers", "100000", True),
        ("worker", "--concurrency", "65", True),
    ],
)
def test_process_counts_are_capped(command: str, flag: str, value: str, refused: bool, tmp_path):  # type: ignore[no-untyped-def]
    """A typo in a count of processes is refused before anything starts, naming the setting
    and its limit; the limit itself is accepted (checked through the settings alone)."""
    from profilebase.server.settings import Settings

    name = flag.removeprefix("--")
    if refused:
        result = subprocess.run(
            [sys.executable, "-m", "profilebase", command, flag, value],
            env={**os.environ, "PROFILEBASE_DATABASE": f"sqlite:///{tmp_path}/db.sqlite"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert f"Setting {name} must be at most 64, got {value}" in result.stderr
        assert not (tmp_path / "db.sqlite").exists()  # nothing started, nothing created
    else:
        Settings(**{name: int(value)}).validate()
