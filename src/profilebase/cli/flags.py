"""Command-line flags made from the setting declarations (``server.settings.SETTINGS``):
the flag, its help, its environment variable and the default it shows come from there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from profilebase.models import Setting
from profilebase.server.settings import DECLARED, SETTINGS, env_name


def shown(value: object) -> str:
    """A default as the help and the docs table show it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "empty"


def setting_option(declared: Setting) -> Callable[[Any], Any]:
    """The flag of one setting; not given, it is None, so the environment or the default
    applies (``Settings.from_env`` ignores None)."""
    name = declared.name.replace("_", "-")
    help_text = f"{declared.help} [env {env_name(declared)}; default {shown(declared.default)}]"
    if declared.kind is bool:
        return click.option(f"--{name}/--no-{name}", declared.name, default=None, help=help_text)
    kind: Any = click.Choice(declared.choices) if declared.choices else declared.kind
    return click.option(f"--{name}", declared.name, type=kind, default=None, help=help_text)


def setting_options(command: str) -> Callable[[Any], Any]:
    """Every flag the declarations give ``command``, in declaration order."""

    def decorate(function: Any) -> Any:
        for declared in reversed([s for s in SETTINGS if command in s.flags]):
            function = setting_option(declared)(function)
        return function

    return decorate


#: --database, for every command that opens the server's database.
database_option = setting_option(DECLARED["database"])
