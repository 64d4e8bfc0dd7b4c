"""Turn a work unit's raw lines into rows ready to store, fast and in bounded memory.

``slices`` and ``UnitDecoder`` are what the worker uses. It must agree exactly with the
reference rules of ``batchfile`` (tests/test_decoder.py checks both on random
and adversarial input); this module only decides how fast that happens, and
that no unit, however its bytes are shaped, needs much more memory than a
slice of it.

Why DuckDB: decoding the largest batch (500,000 rows, 3.5 million cells) cell
by cell in Python takes about 12 s on a 2-core machine; one DuckDB query per
unit splits the lines and cells, percent-decodes them and builds each row's
JSON document natively in about 2 s, and releases the GIL while it works, so
one worker decodes while another writes. Python only runs whole-unit scans
(written in C) and handles the rare rows the query flags.

1. A unit larger than ``SLICE_BYTES`` or with more than ``SLICE_CELLS`` cells
   is cut at line ends into slices within both bounds, each decoded and
   handed out on its own (the worker applies each in its own transaction). A
   line longer than ``LONG_LINE`` is a slice of its own, decoded by the
   reference, which counts its cells before splitting them and, given the
   profile size limit, fails a line too large for any profile without
   decoding it.
2. A per-line pass runs only for slices that need it: lines with a CR are
   stripped of it, lines with a malformed ``%`` or raw bytes that are not
   UTF-8 are blanked (their line numbers stay) and fail with the reference's
   reason.
3. One query per slice, the slice passed as a parameter: ``+`` becomes
   ``%20`` (so trimming raw whitespace stays right), lines and cells are
   split, each cell is decoded with ``try(url_decode(...))`` and the row's
   JSON ``{"name":[value,seq,ms],...}`` is built from the cells the line has,
   with the attribute names passed as a list parameter: the query text does
   not depend on the header, so its cost is linear in the cells present,
   whatever the header's width. A row that fails (too many cells, undecodable
   bytes, a bad id) comes out with NULL JSON.
4. Rows with NULL JSON, and the lines set aside in step 2, are decoded by
   ``batchfile`` itself, which has the final word (and the failure reasons).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb

from profilebase import batchfile, ids
from profilebase.models import SEQ_SPAN, FailedRow, KeyKind
from profilebase.server.merge import dump_attrs
from profilebase.server.storage.base import DecodedRow

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: A slice holds at most this many bytes of the unit...
SLICE_BYTES = 8 * 1024 * 1024
#: ...and at most this many cells (commas): the JSON a slice becomes stays tens of MB.
SLICE_CELLS = 200_000
#: A longer line is decoded on its own by the reference rules, never by the query.
LONG_LINE = 1024 * 1024
#: A failed line is kept with its reason up to this many bytes.
MAX_RAW_BYTES = 64 * 1024
#: Raw bytes that decode to less than one byte each: ``%XX`` is three bytes for one.
RAW_BYTES_PER_BYTE = 3


@dataclass(frozen=True)
class DecodedSlice:
    """The rows and failures of consecutive lines of a unit, up to ``last_line``."""

    rows: list[DecodedRow]
    failures: list[FailedRow]
    last_line: int
    #: True for the unit's last slice.
    final: bool


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_query(header: batchfile.Header, trim: str | None) -> str:
    """The query for one key kind and trim mode: $1 = slice bytes, $2 = first line number,
    $3 = seq base, $4 = ',<ms>]', $5 = header width, $6 = the JSON key ``,"name":[`` of
    each attribute. It returns (line, id, seq, json-or-NULL) per non-blank line, in line
    order (the worker's parts rely on it)."""

    def trimmed(cell: str) -> str:
        return cell if trim is None else f"trim({cell}, {sql_string(trim)})"

    def decoded(cell: str) -> str:
        return f"try(url_decode({trimmed(cell)}))"

    # One piece per cell after the id, '' for an empty one; a cell that cannot be
    # decoded makes its piece, and so the row's JSON, NULL. The lambda walks the cells
    # the line has, whatever the header's width.
    pieces = (
        f"list_transform(c, lambda x, k: CASE WHEN k = 1 OR {trimmed('x')} = '' THEN '' "
        f"ELSE keys[k - 1] || to_json({decoded('x')}) || suffix END)"
    )
    body = "CASE WHEN list_count(p) < len(p) THEN NULL ELSE array_to_string(p, '') END"
    # ids.check_id in SQL; it may flag more (the reference then judges the row), never less.
    bad_id = (
        f"trim(id) = '' OR length(id) > {ids.MAX_LENGTH[header.key_kind]} OR id IN ('.', '..') "
        r"OR regexp_matches(id, '[\x00-\x1f\x7f-\x{9f}]') OR "
    ) + (
        "contains(id, '+') OR contains(id, '/')"
        if header.key_kind is KeyKind.THIRD_PARTY_ID
        else "length(id) - length(replace(id, '.', '')) > 1"
    )
    blank = "line = ''" if trim is None else f"trim(line, {sql_string(trim)}) = ''"
    return f"""
    SELECT line_no, id, seq,
           CASE WHEN n > $5 OR id IS NULL OR id = '' OR {bad_id} THEN NULL
                ELSE '{{' || substr({body}, 2) || '}}' END
    FROM (
        SELECT line_no, id, seq, n, {pieces} AS p
        FROM (
            SELECT c, len(c) AS n, $2 + i AS line_no, $3 + $2 + i AS seq, {decoded("c[1]")} AS id,
                   ',' || ($3 + $2 + i) || $4 AS suffix, $6 AS keys
            FROM (
                SELECT string_split(line, ',') AS c, i
                FROM (SELECT unnest(ls) AS line, unnest(range(len(ls))) AS i
                      FROM (SELECT string_split(replace(decode($1), '+', '%20'), chr(10)) AS ls))
                WHERE NOT ({blank})
            )
        )
    )
    ORDER BY line_no
    """


@functools.lru_cache(maxsize=8)
def query_text(key_kind: KeyKind, trim: str | None) -> str:
    """The query text per key kind and trim mode: six texts at most, whatever the headers."""
    return build_query(batchfile.Header(key_kind, ()), trim)


class _Connections(threading.local):
    """A cursor per thread on one DuckDB instance, so that every thread that decodes (worker
    threads, dry runs on the web layer's thread pool) shares one pool of DuckDB memory."""

    database: duckdb.DuckDBPyConnection | None = None
    lock = threading.Lock()
    cursor: duckdb.DuckDBPyConnection | None = None

    def get(self) -> duckdb.DuckDBPyConnection:
        if self.cursor is None:
            with _Connections.lock:
                if _Connections.database is None:
                    _Connections.database = duckdb.connect(config={"threads": 1})
                self.cursor = _Connections.database.cursor()
        return self.cursor


_connections = _Connections()


def json_keys(header: batchfile.Header) -> list[str]:
    """``,"name":[`` per attribute, the start of its entry in a row's JSON."""
    encode = json.JSONEncoder(ensure_ascii=False).encode
    return ["," + encode(name) + ":[" for name in header.names]


@dataclass(frozen=True)
class Slice:
    """Consecutive lines of a unit, ``first_line`` to ``last_line``, to decode together."""

    first_line: int
    last_line: int
    body: bytes
    #: True for the unit's last slice.
    final: bool
    #: One line longer than ``LONG_LINE``, for the reference rules.
    long: bool = False


def slices(body: bytes, first_line: int) -> Iterator[Slice]:
    """Cut a unit at line ends into slices within ``SLICE_BYTES`` and ``SLICE_CELLS``,
    each line longer than ``LONG_LINE`` a slice of its own (module docstring, step 1)."""
    last_line = first_line + body.count(b"\n")
    if len(body) <= SLICE_BYTES and body.count(b",") <= SLICE_CELLS:
        yield Slice(first_line, last_line, body, True)
        return
    start = position = 0  # the current slice starts at byte ``start``, line ``first``
    number = first = first_line
    size = cells = 0
    while True:
        end = body.find(b"\n", position)
        end = len(body) if end < 0 else end
        length, commas = end - position, body.count(b",", position, end)
        long = length > LONG_LINE
        if size and (long or size + length > SLICE_BYTES or cells + commas > SLICE_CELLS):
            yield Slice(first, number - 1, body[start : position - 1], False)
            start, first, size, cells = position, number, 0, 0
        if long:
            yield Slice(number, number, body[position:end], end == len(body), long=True)
            start, first = end + 1, number + 1
        else:
            size, cells = size + length + 1, cells + commas
        if end == len(body):
            break
        position, number = end + 1, number + 1
    if size:
        yield Slice(first, last_line, body[start:], True)


class UnitDecoder:
    """Decodes slices of one unit: its header, its batch's seqs, the time of applying.

    With ``max_row_bytes`` (the profile size limit), a long line whose cells alone
    decode to more than that fails with the size reason, undecoded.
    """

    def __init__(
        self,
        header: batchfile.Header,
        batch_seq: int,
        now_ms: int,
        max_row_bytes: int | None = None,
    ) -> None:
        self.header = header
        self.batch_seq = batch_seq
        self.base = batch_seq * SEQ_SPAN
        self.now_ms = now_ms
        self.max_row_bytes = max_row_bytes
        self.keys = json_keys(header)

    def decode(self, piece: Slice) -> DecodedSlice:
        rows: list[DecodedRow] = []
        failures: list[FailedRow] = []
        if not piece.long:
            rows, failures = self._query(piece.body, piece.first_line)
        elif not batchfile.is_blank(piece.body):
            self._long_line(piece.body, piece.first_line, rows, failures)
        return DecodedSlice(rows, failures, piece.last_line, piece.final)

    def decode_all(self, body: bytes, first_line: int) -> tuple[list[DecodedRow], list[FailedRow]]:
        """Every slice of ``body`` at once."""
        rows: list[DecodedRow] = []
        failures: list[FailedRow] = []
        for piece in slices(body, first_line):
            part = self.decode(piece)
            rows.extend(part.rows)
            failures.extend(part.failures)
        return rows, failures

    def _query(self, body: bytes, first_line: int) -> tuple[list[DecodedRow], list[FailedRow]]:
        """Decode one slice with the query (steps 2 to 4 of the module docstring)."""
        header, base, now_ms = self.header, self.base, self.now_ms
        failures: list[FailedRow] = []
        set_aside: list[DecodedRow] = []
        if b"\r" in body or _BAD_PERCENT.search(body):
            body = _pull_bad_lines(body, first_line, header, base, now_ms, set_aside, failures)
        trim = " \t" if b"\t" in body else " " if b" " in body else None
        arguments = [body, first_line, base, f",{int(now_ms)}]", header.width, self.keys]
        text = query_text(header.key_kind, trim)
        connection = _connections.get()
        try:
            found = connection.execute(text, arguments).fetchall()
        except duckdb.ConversionException:  # raw bytes that are not UTF-8: rare
            body = _pull_bad_lines(
                body, first_line, header, base, now_ms, set_aside, failures, check_utf8=True
            )
            arguments[0] = body
            found = connection.execute(text, arguments).fetchall()
        # The query's columns are DecodedRow's fields; ``_make`` (``tuple.__new__`` and a
        # length check) is four times faster than calling the class with four arguments.
        make = DecodedRow._make
        rows = [make(row) for row in found if row[3] is not None]
        if set_aside or len(rows) != len(found):
            rows.extend(set_aside)
            lines = body.split(b"\n")
            for line_no, _, _, attrs in found:
                if attrs is None:
                    _reference(
                        lines[line_no - first_line], line_no, header, base, now_ms, rows, failures
                    )
            rows.sort(key=lambda row: row.line)
        if failures:
            failures.sort(key=lambda f: f.line)
        return rows, failures

    def _long_line(
        self, line: bytes, number: int, rows: list[DecodedRow], failures: list[FailedRow]
    ) -> None:
        """Decode a long line with the reference rules, or fail it for its size undecoded.

        Its cells after the id decode to at least a third of their bytes that are neither
        whitespace nor commas, and a row's JSON holds at least its decoded values: past
        ``max_row_bytes`` no profile could hold the row, whatever its cells turn out to be.
        """
        limit = self.max_row_bytes
        id_end = line.find(b",")
        if limit is not None and id_end >= 0 and line.count(b",") < self.header.width:
            separators = sum(line.count(byte, id_end) for byte in (b",", b" ", b"\t", b"\r"))
            at_least = (len(line) - id_end - separators) // RAW_BYTES_PER_BYTE
            if at_least > limit:
                failures.append(
                    FailedRow(
                        number,
                        first_cell(line),
                        f"the profile would grow to at least {at_least} bytes, over the limit "
                        f"of {limit} bytes (max_profile_bytes); send fewer or shorter "
                        "attributes",
                    )
                )
                return
        _reference(line, number, self.header, self.base, self.now_ms, rows, failures)


def decode_unit(
    body: bytes,
    first_line: int,
    header: batchfile.Header,
    batch_seq: int,
    now_ms: int,
    max_row_bytes: int | None = None,
) -> tuple[list[DecodedRow], list[FailedRow]]:
    """Decode the lines of ``body`` (line ``first_line`` first); blank lines are skipped.

    All slices at once, for tests and small units; the worker and the dry run take one
    slice at a time (``slices``, ``UnitDecoder.decode``).
    """
    return UnitDecoder(header, batch_seq, now_ms, max_row_bytes).decode_all(body, first_line)


def _reference(
    line: bytes,
    number: int,
    header: batchfile.Header,
    base: int,
    now_ms: int,
    rows: list[DecodedRow],
    failures: list[FailedRow],
) -> None:
    """Decode one line the fast path set aside with the reference rules (the final word)."""
    try:
        row = batchfile.parse_row(line, header)
    except batchfile.CellError as exc:
        failures.append(FailedRow(number, first_cell(line), str(exc), raw_text(line)))
        return
    seq = base + number
    attrs = dump_attrs({name: [value, seq, now_ms] for name, value in row.values.items()})
    rows.append(DecodedRow(number, row.id, seq, attrs))


def _pull_bad_lines(
    body: bytes,
    first_line: int,
    header: batchfile.Header,
    base: int,
    now_ms: int,
    rows: list[DecodedRow],
    failures: list[FailedRow],
    check_utf8: bool = False,
) -> bytes:
    """Strip line-end CRs; take out the lines the query cannot judge and decode them here."""
    lines = body.split(b"\n")
    for i, line in enumerate(lines):
        if line.endswith(b"\r"):
            line = lines[i] = line.rstrip(b"\r")
        bad_percent = b"%" in line and _BAD_PERCENT.search(line)
        bad_utf8 = check_utf8 and not line.isascii() and not _is_utf8(line)
        if bad_percent or bad_utf8 or b"\r" in line:
            if not batchfile.is_blank(line):
                _reference(line, first_line + i, header, base, now_ms, rows, failures)
            lines[i] = b""
    return b"\n".join(lines)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def raw_text(line: bytes) -> str:
    """A failed line as it is kept with its reason: its first ``MAX_RAW_BYTES``."""
    return line[:MAX_RAW_BYTES].rstrip(b"\r").decode("utf-8", errors="replace")


def first_cell(line: bytes) -> str:
    """The id of a failed row as well as it can be read, for the failure report."""
    end = line.find(b",", 0, MAX_RAW_BYTES)
    raw = line[:MAX_RAW_BYTES] if end < 0 else line[:end]
    try:
        return batchfile.decode_cell(raw)
    except batchfile.CellError:
        return raw.strip().decode("utf-8", errors="replace")
