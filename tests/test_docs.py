"""Docs that can be checked against the code are: every setting and command is documented,
and every test docs/bad-input.md names exists."""

from __future__ import annotations

import ast
import dataclasses
import re
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


# -- docs/bad-input.md: every test it names exists ----------------------------------------------

BAD_INPUT = DOCS / "bad-input.md"
#: A test named in backticks, `tests/test_x.py` or `tests/test_x.py::[Class::]test_name`.
TEST_REFERENCE = re.compile(r"`(tests/\w+\.py)((?:::\w+)*)`")


def bad_input_rows() -> list[str]:
    """The table rows of docs/bad-input.md (header and separator rows left out)."""
    lines = BAD_INPUT.read_text().splitlines()
    return [
        line
        for line in lines
        if line.startswith("| ") and not line.startswith(("| Input ", "|---"))
    ]


def bad_input_references() -> list[tuple[str, str]]:
    """(file, ::names) of every test named in docs/bad-input.md."""
    return sorted({m.groups() for m in TEST_REFERENCE.finditer(BAD_INPUT.read_text())})


def defines(path: Path, names: list[str]) -> bool:
    """True if the module at ``path`` defines the test ``names`` (a class, then a function)."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for name in names:
        match = next(
            (
                node
                for node in scope
                if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name
            ),
            None,
        )
        if match is None:
            return False
        scope = match.body if isinstance(match, ast.ClassDef) else []
    return True


def test_every_bad_input_row_names_a_test():
    rows = bad_input_rows()
    assert len(rows) > 40
    assert [row for row in rows if not TEST_REFERENCE.search(row)] == []


@pytest.mark.parametrize(
    ("path", "names"),
    bad_input_references(),
    ids=[path + names for path, names in bad_input_references()],
)
def test_every_test_named_in_bad_input_exists(path: str, names: str):
    """Each test the table names exists."""
    module = DOCS.parent / path
    exists = module.is_file() and defines(module, names.split("::")[1:])
    assert exists, f"docs/bad-input.md names {path}{names}, which does not exist"
