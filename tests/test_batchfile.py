"""The batch= format: header rules, cell decoding, row failures, and encoding round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profilebase import batchfile
from profilebase.errors import BatchRejected
from profilebase.ids import check_id
from profilebase.models import KeyKind


def test_seed_sample_parses():
    """The documentation's sample batch decodes to the values it shows."""
    body = b"batch=pcId,param1,param2,param3,param4\n123,value1\n124,value1,,,value4\n125,,value2\n126,value1,value2,value3,value4\n"
    header, rows = batchfile.parse(body)
    assert header.key_kind is KeyKind.PC_ID
    assert header.names == ("param1", "param2", "param3", "param4")
    assert [(n, r.id, r.values) for n, r in rows] == [
        (2, "123", {"param1": "value1"}),
        (3, "124", {"param1": "value1", "param4": "value4"}),
        (4, "125", {"param2": "value2"}),
        (
            5,
            "126",
            {"param1": "value1", "param2": "value2", "param3": "value3", "param4": "value4"},
        ),
    ]


def test_header_names_are_decoded_and_trimmed():
    """Old docs put spaces after commas; names are decoded like cells and trimmed."""
    header = batchfile.parse_header(b"pcId, param1 , caf%C3%A9,a+b")
    assert header.names == ("param1", "café", "a b")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"ecid,a", "first header must be exactly `pcId` or `thirdPartyId`"),
        (b"PCID,a", "first header must be exactly"),
        (b"marketingCloudVisitorId,a", "Experience Cloud ID"),
        (b"pcId,profile.a", "without the `profile.` prefix"),
        (b"pcId,a,a", "repeats the attribute name 'a'"),
        (b"pcId,a,,b", "column 3 is empty"),
        (b"pcId,%zz", "cannot be decoded"),
    ],
)
def test_bad_headers_reject_the_batch(line: bytes, fragment: str):
    """Each malformed header rejects the batch with a message naming the problem."""
    with pytest.raises(BatchRejected) as info:
        batchfile.parse_header(line)
    assert fragment in info.value.message


def test_missing_prefix_rejects():
    with pytest.raises(BatchRejected, match="must start with `batch=`"):
        batchfile.split_prefix(b"pcId,a\n1,x\n")


def test_bom_and_crlf_are_tolerated():
    header, rows = batchfile.parse(b"\xef\xbb\xbfbatch=thirdPartyId,a\r\nx1,v\r\n\r\n  \nx2,w\r\n")
    assert header.key_kind is KeyKind.THIRD_PARTY_ID
    assert [(n, r.id, r.values) for n, r in rows] == [(2, "x1", {"a": "v"}), (5, "x2", {"a": "w"})]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"a%20b", "a b"),
        (b"a+b", "a b"),
        (b"a%2Bb", "a+b"),
        (b"  padded\t", "padded"),
        (b"%20kept%20", " kept "),
        (b"%E6%9D%B1%E4%BA%AC", "東京"),
        (b"50%25", "50%"),
        (b"a%2Cb", "a,b"),
    ],
)
def test_cells_decode(raw: bytes, value: str):
    assert batchfile.decode_cell(raw) == value


@pytest.mark.parametrize(
    ("kind", "line", "fragment"),
    [
        ("thirdPartyId", b"x,1,2,3", "row has 4 cells but the header has 3 columns"),
        ("thirdPartyId", b"x,%zz", "invalid percent-encoding"),
        ("thirdPartyId", b"x,abc%", "invalid percent-encoding"),
        ("thirdPartyId", b"x,%C3", "invalid UTF-8"),
        ("thirdPartyId", b",v", "empty id"),
        ("thirdPartyId", b"a%2Bb,v", "must not contain '+' or '/'"),
        ("thirdPartyId", b"a%2Fb,v", "must not contain '+' or '/'"),
        ("pcId", b"1.2.3,v", "at most one '.'"),
        ("pcId", b"x" * 129 + b",v", "129 characters long"),
    ],
)
def test_row_failures(kind: str, line: bytes, fragment: str):
    """Each row-level problem fails that row with a reason."""
    header = batchfile.Header(KeyKind(kind), ("a", "b"))
    with pytest.raises(batchfile.CellError) as info:
        batchfile.parse_row(line, header)
    assert fragment in str(info.value)


def test_valid_ids_pass():
    header = batchfile.Header(KeyKind.PC_ID, ("a",))
    assert (
        batchfile.parse_row(b"1368007744041-575948.01_00,v", header).id
        == "1368007744041-575948.01_00"
    )
    assert batchfile.parse_row(b"x" * 128 + b",v", header).id == "x" * 128


text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)


@given(
    names=st.lists(
        text.filter(lambda s: s.strip() == s and s and not s.startswith("profile.")),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    data=st.data(),
)
def test_encode_then_parse_round_trips(names: list[str], data: st.DataObject):
    """Whatever UTF-8 text is encoded comes back unchanged (commas, %, +, newlines, emoji)."""
    ids = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12).filter(
        lambda s: s.strip() == s and check_id(KeyKind.THIRD_PARTY_ID, s) is None
    )
    rows = data.draw(
        st.lists(
            st.tuples(
                ids,
                st.lists(text.map(lambda s: s.strip()), min_size=len(names), max_size=len(names)),
            ),
            max_size=8,
        )
    )
    body = batchfile.encode("thirdPartyId", names, [[i, *values] for i, values in rows])
    header, parsed = batchfile.parse(body)
    assert list(header.names) == names
    assert [(r.id, r.values) for _, r in parsed] == [
        (i, {n: v for n, v in zip(names, values, strict=False) if v}) for i, values in rows
    ]
