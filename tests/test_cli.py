"""The command line: serve's defaults and environment, clear errors, migrate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from profilebase.cli import main
from test_crash import ServerProcess


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


def test_migrate_is_idempotent(tmp_path: Path):
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/m.db"
    first = runner.invoke(main, ["migrate", "--database", url])
    assert first.exit_code == 0 and "0001_foundation" in first.output
    second = runner.invoke(main, ["migrate", "--database", url])
    assert second.exit_code == 0 and "up to date" in second.output
