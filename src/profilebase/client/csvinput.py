"""Reading an ordinary CSV export, the way CRM and POS systems write them.

RFC 4180 quoting (quoted cells may hold the delimiter, quotes doubled as ``""``
and line breaks), a comma, semicolon or tab delimiter found from the header line
unless given, UTF-8 with or without a byte-order mark, any line endings, and
gzip (recognised by its magic bytes, whatever the file is called). A file is
read as a stream and can be read again, which ``push`` does to copy the
original cells of failed rows into the errors file.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from profilebase.errors import InputError

DELIMITERS = (",", ";", "\t")
GZIP_MAGIC = b"\x1f\x8b"
# Cells may be long (free-text notes); the csv module's default limit is 128 KiB.
csv.field_size_limit(64 * 1024 * 1024)


@dataclass(frozen=True)
class Record:
    """One data record of the file."""

    #: 1 for the first record after the header.
    number: int
    #: The physical line the record starts on (the header is line 1).
    line: int
    cells: tuple[str, ...]


def count_outside_quotes(line: str, delimiter: str) -> int:
    count, quoted = 0, False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif char == delimiter and not quoted:
            count += 1
    return count


def detect_delimiter(header_line: str) -> str:
    """The delimiter of a header line: the most frequent of comma, semicolon and tab.

    Only the header is looked at: values may hold any of the three, names rarely do.
    A header with none of them (a single column) is read as comma-separated.
    """
    counts = {d: count_outside_quotes(header_line, d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


class CsvFile:
    """A CSV file on disk: its header and delimiter, and its records, readable more than once."""

    def __init__(self, path: str | os.PathLike[str], delimiter: str | None = None) -> None:
        self.path = Path(path)
        if delimiter is not None and len(delimiter) != 1:
            raise InputError(f"The delimiter must be one character, got {delimiter!r}.")
        with self._open() as text:
            first = self._first_line(text)
        self.delimiter = delimiter or detect_delimiter(first)
        header = next(csv.reader([first], delimiter=self.delimiter), [])
        if not any(cell.strip() for cell in header):
            raise InputError(f"{self.path} has no header line: its first line is empty.")
        # Names with spaces around them are always an accident of the export.
        self.header = tuple(cell.strip() for cell in header)

    def _open(self) -> IO[str]:
        try:
            with open(self.path, "rb") as probe:
                compressed = probe.read(2) == GZIP_MAGIC
            raw = gzip.open(self.path, "rb") if compressed else open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"Cannot open {self.path}: {exc.strerror}.") from None
        return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")

    def _first_line(self, text: IO[str]) -> str:
        try:
            first = text.readline()
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise self._unreadable(1, exc) from None
        if not first:
            raise InputError(f"{self.path} is empty: it needs a header line and data rows.")
        return first

    def _unreadable(self, line: int, exc: Exception) -> InputError:
        if isinstance(exc, UnicodeDecodeError):
            return InputError(
                f"{self.path} is not UTF-8 (near line {line}: {exc.reason}). Save it as "
                "UTF-8 (in Excel: CSV UTF-8) and push it again."
            )
        return InputError(f"{self.path} cannot be read near line {line}: {exc}.")

    def records(self) -> Iterator[Record]:
        """Every non-blank record after the header, with its number and starting line."""
        with self._open() as text:
            reader = csv.reader(text, delimiter=self.delimiter, strict=True)
            number, line = 0, 1
            try:
                next(reader, None)
                line = reader.line_num + 1
                for cells in reader:
                    start, line = line, reader.line_num + 1
                    if not cells or (len(cells) == 1 and not cells[0].strip()):
                        continue
                    number += 1
                    yield Record(number, start, tuple(cells))
            except (UnicodeDecodeError, OSError, EOFError) as exc:
                raise self._unreadable(line, exc) from None
            except csv.Error as exc:
                raise InputError(
                    f"{self.path} is not valid CSV near line {line}: {exc}. Check the quoting "
                    'there (a quote inside a quoted cell is written "").'
                ) from None
