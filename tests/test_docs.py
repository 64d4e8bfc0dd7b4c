"""Docs that can be checked against the code are: every setting and command is documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from profilebase.cli import main
from profilebase.models import LIMIT_SETTINGS, Limits, Setting
from profilebase.server.settings import LIMIT_NAMES, SETTINGS, Settings, env_name

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("declared", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_documented_with_its_default(declared: Setting):
    """Its row in docs/configuration.md names it, its variable and its declared default."""
    text = (DOCS / "configuration.md").read_text()
    row = next(
        (line for line in text.splitlines() if line.startswith(f"| `{declared.name}` |")), None
    )
    assert row is not None, f"{declared.name} missing from docs/configuration.md"
    assert f"`{env_name(declared)}`" in row
    default = declared.default
    shown = (
        str(default).lower()
        if isinstance(default, bool)
        else f"{default:g}"
        if isinstance(default, float)
        else str(default)
    )
    assert f"`{shown}`" in row, f"default {shown} of {declared.name} not in docs"


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


def test_the_settings_table_lists_every_setting_in_declaration_order():
    """No row for a setting that is not declared, and the order is the declarations'."""
    text = (DOCS / "configuration.md").read_text()
    rows = [line.split("`")[1] for line in text.splitlines() if line.startswith("| `")]
    table = [name for name in rows if not name.startswith("profilebase ")]
    assert table == [s.name for s in SETTINGS]


@pytest.mark.parametrize("declared", SETTINGS, ids=lambda s: s.name)
def test_every_setting_has_help(declared: Setting):
    assert declared.help.strip().endswith(".") or declared.help.strip().endswith(")")


def test_settings_and_limits_follow_the_declarations():
    """Settings has one attribute per declaration, in order, of the declared type and default;
    Limits has exactly the limit declarations, with their defaults."""
    fields = dataclasses.fields(Settings)
    assert [f.name for f in fields] == [s.name for s in SETTINGS]
    for f, declared in zip(fields, SETTINGS, strict=True):
        assert f.type == declared.kind.__name__ and f.default == declared.default, f.name
    assert {f.name for f in dataclasses.fields(Limits)} == set(LIMIT_NAMES)
    assert LIMIT_NAMES == tuple(s.name for s in LIMIT_SETTINGS)
    assert Limits() == Limits(**{s.name: s.default for s in LIMIT_SETTINGS})


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_server_flags_come_from_the_declarations(command: str):
    """Each flag of serve and worker is a declared setting's, its help the declaration's."""
    options = {p.name: p for p in main.commands[command].params if p.name != "log_level"}
    declared = {s.name: s for s in SETTINGS if command in s.flags}
    assert set(options) == set(declared)
    for name, option in options.items():
        assert option.help and option.help.startswith(declared[name].help)
        assert env_name(declared[name]) in option.help
