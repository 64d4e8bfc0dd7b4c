"""The package ships what it needs at run time."""

from __future__ import annotations

import tomllib
from pathlib import Path

from profilebase.server.storage import migrations

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "profilebase"


def test_package_data_covers_every_file_the_code_reads():
    """A wheel (not only an editable install) carries every file that is not Python source:
    SQL migrations, templates, static files, py.typed."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["profilebase"]
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
    assert any(path.suffix == ".sql" for path in data)
    assert data <= shipped, sorted(str(path) for path in data - shipped)


def test_migrations_load_in_order():
    loaded = migrations.load("sqlite")
    assert [m.version for m in loaded] == sorted(m.version for m in loaded)
    assert loaded[0].name == "foundation"
