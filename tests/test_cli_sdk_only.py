"""The SDK's own install: the CLI's remote commands run without any of the server's packages,
and a server command there says in one sentence what to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LiveServer

from profilebase.server.settings import Settings

#: The server extra's modules, PostgreSQL's driver, and the server's own code.
ABSENT = [
    "starlette",
    "uvicorn",
    "httptools",
    "python_multipart",
    "multipart",
    "duckdb",
    "jinja2",
    "itsdangerous",
    "prometheus_client",
    "pythonjsonlogger",
    "psycopg",
    "psycopg_pool",
]

#: Runs the CLI in an interpreter whose import system refuses the modules named in argv[1]
#: as if they were not installed.
PROGRAM = """
import sys

class Absent:
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name in self.names or any(name.startswith(n + ".") for n in self.names):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent(sys.argv[1].split(",")))
sys.argv = ["profilebase", *sys.argv[2:]]
from profilebase.cli import main
main()
"""


@pytest.fixture
def settings(database_url: str) -> Settings:
    """A worker that looks for work every 10 ms, so the push is not kept waiting."""
    return Settings(database=database_url, workers=0, poll_interval=0.01)


def profilebase(
    *args: str, absent: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The command in a fresh interpreter without the ``absent`` modules."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILEBASE_")}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, ",".join(absent), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


#: The server's code beyond its setting declarations (which the CLI's flags are made from).
REMOTE_ONLY = [
    *ABSENT,
    "profilebase.server.storage",
    "profilebase.server.web",
    "profilebase.server.worker",
]


@pytest.mark.parametrize("args", [["--help"], ["push", "--help"], ["batches", "list", "--help"]])
def test_help_needs_nothing_of_the_server(args: list[str]):
    """`profilebase --help` and a remote command's help load no server module."""
    result = profilebase(*args, absent=REMOTE_ONLY)
    assert result.returncode == 0, result.stderr
    assert "Usage: profilebase" in result.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_push_and_batches_work_without_the_server_packages(
    working_server: LiveServer, tmp_path: Path
):
    """A real push to a live server, then batches list and export over --url, from an
    interpreter that has none of the server's packages and loads no server module."""
    source = tmp_path / "crm.csv"
    source.write_text("customer,tier\nc-1,gold\nc-2,silver\n", encoding="utf-8")
    remote = ["--url", working_server.url, "--client", "demo", "--poll-interval", "0.01"]
    pushed = profilebase("push", str(source), *remote, absent=REMOTE_ONLY)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "applied 2 · not found 0 · failed 0" in pushed.stdout
    listed = profilebase("batches", "list", "--json", *remote, absent=REMOTE_ONLY)
    assert listed.returncode == 0, listed.stderr
    assert [b["batchSize"] for b in json.loads(listed.stdout)] == [2]
    exported = profilebase("export", *remote, absent=REMOTE_ONLY)
    assert exported.returncode == 0, exported.stderr
    ids = sorted(json.loads(line)["thirdPartyId"] for line in exported.stdout.splitlines())
    assert ids == ["c-1", "c-2"]


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],
        ["worker"],
        ["migrate"],
        ["clients", "list"],
        ["secret", "rotate"],
        ["export", "--client", "demo", "--database", "sqlite:///x.db"],
        ["copy", "--from", "sqlite:///a.db", "--to", "sqlite:///b.db"],
    ],
)
def test_a_server_command_without_the_server_packages_says_what_to_install(
    args: list[str], tmp_path: Path
):
    """One sentence naming the extra to install; no traceback, nothing created."""
    result = profilebase(*args, absent=ABSENT, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pip install 'profilebase[server]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []
