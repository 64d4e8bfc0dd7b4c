"""Turn a work unit's raw lines into rows ready to store.

``decode_unit`` is the one entry point the worker calls. It follows the rules
of ``batchfile`` exactly (the tests check both agree on every input); this
module only decides how fast that happens.
"""

from __future__ import annotations

from profilebase import batchfile
from profilebase.models import SEQ_SPAN, FailedRow
from profilebase.storage.base import DecodedRow
from profilebase.storage.merge import dump_attrs


def raw_text(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


def decode_unit(
    body: bytes,
    first_line: int,
    header: batchfile.Header,
    batch_seq: int,
    now_ms: int,
) -> tuple[list[DecodedRow], list[FailedRow]]:
    """Decode the lines of ``body`` (line ``first_line`` first); blank lines are skipped."""
    rows: list[DecodedRow] = []
    failures: list[FailedRow] = []
    base = batch_seq * SEQ_SPAN
    for number, line in enumerate(body.split(b"\n"), start=first_line):
        if batchfile.is_blank(line):
            continue
        try:
            row = batchfile.parse_row(line, header)
        except batchfile.CellError as exc:
            failures.append(FailedRow(number, first_cell(line), str(exc), raw_text(line)))
            continue
        seq = base + number
        attrs = dump_attrs({name: [value, seq, now_ms] for name, value in row.values.items()})
        rows.append(DecodedRow(number, row.id, seq, attrs))
    return rows, failures


def first_cell(line: bytes) -> str:
    """The id of a failed row as well as it can be read, for the failure report."""
    raw = line.split(b",", 1)[0]
    try:
        return batchfile.decode_cell(raw)
    except batchfile.CellError:
        return raw.strip().decode("utf-8", errors="replace")
