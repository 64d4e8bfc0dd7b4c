"""Turning a table into batches that fit a server, and failed batch lines back into input rows.

No network here: ``plan`` reads the input once, checks each row the way the
server will, percent-encodes names and values, and cuts the rows into parts that
respect the server's limits (rows, and bytes of the encoded body). Each part
keeps, per batch line, the number of the input record it came from, so a failure
the server reports by line (or Target by id) leads back to the row the user
wrote. ``write_errors`` turns failures into a CSV in the input's own columns
plus ``reason``, ready to fix and push again.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from profilebase import batchfile
from profilebase.client.csvinput import CsvFile, Record
from profilebase.client.replies import BatchStatus
from profilebase.errors import InputError
from profilebase.models import KeyKind, Limits

#: The column ``write_errors`` adds; a last column of this name is not pushed.
REASON = "reason"
#: Other names the id column goes by in exports, per key.
ID_ALIASES = {
    KeyKind.THIRD_PARTY_ID: ("thirdpartyid", "mbox3rdpartyid"),
    KeyKind.PC_ID: ("pcid", "mboxpc", "tntid"),
}
#: Parts up to this size stay in memory; larger ones are spooled to a temporary file.
SPOOL_IN_MEMORY = 16 * 1024 * 1024
#: Encoded lines are written to a part in chunks of about this many bytes.
WRITE_CHUNK = 1024 * 1024
# The characters urllib.parse.quote never escapes: such a cell is its own encoding.
_NEEDS_NO_ESCAPING = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


@dataclass(frozen=True)
class ColumnMap:
    """Which input columns become the id and which the attributes."""

    key_kind: KeyKind
    header: tuple[str, ...]
    id_index: int
    attribute_indexes: tuple[int, ...]
    #: Columns of the input that are not pushed.
    ignored: tuple[str, ...]
    #: Columns a row may fill: the header less empty names at its end.
    width: int

    @property
    def id_column(self) -> str:
        return self.header[self.id_index]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.header[i] for i in self.attribute_indexes)


def map_columns(
    header: Sequence[str],
    key: KeyKind | str = KeyKind.THIRD_PARTY_ID,
    id_column: str | None = None,
    columns: Sequence[str] | None = None,
) -> ColumnMap:
    """Choose the id column and the attribute columns; check the names as the server will.

    1. The id column is ``id_column`` if given, else the column named after the key
       (``thirdPartyId``, ``mbox3rdPartyId``; ``pcId``, ``mboxPC``, ``tntId``; any case),
       else the first column.
    2. The attributes are ``columns`` if given, in that order; else every other
       column, less empty trailing ones (a delimiter at the end of each line) and a
       last column named ``reason`` (the one an errors file adds).
    3. The header the server will see is checked with the server's own rules.
    """
    key_kind = KeyKind(key)
    header = tuple(header)
    positions = {name: i for i, name in reversed(list(enumerate(header)))}

    def position(name: str, what: str) -> int:
        if name not in positions:
            listed = ", ".join(repr(n) for n in header if n)
            raise InputError(f"There is no {what} column {name!r}; the columns are {listed}.")
        return positions[name]

    if id_column is not None:
        id_index = position(id_column, "id")
    else:
        aliases = ID_ALIASES[key_kind]
        found = [i for i, name in enumerate(header) if name.lower() in aliases]
        id_index = found[0] if found else 0
    width = len(header)
    while width > 1 and not header[width - 1]:
        width -= 1
    if columns is not None:
        indexes = tuple(position(name, "attribute") for name in columns)
        if id_index in indexes:
            raise InputError(f"{header[id_index]!r} is the id column; leave it out of --columns.")
    else:
        last = width
        if last > 1 and header[last - 1] == REASON and id_index != last - 1:
            last -= 1
        indexes = tuple(i for i in range(last) if i != id_index)
    ignored = tuple(
        name for i, name in enumerate(header[:width]) if i != id_index and i not in indexes
    )
    mapping = ColumnMap(key_kind, header, id_index, indexes, ignored, width)
    batchfile.parse_header(header_line(mapping))  # raises BatchRejected as the server would
    return mapping


def header_line(mapping: ColumnMap) -> bytes:
    names = [batchfile.encode_cell(name) for name in mapping.names]
    return ",".join([str(mapping.key_kind), *names]).encode("ascii")


@dataclass(frozen=True)
class LocalFailure:
    """A row refused before sending: the server would fail it for this reason."""

    record: int
    line: int
    id: str
    reason: str
    cells: tuple[str, ...]


@dataclass
class Part:
    """One batch body: up to the server's row and byte limits."""

    number: int
    rows: int
    size: int
    #: Input record number of each batch line; line ``n`` (from 2) is ``records[n - 2]``.
    records: array[int]
    file: IO[bytes] = field(repr=False)

    def body(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def record_of_line(self, line: int) -> int:
        return self.records[line - 2]

    def close(self) -> None:
        self.file.close()


@dataclass
class Plan:
    """Everything ``push`` sends, and the rows it refused."""

    mapping: ColumnMap
    parts: list[Part]
    failures: list[LocalFailure]
    records: int

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode(value: str) -> str:
    """``batchfile.encode_cell``, faster for the many cells that need no escaping."""
    return value if _NEEDS_NO_ESCAPING(value) else batchfile.encode_cell(value)


def encode_row(cells: tuple[str, ...], mapping: ColumnMap) -> tuple[str, str, str | None]:
    """(id, encoded line, reason it cannot be sent or None) for one input record."""
    identifier = cells[mapping.id_index] if mapping.id_index < len(cells) else ""
    if len(cells) > mapping.width and any(cell.strip() for cell in cells[mapping.width :]):
        return (
            identifier,
            "",
            (
                f"the row has {len(cells)} cells but the header has {mapping.width} "
                "columns (a value with the delimiter in it must be quoted)"
            ),
        )
    problem = batchfile.check_id(mapping.key_kind, identifier)
    if problem:
        return identifier, "", problem
    encoded = [encode(identifier)]
    for i in mapping.attribute_indexes:
        encoded.append(encode(cells[i]) if i < len(cells) else "")
    # Empty trailing cells change nothing; leaving them out saves bytes.
    return identifier, ",".join(encoded).rstrip(","), None


class Planner:
    """Cuts encoded rows into parts as they come."""

    def __init__(self, mapping: ColumnMap, limits: Limits) -> None:
        self.mapping = mapping
        self.prefix = batchfile.PREFIX + header_line(mapping) + b"\n"
        self.max_rows = limits.max_batch_rows
        self.max_bytes = limits.max_batch_bytes
        self.parts: list[Part] = []
        self.failures: list[LocalFailure] = []
        self.records = 0
        self._new_part()

    def _new_part(self) -> None:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        spool.write(self.prefix)
        self.current = Part(len(self.parts) + 1, 0, len(self.prefix), array("q"), spool)
        self.pending: list[bytes] = []
        self.pending_size = 0

    def _flush(self) -> None:
        self.current.file.write(b"".join(self.pending))
        self.pending = []
        self.pending_size = 0

    def _cut(self) -> None:
        self._flush()
        if self.current.rows:
            self.parts.append(self.current)
            self._new_part()

    def add(self, record: Record) -> None:
        self.records += 1
        identifier, line, problem = encode_row(record.cells, self.mapping)
        data = (line + "\n").encode("ascii") if problem is None else b""
        if problem is None and len(self.prefix) + len(data) >= self.max_bytes:
            problem = (
                f"the row is {len(data):,} bytes once encoded, too large for any batch "
                f"(a batch body must be under {self.max_bytes:,} bytes)"
            )
        if problem is not None:
            failure = LocalFailure(record.number, record.line, identifier, problem, record.cells)
            self.failures.append(failure)
            return
        part = self.current
        if part.rows >= self.max_rows or part.size + len(data) >= self.max_bytes:
            self._cut()
            part = self.current
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= WRITE_CHUNK:
            self._flush()
        part.rows += 1
        part.size += len(data)
        part.records.append(record.number)

    def finish(self) -> Plan:
        self._cut()
        self.current.close()
        return Plan(self.mapping, self.parts, self.failures, self.records)


def plan(records: Iterable[Record], mapping: ColumnMap, limits: Limits) -> Plan:
    """Read every record and cut the sendable ones into parts that fit ``limits``."""
    planner = Planner(mapping, limits)
    try:
        for record in records:
            planner.add(record)
    except BaseException:
        planner.finish().close()
        raise
    return planner.finish()


def records_of_rows(rows: Iterable[Mapping[str, object]]) -> tuple[tuple[str, ...], list[Record]]:
    """Header and records of rows given as mappings (the SDK's in-memory input).

    The header is the union of keys in order of first appearance; None is an empty cell.
    """
    materialised = list(rows)
    header: dict[str, None] = {}
    for row in materialised:
        header.update(dict.fromkeys(str(k) for k in row))
    names = tuple(header)
    records = []
    for number, row in enumerate(materialised, start=1):
        values = {str(k): v for k, v in row.items()}
        cells = tuple("" if values.get(n) is None else str(values[n]) for n in names)
        records.append(Record(number, number + 1, cells))
    return names, records


def write_errors(
    path: str | os.PathLike[str],
    header: Sequence[str],
    failures: Iterable[tuple[tuple[str, ...], str]],
    delimiter: str = ",",
) -> int:
    """Write (cells, reason) pairs as CSV in the input's columns plus ``reason``; return rows."""
    count = 0
    try:
        with open(path, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
            writer.writerow([*header, REASON])
            for cells, reason in failures:
                padded = list(cells) + [""] * (len(header) - len(cells))
                writer.writerow([*padded, reason])
                count += 1
    except OSError as exc:
        raise InputError(f"Cannot write the errors file {path}: {exc.strerror}.") from None
    return count


def records_by_number(records: Iterable[Record], wanted: set[int]) -> Iterator[Record]:
    """The records whose numbers are in ``wanted``, in file order (stops after the last)."""
    if not wanted:
        return
    last = max(wanted)
    for record in records:
        if record.number in wanted:
            yield record
        if record.number >= last:
            return


@dataclass(frozen=True)
class Table:
    """The input of a push: its header, its delimiter, and a way to read its records (again)."""

    header: tuple[str, ...]
    delimiter: str
    read: Callable[[], Iterable[Record]]
    name: str


def table_of(
    rows_or_path: str | os.PathLike[str] | Iterable[Mapping[str, object]],
    delimiter: str | None = None,
) -> Table:
    """A CSV file by path, or rows given as mappings of column name to value."""
    if isinstance(rows_or_path, str | os.PathLike):
        source = CsvFile(rows_or_path, delimiter)
        return Table(source.header, source.delimiter, source.records, str(source.path))
    header, records = records_of_rows(rows_or_path)
    if not header:
        raise InputError("There are no rows to push.")
    return Table(header, delimiter or ",", lambda: records, "rows")


@dataclass(frozen=True)
class RowFailure:
    """An input row that was not applied, and why."""

    #: 1 for the first data record of the input.
    record: int
    #: The input line the record starts on (the header is line 1).
    line: int
    id: str
    reason: str
    #: The record's cells as the input had them.
    cells: tuple[str, ...] = ()
    #: True if the server failed it; False if it was refused before sending.
    sent: bool = False


@dataclass(frozen=True)
class PartResult:
    """One part of a push: the batch it became and its last known status."""

    number: int
    rows: int
    batch_id: str
    status: BatchStatus | None = None
    #: The batchStatus URL the server gave (Target's points at an edge host).
    status_url: str = ""

    def with_status(self, status: BatchStatus) -> PartResult:
        return PartResult(self.number, self.rows, self.batch_id, status, self.status_url)


@dataclass(frozen=True)
class PushProgress:
    """Where a push stands, for a progress bar."""

    #: "uploading", "applying" or "done".
    phase: str
    rows_total: int
    rows_sent: int
    rows_applied: int
    parts_total: int
    parts_sent: int


@dataclass(frozen=True)
class PushResult:
    """What a push did, row by row where it matters."""

    #: Data records in the input.
    rows_read: int
    #: Rows sent in batches (the others failed the checks before sending).
    rows_sent: int
    parts: tuple[PartResult, ...]
    #: Rows the server applied (successful updates).
    applied: int
    #: v1 rows whose profile does not exist (v1 does not create profiles).
    not_found: int
    #: Every row that was or would be refused, in input order.
    failures: tuple[RowFailure, ...]
    id_column: str
    ignored_columns: tuple[str, ...]
    dry_run: bool = False
    #: False when the push returned without following its batches (``wait=False``).
    waited: bool = True

    @property
    def refused(self) -> int:
        """Rows refused before sending (the server would have failed them)."""
        return sum(1 for f in self.failures if not f.sent)

    @property
    def failed(self) -> int:
        """Rows the server failed (or, in a dry run, would fail)."""
        return sum(1 for f in self.failures if f.sent)

    @property
    def stuck(self) -> tuple[PartResult, ...]:
        return tuple(p for p in self.parts if p.status is not None and p.status.status == "stuck")

    @property
    def finished(self) -> bool:
        """Every batch reported complete or stuck."""
        return all(p.status is not None and p.status.finished for p in self.parts)

    @property
    def ok(self) -> bool:
        """Every row was applied (or, for a dry run, would be)."""
        complete = self.dry_run or (self.finished and not self.stuck)
        return complete and not self.failures and not self.not_found
