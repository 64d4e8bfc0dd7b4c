"""How a command fails: exit codes, the two kinds of refusal, and the sentence for a
command that needs the server's packages where only the SDK is installed."""

from __future__ import annotations

import importlib.util

import click

from profilebase.errors import BatchStuck, ProfilebaseError, RemoteUnavailable

#: Exit codes of the client commands (docs/client.md lists them too).
EXIT_OK = 0
EXIT_USAGE = 2  # click's own: a bad flag or a missing option
EXIT_REJECTED = 3  # the input or the request was refused: unreadable file, bad header, 4xx
EXIT_ROWS_FAILED = 4  # some rows were not applied (failed, or not found with --v1)
EXIT_UNAVAILABLE = 5  # server or network failure, quota, a stuck or unfinished batch


class Refused(click.ClickException):
    """The file or the request was refused: one sentence, exit code 3."""

    exit_code = EXIT_REJECTED


class Unavailable(click.ClickException):
    """The server or the network failed: one sentence, exit code 5."""

    exit_code = EXIT_UNAVAILABLE


def failure(exc: ProfilebaseError) -> click.ClickException:
    """The CLI's form of a library error: its sentence, with the exit code of its kind."""
    if isinstance(exc, RemoteUnavailable | BatchStuck):
        return Unavailable(exc.message)
    return Refused(exc.message)


def explain(exc: ProfilebaseError) -> str:
    """The error's sentence, and for a database failure what the database said: the
    operator at the command line may see what an HTTP client may not."""
    detail = getattr(exc, "detail", "")
    return f"{exc.message} ({detail})" if detail else exc.message


#: The top-level modules of the ``server`` extra (pyproject.toml) that the server imports.
SERVER_MODULES = (
    "starlette",
    "uvicorn",
    "httptools",
    "python_multipart",
    "duckdb",
    "jinja2",
    "itsdangerous",
    "prometheus_client",
    "pythonjsonlogger",
    "msgspec",
)

NEEDS_SERVER = (
    "This command runs the server's code, whose packages are not installed: "
    "pip install 'profilebase[server]'."
)


def missing_server(exc: ImportError) -> click.ClickException | None:
    """The one-sentence error for an import of a server package that is not installed, or
    None when ``exc`` is about something else."""
    name = (exc.name or "").partition(".")[0]
    return click.ClickException(NEEDS_SERVER) if name in SERVER_MODULES else None


def require_server() -> None:
    """Stop with one sentence unless the server's packages are installed; the commands that
    open a database or serve call it first, so none of them fails half-way for want of one."""
    for name in SERVER_MODULES:
        try:
            found = importlib.util.find_spec(name)
        except ImportError:
            found = None
        if found is None:
            raise click.ClickException(NEEDS_SERVER)
