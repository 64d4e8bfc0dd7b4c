"""Turn a work unit's raw lines into rows ready to store, fast.

``decode_unit`` is what the worker calls. It must agree exactly with the
reference rules of ``batchfile`` (tests/test_decoder.py checks both on random
and adversarial input); this module only decides how fast that happens.

Why DuckDB: decoding the largest batch (500,000 rows, 3.5 million cells) cell
by cell in Python takes about 12 s on a 2-core machine; one DuckDB query per
unit splits the lines and cells, percent-decodes them and builds each row's
JSON document natively in about 2 s, and releases the GIL while it works, so
one worker decodes while another writes. Python only runs whole-unit scans
(written in C) and handles the rare rows the query flags.

1. A per-line pass runs only for units that need it: lines with a CR are
   stripped of it, lines with a malformed ``%`` or raw bytes that are not
   UTF-8 are blanked (their line numbers stay) and fail with the reference's
   reason.
2. One query per unit, the unit passed as a parameter: ``+`` becomes ``%20``
   (so trimming raw whitespace stays right), lines and cells are split, each
   cell is decoded with ``try(url_decode(...))`` and the row's JSON
   ``{"name":[value,seq,ms],...}`` is concatenated; a row that fails (too many
   cells, undecodable bytes, a bad id) comes out with NULL JSON.
3. Rows with NULL JSON, and the lines set aside in step 1, are decoded by
   ``batchfile`` itself, which has the final word (and the failure reasons).
"""

from __future__ import annotations

import json
import re
import threading

import duckdb

from profilebase import batchfile, ids
from profilebase.models import SEQ_SPAN, FailedRow, KeyKind
from profilebase.server.storage.base import DecodedRow
from profilebase.server.storage.merge import dump_attrs

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_query(header: batchfile.Header, trim: str | None) -> str:
    """The query for one header: $1 = unit bytes, $2 = first line number, $3 = seq base,
    $4 = ',<ms>]'. It returns (line, id, seq, json-or-NULL) per non-blank line."""
    width = header.width

    def cell(k: int) -> str:  # k is 1-based
        return f"c[{k}]" if trim is None else f"trim(c[{k}], {sql_string(trim)})"

    def decoded(k: int) -> str:
        return f"try(url_decode({cell(k)}))"

    parts = []
    for k, name in enumerate(header.names, start=2):
        key = sql_string("," + json.dumps(name, ensure_ascii=False) + ":[")
        parts.append(
            f"CASE WHEN c[{k}] IS NULL OR {cell(k)} = '' THEN '' "
            f"ELSE {key} || to_json({decoded(k)}) || suffix END"
        )
    body = " || ".join(parts) if parts else "''"
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
           CASE WHEN n > {width} OR id IS NULL OR id = '' OR {bad_id} THEN NULL
                ELSE '{{' || substr({body}, 2) || '}}' END
    FROM (
        SELECT c, len(c) AS n, $2 + i AS line_no, $3 + $2 + i AS seq, {decoded(1)} AS id,
               ',' || ($3 + $2 + i) || $4 AS suffix
        FROM (
            SELECT string_split(line, ',') AS c, i
            FROM (SELECT unnest(ls) AS line, unnest(range(len(ls))) AS i
                  FROM (SELECT string_split(replace(decode($1), '+', '%20'), chr(10)) AS ls))
            WHERE NOT ({blank})
        )
    )
    """


class _Queries:
    """DuckDB connections (one per thread) and the query text per header and trim mode."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.texts: dict[tuple[batchfile.Header, str | None], str] = {}

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = duckdb.connect(config={"threads": 1})
        return connection

    def text(self, header: batchfile.Header, trim: str | None) -> str:
        key = (header, trim)
        if key not in self.texts:
            self.texts[key] = build_query(header, trim)
        return self.texts[key]


_queries = _Queries()


def decode_unit(
    body: bytes,
    first_line: int,
    header: batchfile.Header,
    batch_seq: int,
    now_ms: int,
) -> tuple[list[DecodedRow], list[FailedRow]]:
    """Decode the lines of ``body`` (line ``first_line`` first); blank lines are skipped."""
    failures: list[FailedRow] = []
    set_aside: list[DecodedRow] = []
    base = batch_seq * SEQ_SPAN
    if b"\r" in body or _BAD_PERCENT.search(body):
        body = _pull_bad_lines(body, first_line, header, base, now_ms, set_aside, failures)
    trim = " \t" if b"\t" in body else " " if b" " in body else None
    arguments = [body, first_line, base, f",{int(now_ms)}]"]
    try:
        found = _queries.connection.execute(_queries.text(header, trim), arguments).fetchall()
    except duckdb.ConversionException:  # raw bytes that are not UTF-8: rare
        body = _pull_bad_lines(
            body, first_line, header, base, now_ms, set_aside, failures, check_utf8=True
        )
        arguments[0] = body
        found = _queries.connection.execute(_queries.text(header, trim), arguments).fetchall()
    rows = [
        DecodedRow(line, id_, seq, attrs) for line, id_, seq, attrs in found if attrs is not None
    ]
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
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


def first_cell(line: bytes) -> str:
    """The id of a failed row as well as it can be read, for the failure report."""
    raw = line.split(b",", 1)[0]
    try:
        return batchfile.decode_cell(raw)
    except batchfile.CellError:
        return raw.strip().decode("utf-8", errors="replace")
