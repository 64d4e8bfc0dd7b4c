"""Property tests: on arbitrary bytes and header widths the parser, the intake and the decoder
raise nothing but their own row and batch errors, and agree with each other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decoder import fast
from test_decoder import reference as reference_rows

from profilebase import batchfile
from profilebase.errors import BatchRejected
from profilebase.models import SEQ_SPAN, KeyKind
from profilebase.server import decoder
from profilebase.server.decoder import decode_unit
from profilebase.server.ingest import Intake
from profilebase.server.settings import Settings, client_limits

LIMITS = client_limits(
    Settings(
        max_batch_bytes=10**6, max_batch_rows=10**4, rows_per_day=10**6, max_profile_bytes=10**6
    ),
    {},
)
#: Bytes that matter to the format, and some that must not.
PIECES = [b",", b"\n", b"\r", b"\r\n", b"%", b"%2", b"%41", b"%C3%A9", b"%FF", b"%00", b"+",
          b" ", b"\t", b"/", b".", b"a", b"Z9", b"\x00", b"\xff", b"\xc3", b"\xe6\x9d\xb1",
          b"batch=", b"\xef\xbb\xbf", b"pcId", b"thirdPartyId", b"profile.", b"x" * 200]  # fmt: skip
chunks = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=40)
arbitrary = chunks.map(b"".join)


@contextmanager
def small_slices() -> Iterator[None]:
    """Slices of a few bytes and cells, so that every input is cut into many of them."""
    saved = decoder.SLICE_BYTES, decoder.SLICE_CELLS, decoder.LONG_LINE
    decoder.SLICE_BYTES, decoder.SLICE_CELLS, decoder.LONG_LINE = 24, 3, 16
    try:
        yield
    finally:
        decoder.SLICE_BYTES, decoder.SLICE_CELLS, decoder.LONG_LINE = saved


#: What a refused body reads as: both refuse it, with a message of their own (the intake
#: says "no header" where ``parse`` says the first header is not a key).
REFUSED = "refused"


def reference(body: bytes) -> tuple[batchfile.Header, list[tuple]] | str:
    """``batchfile.parse``'s reading: (header, outcomes), or ``REFUSED``."""
    try:
        header, parsed = batchfile.parse(body)
    except BatchRejected:
        return REFUSED
    outcomes: list[tuple] = []
    for line, outcome in parsed:
        if isinstance(outcome, batchfile.CellError):
            outcomes.append((line, str(outcome)))
        else:
            seq = SEQ_SPAN + line
            values = {name: [value, seq, 0] for name, value in outcome.values.items()}
            outcomes.append((line, outcome.id, values))
    return header, sorted(outcomes)


def served(body: bytes, cuts: list[int]) -> tuple[batchfile.Header, list[tuple]] | str:
    """The server's reading: the intake in chunks, then the decoder on every unit."""
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    intake = Intake(LIMITS, 3)
    try:
        for a, b in zip([0, *points], [*points, len(body)], strict=False):
            intake.feed(body[a:b])
        read = intake.finish()
    except BatchRejected:
        intake.units.close()
        return REFUSED
    outcomes: list[tuple] = []
    for unit in read.units:
        rows, failures = decode_unit(unit.body, unit.first_line, read.header, 1, 0)
        outcomes += [(row.line, row.id, json.loads(row.attrs)) for row in rows]
        outcomes += [(failure.line, failure.reason) for failure in failures]
    read.units.close()
    assert read.rows == len(outcomes)
    return read.header, sorted(outcomes)


@settings(max_examples=300, deadline=None)
@given(body=arbitrary, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=5))
def test_intake_and_decoder_read_any_bytes_as_the_reference_does(body: bytes, cuts: list[int]):
    """Any body, in any chunking: the same rows and reasons as ``batchfile.parse``, or refused
    where it refuses; no other exception."""
    assert served(body, cuts) == reference(body)


@settings(max_examples=150, deadline=None)
@given(
    body=arbitrary,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=5),
)
def test_the_same_in_slices_of_a_few_bytes(body: bytes, cuts: list[int]):
    """Cut into many slices and long lines, the decoder still reads what the reference reads."""
    with small_slices():
        assert served(body, cuts) == reference(body)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(min_value=1, max_value=3000),
    kind=st.sampled_from(list(KeyKind)),
    lines=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3100), st.sampled_from(PIECES)), max_size=6
    ),
    sliced=st.booleans(),
)
def test_any_header_width(width: int, kind: KeyKind, lines: list[tuple[int, bytes]], sliced: bool):
    """Headers of any width: rows with any number of cells decode as the reference decodes
    them, raising nothing. Cut into slices of a few bytes, a piece that ends a line is
    repeated at most 100 times: thousands of lines of a byte or two, a slice each, took
    up to 50 s (each slice costs milliseconds, nothing at the real 8 MB)."""
    header = batchfile.Header(kind, tuple(f"a{i}" for i in range(width - 1)))
    body = b"\n".join(
        b"id%d," % n
        + b",".join(piece for _ in range(min(cells, 100) if sliced and b"\n" in piece else cells))
        for n, (cells, piece) in enumerate(lines)
    )
    with small_slices() if sliced else nullcontext():
        assert fast(body, 2, header, 1) == reference_rows(body, 2, header, 1)
