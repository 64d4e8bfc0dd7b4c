"""Accepting a batch: read the body as it streams, validate, cut it into work units, store.

The body is never held whole in memory: complete lines are cut into units of
``unit_rows`` lines (the first of half as many, ``first_unit_rows``) and spooled to a
temporary file (in memory up to a few MB).
Limits are enforced while reading, so an oversized body is refused without
reading the rest. Nothing reaches the database until the whole body has been
read and checked; then one transaction stores the batch and all its units.
"""

from __future__ import annotations

import hashlib
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from profilebase import batchfile
from profilebase.errors import BatchRejected, BatchTooLarge
from profilebase.models import SEQ_SPAN, Client, Limits
from profilebase.server.storage.base import NewBatch, Store, UnitSpec

SPOOL_IN_MEMORY = 8 * 1024 * 1024
#: The body's first bytes that tell whether it starts with ``batch=`` (after a BOM).
PREFIX_BYTES = len(batchfile.BOM + batchfile.PREFIX)
#: The bytes a blank line may hold besides none at all (``batchfile.is_blank``).
WHITESPACE_BYTES = [bytes([b]) for b in range(256) if batchfile.is_blank(bytes([b]))]


class SpooledUnits(Sequence[UnitSpec]):
    """Units whose bodies sit in a spool file; each is read back only when used.

    ``compressed`` units are compressed as they are read (zlib, fastest level): an
    import's JSON lines repeat their field names, so they shrink several times, and the
    database writes, reads and clears that much less (``profile_import.unit_body`` opens
    them again). Compressing when the store reads them keeps the work off the server's
    event loop and in the storing thread.
    """

    def __init__(self, compressed: bool = False) -> None:
        self.compressed = compressed
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        self.spans: list[tuple[int, int, int, int]] = []  # first_line, rows, offset, length
        self.size = 0

    def add(self, first_line: int, rows: int, body: bytes) -> None:
        if self.size + len(body) > SPOOL_IN_MEMORY:
            self.file.rollover()  # to disk first: a large unit is never copied in memory
        self.file.write(body)
        self.spans.append((first_line, rows, self.size, len(body)))
        self.size += len(body)

    def __len__(self) -> int:
        return len(self.spans)

    @overload
    def __getitem__(self, i: int) -> UnitSpec: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[UnitSpec]: ...
    def __getitem__(self, i: int | slice) -> UnitSpec | Sequence[UnitSpec]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        first_line, rows, offset, length = self.spans[i]
        self.file.seek(offset)
        body = self.file.read(length)
        return UnitSpec(first_line, rows, zlib.compress(body, 1) if self.compressed else body)

    def __iter__(self) -> Iterator[UnitSpec]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class ReadBatch:
    header: batchfile.Header
    rows: int
    units: SpooledUnits
    #: SHA-256 of the whole body (hex) when the intake was asked to hash it, else "".
    digest: str = ""


def first_unit_rows(unit_rows: int) -> int:
    """Lines of a body's first unit: half of ``unit_rows``. Two workers that start on units
    of one size decode at the same time and then wait for each other's writes (SQLite
    has one writer); one that starts on a half unit ends it early, and from then on one
    decodes while the other writes (docs/design.md, "Workers out of step")."""
    return max(1, unit_rows // 2)


class UnitCutter:
    """Cuts a body's lines into units of ``unit_rows`` lines as they come, the first of
    half as many (``first_unit_rows``), spooled to ``units``, counting its data rows (a
    blank line is no row) within ``SEQ_SPAN`` lines and ``max_batch_rows``. A body's
    reader (``Intake``, ``profile_import.ImportIntake``) is one, with its own refusals:
    ``TOO_LONG`` and ``TOO_MANY``, formatted with ``span`` and ``limit``."""

    TOO_LONG = ""
    TOO_MANY = ""

    def __init__(
        self, limits: Limits, unit_rows: int, first_line: int, compressed: bool = False
    ) -> None:
        self.limits = limits
        self.unit_rows = unit_rows
        #: Lines of the unit being read.
        self.cut_at = first_unit_rows(unit_rows)
        self.rows = 0
        self.line = first_line - 1  # number of the last line read
        self.unit_lines: list[bytes] = []
        self.unit_rows_seen = 0
        self.unit_first = first_line
        self.units = SpooledUnits(compressed)

    def _take_lines(self, lines: list[bytes], plain: bool = False) -> None:
        """Take complete lines; ``plain`` says that none holds a whitespace byte, so that
        only an empty line is blank (counted in C rather than line by line)."""
        position = 0
        while position < len(lines):
            room = self.cut_at - len(self.unit_lines)
            part = lines[position : position + room]
            position += len(part)
            if plain:
                rows = len(part) - part.count(b"")
            else:
                rows = sum(1 for line in part if not batchfile.is_blank(line))
            self.rows += rows
            self.unit_rows_seen += rows
            self.unit_lines.extend(part)
            self.line += len(part)
            if self.line >= SEQ_SPAN:
                raise BatchTooLarge(self.TOO_LONG.format(span=SEQ_SPAN))
            if self.rows > self.limits.max_batch_rows:
                raise BatchTooLarge(self.TOO_MANY.format(limit=self.limits.max_batch_rows))
            if len(self.unit_lines) >= self.cut_at:
                self._cut_unit()
                self.cut_at = self.unit_rows

    def _cut_unit(self) -> None:
        if self.unit_rows_seen:
            self.units.add(self.unit_first, self.unit_rows_seen, b"\n".join(self.unit_lines))
        self.unit_lines = []
        self.unit_rows_seen = 0
        self.unit_first = self.line + 1


class Intake(UnitCutter):
    """Consumes a batch body chunk by chunk and enforces the byte and row limits.

    Line ends are LF, CRLF or a lone CR (as ``batchfile.parse`` reads them); each
    becomes one LF here, so the units the workers decode hold LF line ends only.
    An unfinished line is kept as a list of pieces and joined once it ends, so a
    line of tens of MB costs its size, not its size times the number of chunks.
    """

    TOO_LONG = (
        "The batch has {span:,} lines or more (blank lines included); split it into "
        "smaller batches."
    )
    TOO_MANY = (
        "The batch has more than {limit:,} data rows (max_batch_rows). Split the file into "
        "batches of at most {limit:,} rows."
    )

    def __init__(
        self, limits: Limits, unit_rows: int, prefix_optional: bool = False, digest: bool = False
    ) -> None:
        super().__init__(limits, unit_rows, first_line=2)  # the header is line 1
        self.hash = hashlib.sha256() if digest else None
        self.prefix_optional = prefix_optional
        self.total = 0
        #: The first bytes of the body, enough to judge its ``batch=`` prefix.
        self.start = b""
        self.header: batchfile.Header | None = None
        self.partial: list[bytes] = []  # the line not ended yet (the header, first)
        self.after_cr = False  # the last byte read was a CR: an LF right after it is its pair

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the body; raise ``BatchRejected``/``BatchTooLarge`` early."""
        if not chunk:
            return
        self.total += len(chunk)
        if self.hash is not None:
            self.hash.update(chunk)
        if self.total >= self.limits.max_batch_bytes:
            raise BatchTooLarge(
                f"The batch body is {self.total:,} bytes or more; it must be smaller than "
                f"{self.limits.max_batch_bytes:,} bytes (max_batch_bytes). Split the file "
                "into several batches."
            )
        chunk = self._line_ends(chunk)
        if len(self.start) < PREFIX_BYTES:
            self.start += chunk[: PREFIX_BYTES - len(self.start)]
        end = chunk.find(b"\n")
        if end < 0:
            self.partial.append(chunk)
            if self.header is None:
                self._check_prefix(final=False)
            return
        # The line that ends here is joined once; the rest of the chunk is split apart.
        self.partial.append(chunk[:end])
        line = b"".join(self.partial)
        cut = chunk.rfind(b"\n")
        self.partial = [chunk[cut + 1 :]]
        lines = chunk[end + 1 : cut].split(b"\n") if cut > end else []
        if self.header is None:
            self._read_header(line)
        else:
            lines.insert(0, line)
        if lines:
            # The lines come from this chunk, and the first one perhaps from earlier ones.
            plain = not any(byte in chunk or byte in line for byte in WHITESPACE_BYTES)
            self._take_lines(lines, plain)

    def _line_ends(self, chunk: bytes) -> bytes:
        """``chunk`` with each CRLF or lone CR as one LF (a CRLF may span two chunks)."""
        if self.after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        if b"\r" not in chunk:
            self.after_cr = False
            return chunk
        self.after_cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def finish(self) -> ReadBatch:
        """The body has ended: read the last line, cut the last unit, return the batch."""
        last = b"".join(self.partial)
        self.partial = []
        if self.header is None:
            self._read_header(last)
        elif last:
            self._take_lines([last])
        self._cut_unit()
        assert self.header is not None
        digest = "" if self.hash is None else self.hash.hexdigest()
        return ReadBatch(self.header, self.rows, self.units, digest)

    def _check_prefix(self, final: bool) -> None:
        """Refuse a body that does not start with ``batch=`` as soon as that is certain."""
        if self.prefix_optional:
            return
        head = self.start
        if not final and (
            batchfile.PREFIX.startswith(head) or (batchfile.BOM + batchfile.PREFIX).startswith(head)
        ):
            return  # too short to tell yet (the BOM or the prefix may arrive split)
        if head.startswith(batchfile.BOM):
            head = head[len(batchfile.BOM) :]
        if not head.startswith(batchfile.PREFIX):
            batchfile.split_prefix(head)  # raises with the explanation

    def _read_header(self, line: bytes) -> None:
        self._check_prefix(final=True)
        if line.startswith(batchfile.BOM):
            line = line[len(batchfile.BOM) :]
        if line.startswith(batchfile.PREFIX):
            line = line[len(batchfile.PREFIX) :]
        if batchfile.is_blank(line):
            raise BatchRejected(
                "The batch has no header: after `batch=` the first line must name the id "
                "column (pcId or thirdPartyId) and the attributes, e.g. "
                "`batch=thirdPartyId,attr1,attr2`."
            )
        self.header = batchfile.parse_header(line)


def store_batch(
    store: Store,
    client: Client,
    version: int,
    read: ReadBatch,
    limits: Limits,
    now_ms: int,
    idempotency_key: str | None = None,
) -> tuple[int, str]:
    """Store a read batch for processing; return (seq, batch id). Writes nothing on refusal.

    With an ``idempotency_key`` already used by this client, nothing is stored and the
    batch first accepted under it is returned.
    """
    try:
        return store.accept_batch(
            NewBatch(
                client=client,
                version=version,
                key_kind=read.header.key_kind,
                names=read.header.names,
                batch_size=read.rows,
                units=read.units,
                idempotency_key=idempotency_key,
                digest=read.digest,
            ),
            now_ms,
            limits,
        )
    finally:
        read.units.close()
