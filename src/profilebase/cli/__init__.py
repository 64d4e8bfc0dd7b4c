"""The ``profilebase`` command: a thin click group over the library.

Every option can also come from the environment as ``PROFILEBASE_<OPTION>``; a flag given
on the command line wins over the environment. The commands live by audience:

- ``server``: serve, worker, migrate, secret — run the server (needs ``profilebase[server]``);
- ``admin``: clients, tokens — manage its tenants in the database;
- ``remote``: push, status, get, update — clients over ``profilebase.Client``, configured by
  ``--url``/``--client``/``--token`` or ``PROFILEBASE_URL``/``PROFILEBASE_CLIENT``/
  ``PROFILEBASE_TOKEN`` (or, on profilebase, ``--key-id``/``--secret``, which get a token);
- ``data``: export, import, delete, batches (on a server with ``--url`` or a database with
  ``--database``), copy and backup of whole databases.

This module and the remote commands import nothing of the server, so that the SDK's own
install (``pip install profilebase``) runs them; server modules are imported inside the
commands that need them.
"""

from __future__ import annotations

from typing import Any

import click

from profilebase.cli import admin, data, remote, server
from profilebase.cli.failures import missing_server

__all__ = ["main"]


class ProfilebaseGroup(click.Group):
    """The top-level group: a command that needs the server's packages where only the SDK is
    installed ends with one sentence saying what to install, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ImportError as exc:
            problem = missing_server(exc)
            if problem is None:
                raise
            raise problem from None


@click.group(cls=ProfilebaseGroup)
@click.version_option(package_name="profilebase")
def main() -> None:
    """profilebase: a visitor-profile store that speaks Adobe Target's profile APIs."""


for command in (
    *server.COMMANDS,
    *admin.COMMANDS,
    *remote.COMMANDS,
    *data.COMMANDS,
):
    main.add_command(command)
