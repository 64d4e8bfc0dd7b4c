"""Docs that can be checked against the code are: every setting and command is documented,
and every test docs/bad-input.md names exists."""

from __future__ import annotations

import ast
import re
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


# -- docs/bad-input.md: every test it names exists ----------------------------------------------

BAD_INPUT = DOCS / "bad-input.md"
#: A test named in backticks, `tests/test_x.py` or `tests/test_x.py::[Class::]test_name`,
#: optionally followed by " (pending merge)": a test another branch is adding.
TEST_REFERENCE = re.compile(r"`(tests/\w+\.py)((?:::\w+)*)`( \(pending merge\))?")


def bad_input_rows() -> list[str]:
    """The table rows of docs/bad-input.md (header and separator rows left out)."""
    lines = BAD_INPUT.read_text().splitlines()
    return [
        line
        for line in lines
        if line.startswith("| ") and not line.startswith(("| Input ", "|---"))
    ]


def bad_input_references() -> list[tuple[str, str, bool]]:
    """(file, ::names, pending) of every test named in docs/bad-input.md."""
    found = {m.groups() for m in TEST_REFERENCE.finditer(BAD_INPUT.read_text())}
    return sorted((path, names, bool(pending)) for path, names, pending in found)


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
    ("path", "names", "pending"),
    bad_input_references(),
    ids=[path + names for path, names, _ in bad_input_references()],
)
def test_every_test_named_in_bad_input_exists(path: str, names: str, pending: bool):
    """Each test the table names exists; one marked (pending merge) may not exist yet."""
    module = DOCS.parent / path
    exists = module.is_file() and defines(module, names.split("::")[1:])
    if not exists and pending:
        pytest.skip(f"{path}{names} is pending merge")
    assert exists, f"docs/bad-input.md names {path}{names}, which does not exist"
