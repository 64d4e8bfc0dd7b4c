"""Line ends: LF, CRLF and a lone CR each end a line, in the reference, the intake and the decoder."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers import attributes, batch_id_of, status, submit
from hypothesis import given
from hypothesis import strategies as st

from profilebase import batchfile
from profilebase.models import SEQ_SPAN
from profilebase.server.decoder import decode_unit
from profilebase.server.ingest import Intake
from profilebase.server.settings import Settings, client_limits

LIMITS = client_limits(
    Settings(
        max_batch_bytes=10**6, max_batch_rows=1000, rows_per_day=10**6, max_profile_bytes=10**6
    ),
    {},
)

ROWS = [("crm-1", "gold", "M%C3%BCnchen"), ("crm-2", "silver", ""), ("crm-3", "", "Z%C3%BCrich")]


def body_with(line_end: bytes) -> bytes:
    lines = [b"batch=thirdPartyId,tier,city"] + [",".join(row).encode() for row in ROWS]
    return line_end.join(lines) + line_end


def through_intake(body: bytes, chunks: list[bytes] | None = None, unit_rows: int = 2):
    """What the server makes of ``body``: the header and, per row, (line, id, values) or
    (line, reason), decoded by the worker's decoder from the intake's units."""
    intake = Intake(LIMITS, unit_rows)
    for chunk in chunks or [body]:
        intake.feed(chunk)
    read = intake.finish()
    outcomes = []
    for unit in read.units:
        rows, failures = decode_unit(unit.body, unit.first_line, read.header, 1, 0)
        outcomes += [(row.line, row.id, row.attrs) for row in rows]
        outcomes += [(failure.line, failure.reason) for failure in failures]
    read.units.close()
    return read.header, read.rows, sorted(outcomes)


def reference(body: bytes):
    """What ``batchfile.parse`` makes of ``body``, in the same shape."""
    header, parsed = batchfile.parse(body)
    outcomes = []
    for line, outcome in parsed:
        if isinstance(outcome, batchfile.CellError):
            outcomes.append((line, str(outcome)))
        else:
            seq = SEQ_SPAN + line  # batch 1
            attrs = {name: [value, seq, 0] for name, value in outcome.values.items()}
            outcomes.append((line, outcome.id, attrs))
    return header, len(parsed), sorted(outcomes)


def as_comparable(result):
    """Attributes as dicts, so that key order does not matter."""
    header, count, outcomes = result
    return header, count, [(o[0], o[1], json.loads(o[2])) if len(o) == 3 else o for o in outcomes]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_end_reads_the_same_rows(line_end: bytes):
    """A body with LF, CRLF or lone-CR line ends is the same three rows, in the reference and
    through the intake and the decoder; header names never keep a CR."""
    header, count, outcomes = as_comparable(through_intake(body_with(line_end)))
    assert header.names == ("tier", "city")
    assert count == 3
    assert [o[:2] for o in outcomes] == [(2, "crm-1"), (3, "crm-2"), (4, "crm-3")]
    assert (header, count, outcomes) == reference(body_with(line_end))
    assert as_comparable(through_intake(body_with(b"\n"))) == (header, count, outcomes)


def test_mixed_line_ends_and_blank_lines_count_alike():
    """CRLF, CR and LF mixed, with blank lines written each way, number lines alike."""
    body = b"batch=thirdPartyId,a\r\nx1,1\r\ry2,2\n\r\nz3,3\r\r\nw4,4"
    header, count, outcomes = as_comparable(through_intake(body))
    assert [o[:2] for o in outcomes] == [(2, "x1"), (4, "y2"), (6, "z3"), (8, "w4")]
    assert (header, count, outcomes) == reference(body)


line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])
cell = st.sampled_from([b"a", b"%C3%A9", b"", b" b ", b"%0D", b"%0A", b"x\ty"])


@given(
    rows=st.lists(st.lists(cell, min_size=1, max_size=3), max_size=8),
    ends=st.lists(line_end, min_size=1, max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_any_line_ends_in_any_chunking_agree_with_the_reference(rows, ends, cuts):
    """However line ends are mixed and the body is cut into chunks (a CRLF split between two
    chunks included), the intake and the decoder read what ``batchfile.parse`` reads."""
    lines = [b"batch=thirdPartyId,a,b"] + [b"id%d," % i + b",".join(r) for i, r in enumerate(rows)]
    body = b"".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=False)]
    assert as_comparable(through_intake(body, chunks)) == reference(body)


def test_a_lone_cr_body_is_applied_not_an_empty_batch(http: httpx.Client, drain):
    """A batch written with lone CRs (old Mac, some Excel exports) applies every row."""
    response = submit(http, body_with(b"\r"))
    assert response.status_code == 200, response.text
    batch_id = batch_id_of(response)
    drain()
    fields = status(http, batch_id)
    assert fields["status"] == "complete"
    assert fields["batchSize"] == fields["consumedCount"] == fields["successfulUpdates"] == "3"
    assert attributes(http, "crm-1") == {"tier": "gold", "city": "München"}
    assert attributes(http, "crm-3") == {"city": "Zürich"}
    extended = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()
    assert extended["attributes"] == ["tier", "city"]
