"""atheris fuzz targets for the batch parser and the fast decoder.

Run one for a while (tests/test_fuzz.py runs each for a few seconds)::

    .venv/bin/python tests/fuzz_targets.py parser -max_total_time=600 corpus/
    .venv/bin/python tests/fuzz_targets.py decoder -max_total_time=600 corpus/

Arguments after the target's name go to libFuzzer. A failing input is written to
``crash-<sha1>`` (or ``-artifact_prefix``) and can be replayed by passing that file
in place of the corpus directory.

- ``parser``: ``batchfile.parse`` and ``ingest.Intake`` (fed in chunks) raise nothing
  but ``BatchRejected`` (batch errors, ``BatchTooLarge`` included) and report row
  problems as ``CellError`` outcomes; both take or refuse the same bodies, with the
  same header and row count.
- ``decoder``: for every unit the intake cuts, ``decoder.decode_unit`` (DuckDB) and
  the reference rules of ``batchfile`` give the same rows and the same failures.

The first byte of an input picks how it is fed (the body as is, or behind a
``batch=…`` prefix, so that the fuzzer reaches rows quickly) and the chunk size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["profilebase"]):
    from test_decoder import fast, reference  # the decoder's own test states the agreement

    from profilebase import batchfile, ids  # noqa: F401 (ids: instrumented
    from profilebase.errors import BatchRejected
    from profilebase.models import Limits
    from profilebase.server import ingest

#: No byte or row limit within reach of an input, so the intake refuses exactly what parse does.
LIMITS = Limits(
    max_batch_bytes=10**9, max_batch_rows=10**9, rows_per_day=10**9, max_profile_bytes=10**9
)
UNIT_ROWS = 5
#: One DuckDB query per unit takes milliseconds: fewer, larger units for the decoder.
DECODER_UNIT_ROWS = 40
PREFIXES = [b"", b"batch=pcId,", b"batch=thirdPartyId,", b"batch="]
SEEDS = [
    b"\x02a,b\ncrm-1,gold,M%C3%BCnchen\ncrm-2,,x\n",
    b"\x05tier\r\n1368007744041-575948.01_00,gold\r\n a%2Fb , silver \n\n1.2.3,x\n",
    b"\x00batch=thirdPartyId,tier,%F0%9F%99%82\ncrm+1,%ZZ,%ED%A0%80\n%00,a,b,c\n",
    b"\x00\xef\xbb\xbfbatch=pcId,a\nx\ry,1\n" + b"x" * 130 + b",v\n.,v\n",
    b"\x07q,profile.q\n",
    b"\x03thirdPartyId,a,a\n",
]
#: Tokens of the format, for libFuzzer's ``-dict``.
DICTIONARY = [
    b"batch=",
    b"pcId",
    b"thirdPartyId",
    b"profile.",
    b",",
    b"\n",
    b"\r\n",
    b"\r",
    b"%",
    b"%2C",
    b"%2F",
    b"%2B",
    b"%20",
    b"%25",
    b"%00",
    b"%0A",
    b"%C3%A9",
    b"%ED%A0%80",
    b"%C0%AF",
    b"%F0%9F%99%82",
    b"+",
    b"/",
    b".",
    b"..",
    b"\xef\xbb\xbf",
    b"\xff",
    b" ",
    b"\t",
]


def body_and_chunk(data: bytes) -> tuple[bytes, int]:
    if not data:
        return b"", 1
    return PREFIXES[data[0] & 3] + data[1:], 1 + (data[0] >> 2)


def intake(body: bytes, chunk: int, unit_rows: int = UNIT_ROWS) -> ingest.ReadBatch:
    reader = ingest.Intake(LIMITS, unit_rows)
    try:
        for start in range(0, len(body), chunk):
            reader.feed(body[start : start + chunk])
        return reader.finish()
    except BaseException:
        reader.units.close()
        raise


def parser(data: bytes) -> None:
    """The parser raises only its own errors, and streaming agrees with the whole-body parse."""
    body, chunk = body_and_chunk(data)
    try:
        header, outcomes = batchfile.parse(body)
    except BatchRejected:
        header, outcomes = None, []
    else:
        assert all(isinstance(o, batchfile.Row | batchfile.CellError) for _, o in outcomes)
    try:
        read = intake(body, chunk)
    except BatchRejected:
        assert header is None, "the intake refused a batch that parse takes"
        return
    read.units.close()
    assert header is not None, "the intake took a batch that parse refuses"
    assert read.header == header
    assert read.rows == len(outcomes)


def decoder_agrees(data: bytes) -> None:
    """Every unit decodes to the same rows and failures by DuckDB as by the reference."""
    body, chunk = body_and_chunk(data)
    try:
        read = intake(body, chunk, unit_rows=DECODER_UNIT_ROWS)
    except BatchRejected:
        return
    try:
        for unit in read.units:
            expected = reference(unit.body, unit.first_line, read.header, 7)
            got = fast(unit.body, unit.first_line, read.header, 7)
            assert got == expected, (unit.body, got, expected)
    finally:
        read.units.close()


TARGETS = {"parser": parser, "decoder": decoder_agrees}


def main(argv: list[str]) -> None:
    """``fuzz_targets.py TARGET [libFuzzer flags] [corpus dirs]``: empty corpus directories
    get the seeds, and a ``-dict=FILE`` that does not exist gets the format's tokens."""
    target = TARGETS[argv[1]]
    for arg in argv[2:]:
        if arg.startswith("-dict=") and not Path(arg[6:]).exists():
            Path(arg[6:]).write_text("".join(f'"{escape(token)}"\n' for token in DICTIONARY))
        elif not arg.startswith("-") and Path(arg).is_dir() and not any(Path(arg).iterdir()):
            for n, seed in enumerate(SEEDS):
                (Path(arg) / f"seed-{n}").write_bytes(seed)
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


def escape(token: bytes) -> str:
    """A token as libFuzzer's dictionary spells it: printable ASCII, else \\xNN."""
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)


if __name__ == "__main__":
    main(sys.argv)
