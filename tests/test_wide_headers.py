"""Headers of any width that fits the byte limit are applied; a dry run gives the same verdicts."""

from __future__ import annotations

import httpx
import pytest
from helpers import attributes, batch_id_of, status, submit
from test_decoder import fast, reference

from profilebase import batchfile
from profilebase.models import KeyKind
from profilebase.server import decoder

WIDTHS = [1_000, 10_000, 100_000]


def names(width: int) -> list[str]:
    return [f"a{i}" for i in range(width)]


@pytest.mark.parametrize("width", WIDTHS)
def test_wide_header_decodes_like_the_reference(width: int):
    """Sparse rows, a full row, a row one cell too wide and a bad cell far right decode
    exactly as the reference decodes them, whatever the width."""
    header = batchfile.Header(KeyKind.THIRD_PARTY_ID, tuple(names(width)))
    sparse = b"s1," + b"," * (width - 2) + b"last"
    full = b"f1," + b",".join(b"v%d" % i for i in range(width))
    body = b"\n".join(
        [
            sparse,
            full,
            b"w1," + b"x," * width + b"x",
            b"b1," + b"," * (width // 2) + b"%ZZ",
            b"e1",
            b"u1," + b"," * (width - 1) + b"%C3%BC",
        ]
    )
    assert fast(body, 2, header, 9) == reference(body, 2, header, 9)


def wide_body(width: int) -> bytes:
    """A sparse row, a full row of one-character values, an id-only row."""
    header = batchfile.encode_header(KeyKind.THIRD_PARTY_ID, names(width))
    sparse = "sparse," + "first" + "," * (width // 2) + "middle" + "," * (width // 2 - 1) + "last"
    full = "full," + ",".join("1" for _ in range(width))
    return "\n".join([header, sparse, full, "bare"]).encode() + b"\n"


@pytest.mark.parametrize("width", WIDTHS)
def test_wide_headers_are_applied(http: httpx.Client, drain, width: int):
    """1,000, 10,000 and 100,000 attribute columns complete on both backends; only a row too
    large for a profile (2000 KB) fails, and a dry run names the same rows."""
    body = wide_body(width)
    dry = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=true", content=body)
    assert dry.status_code == 200, dry.text
    response = submit(http, body)
    assert response.status_code == 200, response.text
    batch_id = batch_id_of(response)
    drain()
    fields = status(http, batch_id)
    assert fields["status"] == "complete"
    assert fields["batchSize"] == fields["consumedCount"] == "3"
    full_fits = width * len(',"a99999":["1",100000000000,1700000000000]') < 2000 * 1024
    failed = [] if full_fits else [3]
    assert int(fields["failedUpdates"]) == len(failed)
    assert int(fields["successfulUpdates"]) == 3 - len(failed)
    report = dry.json()
    assert report["batchSize"] == 3 and report["wouldFail"] == len(failed)
    assert [f["line"] for f in report["failures"]] == failed
    rows = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}/failures").json()
    assert [row["line"] for row in rows["failures"]] == failed
    for row in [*rows["failures"], *report["failures"]]:
        assert "max_profile_bytes" in row["reason"]
    last = f"a{width - 1}"
    assert attributes(http, "sparse") == {"a0": "first", f"a{width // 2}": "middle", last: "last"}
    assert attributes(http, "bare") == {}
    if full_fits:
        assert len(attributes(http, "full") or {}) == width


def test_a_unit_too_large_for_one_slice_is_applied_in_parts(
    http: httpx.Client, drain, monkeypatch: pytest.MonkeyPatch
):
    """A unit cut into several slices is applied part by part, with exact counts, each row
    once; the failures of every part are kept."""
    monkeypatch.setattr(decoder, "SLICE_CELLS", 5)
    monkeypatch.setattr(decoder, "SLICE_BYTES", 64)
    monkeypatch.setattr(decoder, "LONG_LINE", 40)
    lines = [f"p{i},{i},{'x' * (i % 7)}" for i in range(45)]
    lines[7] = "p7,%ZZ"
    lines[30] = "p30," + "y" * 50 + ",z"  # a long line: a slice of its own
    lines[31] = "p31,1,2,3"  # one cell too many
    body = ("batch=thirdPartyId,n,x\n" + "\n".join(lines) + "\n").encode()
    batch_id = batch_id_of(submit(http, body))
    drain()
    fields = status(http, batch_id)
    assert fields["status"] == "complete"
    assert fields["batchSize"] == fields["consumedCount"] == "45"
    assert (fields["successfulUpdates"], fields["failedUpdates"]) == ("43", "2")
    assert attributes(http, "p30") == {"n": "y" * 50, "x": "z"}
    assert attributes(http, "p44") == {"n": "44", "x": "xx"}
    failures = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}/failures").json()
    assert [row["line"] for row in failures["failures"]] == [9, 33]
