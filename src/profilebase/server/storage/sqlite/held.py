"""What a group transaction of single updates holds back until its end (SQLite).

The online writes of one SQLite store run in groups, one transaction each, on its writer
thread (``WriteGroups``). Each single update used to write two rows that every update of
the group touches again: a row of ``writes`` (its seq) and its client's minute in
``update_counts`` (the daily quota). Within a group they are kept here instead:

- **One ``writes`` row for a run of single updates of one client.** The updates of the
  run number their rows under it, as the rows of a batch do (``write × SEQ_SPAN + n``),
  so seqs still order every write. The run ends when another write takes a seq (a page
  call, a delete: ``SQLiteStore._new_write``), so nothing written after it ever gets a
  smaller seq.
- **The quota's counts, written once per group.** The window's sum is read once per
  client and day start; the updates the group counted are added to it here, and written
  by one statement before the commit (``flush``). The counts are exact: the group holds
  the writers' turn, so no other writer changes them meanwhile.

A single update that fails after it took a seq or counted (its savepoint rolled back)
gives them back: ``mark`` before it, ``undo`` after its rollback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

#: A mark of the group's state before one write (``HeldWrites.mark``).
Mark = tuple[int, tuple[int, int, int] | None]


@dataclass
class HeldWrites:
    """The held-back rows of one group transaction; a new one for each group."""

    #: (client id, its write's seq, the next row number under it) of the current run.
    run: tuple[int, int, int] | None = None
    #: (client id, minute) of each single update counted, in order.
    counted: list[tuple[int, int]] = field(default_factory=list)
    #: The stored window of (client id, first minute): its updates and oldest minute.
    windows: dict[tuple[int, int], tuple[int, int | None]] = field(default_factory=dict)

    def mark(self) -> Mark:
        return len(self.counted), self.run

    def undo(self, mark: Mark) -> None:
        """Forget what the write since ``mark`` took: its savepoint was rolled back."""
        counted, self.run = mark
        del self.counted[counted:]

    def next_in_run(self, client_id: int) -> int | None:
        """The next seq of the current run of ``client_id``'s updates, or None if none runs."""
        if self.run is None or self.run[0] != client_id:
            return None
        client, write, row = self.run
        self.run = (client, write, row + 1)
        return write + row

    def start_run(self, client_id: int, first_seq: int) -> None:
        """A run of ``client_id``'s updates from ``first_seq`` (its write's first row)."""
        self.run = (client_id, first_seq - 1, 2)

    def end_run(self) -> None:
        self.run = None

    def counted_since(self, client_id: int, first_minute: int) -> Iterator[int]:
        """The minutes of ``client_id``'s updates counted by this group, from
        ``first_minute`` on (one per update)."""
        return (m for c, m in self.counted if c == client_id and m >= first_minute)

    def totals(self) -> list[tuple[int, int, int]]:
        """(client id, minute, updates) for every minute this group counted updates in."""
        return [(client, minute, n) for (client, minute), n in Counter(self.counted).items()]
