"""The intake reads a body in any chunking to the same batch, and enforces limits while reading."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profilebase.errors import BatchRejected, BatchTooLarge
from profilebase.server import ingest
from profilebase.server.ingest import Intake
from profilebase.server.settings import Settings, client_limits

LIMITS = client_limits(
    Settings(
        max_batch_bytes=10**6, max_batch_rows=1000, rows_per_day=10**6, max_profile_bytes=10**6
    ),
    {},
)


def read(chunks: list[bytes], unit_rows: int = 3):
    intake = Intake(LIMITS, unit_rows)
    for chunk in chunks:
        intake.feed(chunk)
    result = intake.finish()
    units = [(u.first_line, u.row_count, u.body) for u in result.units]
    result.units.close()
    return result.header, result.rows, units


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=False)]


BODIES = [
    b"batch=thirdPartyId,a,b\nx1,1,2\n\ny2,,3\r\nz3,4\n w , 5 \nlast,6",
    b"\xef\xbb\xbfbatch=pcId,a\r\n1,x\r\n2,y\r\n",
    b"batch=thirdPartyId,a\n",
    b"batch=thirdPartyId,a",
]


@pytest.mark.parametrize("body", BODIES)
@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_chunking_reads_the_same(body: bytes, cuts: list[int]):
    """However the body is cut into chunks (a BOM or `batch=` split included), the result is one."""
    assert read(split(body, cuts)) == read([body])


def test_units_keep_line_numbers_and_count_rows():
    """The first unit has half the lines (3 of ``unit_rows`` 6), the next ones all."""
    header, rows, units = read([BODIES[0]], unit_rows=6)
    assert header.names == ("a", "b") and rows == 5
    assert units == [(2, 2, b"x1,1,2\n\ny2,,3"), (5, 3, b"z3,4\n w , 5 \nlast,6")]


@pytest.mark.parametrize(
    ("unit_rows", "sizes"), [(1, [1] * 9), (2, [1, 2, 2, 2, 2]), (4, [2, 4, 3])]
)
def test_the_first_unit_has_half_the_lines(unit_rows: int, sizes: list[int]):
    """So that two workers starting on one batch get out of step (design, "Workers out of
    step"); at least one line."""
    body = b"batch=thirdPartyId,a\n" + b"".join(b"id%d,%d\n" % (n, n) for n in range(9))
    _, rows, units = read([body], unit_rows)
    assert rows == 9 and [count for _, count, _ in units] == sizes
    assert [first for first, _, _ in units] == [2 + sum(sizes[:i]) for i in range(len(sizes))]


def test_split_prefix_is_still_refused():
    intake = Intake(LIMITS, 10)
    intake.feed(b"\xef\xbb")
    with pytest.raises(BatchRejected, match="must start with `batch=`"):
        intake.feed(b"\xbfthirdPartyId,a\n")
    intake.units.close()


def test_line_numbers_never_reach_the_seq_span(monkeypatch: pytest.MonkeyPatch):
    """Rows take seqs batch * SEQ_SPAN + line, so a body with that many lines is refused."""
    monkeypatch.setattr(ingest, "SEQ_SPAN", 10)
    intake = Intake(LIMITS, 100)
    intake.feed(b"batch=thirdPartyId,a\n")
    with pytest.raises(BatchTooLarge, match="10 lines or more"):
        intake.feed(b"\n" * 12)
    intake.units.close()
