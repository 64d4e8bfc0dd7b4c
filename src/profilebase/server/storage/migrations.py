"""Schema migrations: numbered SQL files per backend, applied in order, recorded in a table.

Files live in ``storage/<backend>/sql/NNNN_name.sql``, beside the backend's named
queries (``queries.sql``, ``statements.py``). A migration runs in one
transaction together with its row in ``schema_migrations``, so a crash leaves
either both or neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def file_name(self) -> str:
        """``0003_identities``: how logs and ``profilebase migrate`` name it."""
        return f"{self.version:04d}_{self.name}"


def load(backend: str) -> list[Migration]:
    """The migrations of ``backend`` ('sqlite' or 'postgres') in version order."""
    folder = resources.files("profilebase.server.storage").joinpath(backend, "sql")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():  # not queries.sql
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    return found


def pending(backend: str, applied: Iterable[int]) -> list[Migration]:
    """The migrations of ``backend`` whose version is not among ``applied``, in order."""
    done = set(applied)
    return [migration for migration in load(backend) if migration.version not in done]


def split_statements(sql: str) -> list[str]:
    """Split a migration file on semicolons at line ends (our files keep one statement each)."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--") or (not line.strip() and not current):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s and not s.startswith("--")]
