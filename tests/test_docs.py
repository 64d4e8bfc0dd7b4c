"""Docs that can be checked against the code are: every setting and command is documented."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from profilebase.cli import main
from profilebase.server.settings import ENV_PREFIX, Settings, setting_fields

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("field", setting_fields(), ids=lambda f: f.name)
def test_every_setting_is_documented_with_its_default(field):
    text = (DOCS / "configuration.md").read_text()
    row = next((line for line in text.splitlines() if line.startswith(f"| `{field.name}` |")), None)
    assert row is not None, f"{field.name} missing from docs/configuration.md"
    assert f"`{ENV_PREFIX}{field.name.upper()}`" in row
    default = getattr(Settings(), field.name)
    shown = (
        str(default).lower()
        if isinstance(default, bool)
        else f"{default:g}"
        if isinstance(default, float)
        else str(default)
    )
    assert f"`{shown}`" in row, f"default {shown} of {field.name} not in docs"


def command_names(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        names.append(prefix + name)
        if isinstance(command, click.Group):
            names += command_names(command, prefix + name + " ")
    return names


@pytest.mark.parametrize("name", command_names(main))
def test_every_command_is_documented(name: str):
    text = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    assert f"profilebase {name}" in text


@pytest.mark.parametrize("field", setting_fields(), ids=lambda f: f.name)
def test_every_setting_has_help(field):
    assert field.metadata.get("help")
