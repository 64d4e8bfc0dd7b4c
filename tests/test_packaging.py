"""The package ships what it needs at run time."""

from __future__ import annotations

import tomllib
from pathlib import Path

from profilebase.storage import migrations

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "profilebase"


def test_package_data_covers_every_migration_file():
    """A wheel (not only an editable install) carries every SQL migration."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["profilebase"]
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    assert set(PACKAGE.glob("storage/sql/**/*.sql")) <= shipped
    assert shipped


def test_migrations_load_in_order():
    loaded = migrations.load("sqlite")
    assert [m.version for m in loaded] == sorted(m.version for m in loaded)
    assert loaded[0].name == "foundation"
