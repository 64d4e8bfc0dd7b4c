"""The fast decoder agrees with the reference rules of batchfile on every input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profilebase import batchfile
from profilebase.models import SEQ_SPAN, KeyKind
from profilebase.server.decoder import decode_unit

NOW = 1_700_000_000_000


def reference(body: bytes, first_line: int, header: batchfile.Header, batch_seq: int):
    """Line by line with batchfile: (rows as (line, id, seq, attrs dict), failures as (line, reason))."""
    rows, failures = [], []
    for number, line in enumerate(body.split(b"\n"), start=first_line):
        if batchfile.is_blank(line):
            continue
        try:
            row = batchfile.parse_row(line, header)
        except batchfile.CellError as exc:
            failures.append((number, str(exc)))
            continue
        seq = batch_seq * SEQ_SPAN + number
        rows.append((number, row.id, seq, {n: [v, seq, NOW] for n, v in row.values.items()}))
    return rows, failures


def fast(body: bytes, first_line: int, header: batchfile.Header, batch_seq: int):
    rows, failures = decode_unit(body, first_line, header, batch_seq, NOW)
    return (
        [(r.line, r.id, r.seq, json.loads(r.attrs)) for r in rows],
        [(f.line, f.reason) for f in failures],
    )


PIECES = [
    "a",
    "Z",
    "0",
    ",",
    "%20",
    "+",
    "%2B",
    "%2b",
    "%2C",
    "%",
    "%4",
    "%ZZ",
    "%C3",
    "%C3%A9",
    "%E6%9D%B1",
    "%ED%A0%80",
    "%C0%80",
    "%00",
    "%1E",
    "%0A",
    "%22",
    "%5C",
    '"',
    "\\",
    "'",
    " ",
    "\t",
    "\r",
    "é",
    "東",
    "🙂",
    "%F0%9F%99%82",
    "%2F",
    "/",
    ".",
    "..",
    "x" * 130,
]
line_text = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.one_of(line_text, st.just(""), st.just("  ")), min_size=1, max_size=15),
    kind=st.sampled_from(list(KeyKind)),
    raw_bytes=st.booleans(),
)
def test_fast_decoder_matches_reference(lines: list[str], kind: KeyKind, raw_bytes: bool):
    header = batchfile.Header(kind, ("a", "b'", 'é "q"'))
    body = "\n".join(lines).encode("utf-8")
    if raw_bytes:
        body += b"\nid,\xff\xfe"  # raw bytes that are not UTF-8
    assert fast(body, 7, header, 3) == reference(body, 7, header, 3)


@pytest.mark.parametrize(
    "body",
    [
        b"x,1,2,3,4\n,v\nx%2By,v\nx,%zz\nx,%C3\nok,%20padded%20,+\n",
        b"  id1 ,\ta\t, b \r\nid2,,%E6%9D%B1\r\n\r\n",
        b"id,\xff\n\nid2,v\n",
    ],
)
def test_examples_match_reference(body: bytes):
    header = batchfile.Header(KeyKind.THIRD_PARTY_ID, ("a", "b", "c"))
    assert fast(body, 2, header, 1) == reference(body, 2, header, 1)


def test_pc_id_rules_match_reference():
    header = batchfile.Header(KeyKind.PC_ID, ("a",))
    body = b"1.2.3,v\n" + b"y" * 129 + b",v\n" + b"y" * 128 + b",v\n1368007744041-575948.01_00,v\n"
    assert fast(body, 2, header, 1) == reference(body, 2, header, 1)
