"""The import rules of the layout hold (import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is part of the dev extra"
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_linted_and_formatted():
    """ruff check and ruff format agree with the tree (the rules are in pyproject.toml)."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is part of the dev extra"
    paths = ["src", "tests", "benchmarks"]
    for command in ([ruff, "check", *paths], [ruff, "format", "--check", *paths]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def test_source_type_checks():
    """mypy finds no error in src/ (its settings are in pyproject.toml)."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    assert mypy, "mypy is part of the dev extra"
    result = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


SERVER_PACKAGES = ["starlette", "uvicorn", "duckdb", "psycopg", "multipart", "python_multipart"]


def test_the_sdk_imports_nothing_of_the_server():
    """`import profilebase` and `profilebase.client` load no server module or dependency."""
    server = [*SERVER_PACKAGES, "profilebase.server"]
    code = (
        "import sys, profilebase, profilebase.client\n"
        "from profilebase import Client\n"
        f"server = {server!r}\n"
        "print(*sorted(m for m in sys.modules if any(m == s or m.startswith(s + '.') "
        "for s in server)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == [], result.stdout
