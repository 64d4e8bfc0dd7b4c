"""Reading a JSON-lines export for ``profilebase import``: parts the server takes, each a
request under its limits, with the line numbers of the file kept."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from profilebase import profilelines
from profilebase.errors import InputError

#: Most lines the SDK sends in one part: the server's workers apply a part while the next
#: is read and sent.
PART_ROWS = 10_000
#: Most lines of the first part: small, so that the server's workers start while the SDK
#: still reads and sends the rest.
FIRST_PART_ROWS = 2_500


@dataclass(frozen=True)
class Part:
    """Consecutive lines of the file, sent as one import."""

    number: int
    #: The file's line number of the part's first line (from 1).
    first_line: int
    rows: int
    data: bytes

    def file_line(self, line: int) -> int:
        """The file's line number of the part's line ``line`` (both from 1)."""
        return self.first_line + line - 1


@dataclass(frozen=True)
class ImportFailure:
    """A line of the file that was not imported, and why."""

    line: int
    id: str
    reason: str


@dataclass(frozen=True)
class ImportResult:
    """What an import did: its batches, and every line that failed."""

    rows: int
    batch_ids: tuple[str, ...]
    applied: int = 0
    failures: tuple[ImportFailure, ...] = field(default_factory=tuple)
    #: False when the command did not wait (or not long enough) for every part.
    finished: bool = True

    @property
    def failed(self) -> int:
        return len(self.failures)


def split(
    path: str | os.PathLike[str],
    max_bytes: int,
    max_rows: int,
    compact: bool = False,
    first_rows: int | None = None,
) -> Iterator[Part]:
    """The file's lines in parts of fewer than ``max_bytes`` bytes and at most ``max_rows``
    non-blank lines. A line too long for any part is refused before anything is sent.

    With ``first_rows``, the first part holds at most that many lines (a small first part
    lets the server start applying sooner). Blank lines alone are never a part.

    With ``compact``, each line is sent in its compact form (``profilelines.compact``), one
    line for one, so that the file's line numbers still hold; sizes count the compact lines.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below, also when a part is refused)
    except OSError as exc:
        raise InputError(f"Cannot read {os.fspath(path)}: {exc.strerror or exc}.") from None
    with handle:
        lines: list[bytes] = []
        size = rows = 0
        first = number = 1
        parts = 0
        for number, line in enumerate(handle, start=1):
            blank = not line.strip()
            if compact and not blank:
                line = profilelines.compact(line.rstrip(b"\n")) + b"\n"
            if len(line) + 1 >= max_bytes:
                raise InputError(
                    f"Line {number} is {len(line):,} bytes: one import request must be smaller "
                    f"than {max_bytes:,} bytes (max_batch_bytes). Nothing was sent."
                )
            limit = max(1, max_rows if parts or first_rows is None else min(first_rows, max_rows))
            if size + len(line) >= max_bytes or (not blank and rows >= limit):
                # Blank lines alone are no part: dropped, the file's line numbers kept.
                if rows:
                    parts += 1
                    yield Part(parts, first, rows, b"".join(lines))
                lines, size, rows, first = [], 0, 0, number
            lines.append(line)
            size += len(line)
            rows += 0 if blank else 1
        if rows:
            yield Part(parts + 1, first, rows, b"".join(lines))


def ahead(parts: Iterator[Part], gzip: bool = False) -> Iterator[tuple[Part, bytes, str | None]]:
    """Each part with the body to send and its Content-Encoding (gzip, fastest level, or
    None), the next one read (and made compact, and compressed) in a thread while the
    caller sends the current one."""

    def read() -> tuple[Part, bytes, str | None] | None:
        part = next(parts, None)
        if part is None:
            return None
        if gzip:
            return part, zlib_gzip(part.data), "gzip"
        return part, part.data, None

    with ThreadPoolExecutor(1, thread_name_prefix="import-read") as pool:
        pending = pool.submit(read)
        while (found := pending.result()) is not None:
            pending = pool.submit(read)
            yield found


def zlib_gzip(data: bytes) -> bytes:
    """``data`` as gzip at the fastest level (no file name or time in its header)."""
    import gzip

    return gzip.compress(data, compresslevel=1, mtime=0)


def lines_in(path: str | os.PathLike[str]) -> int:
    """Non-blank lines of the file (for the progress bar's total)."""
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())
