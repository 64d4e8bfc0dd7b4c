"""Reading CSV exports and cutting them into batches: no server involved."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profilebase import batchfile
from profilebase.client.csvinput import CsvFile, detect_delimiter
from profilebase.client.push import encode, map_columns, plan, records_of_rows, write_errors
from profilebase.errors import BatchRejected, InputError
from profilebase.models import Limits

BIG = Limits(
    max_batch_bytes=50_000_000, max_batch_rows=500_000, rows_per_day=10**6, max_profile_bytes=10**6
)


def write(tmp_path: Path, data: bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("line", "delimiter"),
    [
        ("id,a,b\r\n", ","),
        ("id;a;b\n", ";"),
        ("id\ta\tb\n", "\t"),
        ('"id;x",a,b\n', ","),
        ('id;"a,b";c\n', ";"),
        ("id\n", ","),
    ],
)
def test_delimiter_is_found_from_the_header(line: str, delimiter: str):
    """The delimiter is the most frequent of , ; and tab outside quotes in the header."""
    assert detect_delimiter(line) == delimiter


def test_excel_style_export(tmp_path: Path):
    """BOM, semicolons, CRLF, quotes, embedded delimiter and newlines, non-Latin text."""
    data = (
        "\ufeffKunde;Stadt;Notiz\r\n"
        '1;München;"sagt ""hallo""; geht"\r\n'
        '2;東京;"zwei\r\nZeilen"\r\n'
        "\r\n"
        "3;Zürich;\r\n"
    ).encode("utf-8")
    source = CsvFile(write(tmp_path, data))
    assert source.delimiter == ";" and source.header == ("Kunde", "Stadt", "Notiz")
    records = list(source.records())
    assert [(r.number, r.line) for r in records] == [(1, 2), (2, 3), (3, 6)]
    assert records[0].cells == ("1", "München", 'sagt "hallo"; geht')
    assert records[1].cells == ("2", "東京", "zwei\r\nZeilen")
    assert list(source.records()) == records  # readable again


def test_gzip_is_recognised_by_its_bytes(tmp_path: Path):
    path = write(tmp_path, gzip.compress(b"id,a\n1,x\n"), "export.csv")
    source = CsvFile(path)
    assert [r.cells for r in source.records()] == [("1", "x")]


def test_given_delimiter_wins(tmp_path: Path):
    source = CsvFile(write(tmp_path, b"id,a;b\n1,x;y\n"), delimiter=";")
    assert source.header == ("id,a", "b")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"id,a\n1,M\xfcnchen\n", "is not UTF-8"),
        (b"", "is empty"),
        (b"\n1,2\n", "has no header"),
        (b'id,a\n1,"unterminated\n2,x\n', "is not valid CSV near line"),
        (b'id,a\n1,"q"x\n', "is not valid CSV near line 2"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, data: bytes, fragment: str):
    with pytest.raises(InputError, match=fragment):
        list(CsvFile(write(tmp_path, data)).records())


def test_missing_file(tmp_path: Path):
    with pytest.raises(InputError, match="Cannot open"):
        CsvFile(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("header", "kwargs", "id_column", "names", "ignored"),
    [
        (("email", "thirdPartyId", "tier"), {}, "thirdPartyId", ("email", "tier"), ()),
        (("x", "MBOX3RDPARTYID", "a"), {}, "MBOX3RDPARTYID", ("x", "a"), ()),
        (("customer", "a"), {}, "customer", ("a",), ()),
        (("tntId", "a"), {"key": "pcId"}, "tntId", ("a",), ()),
        (("c", "a", "b"), {"id_column": "b"}, "b", ("c", "a"), ()),
        (("id", "a", "b", "c"), {"columns": ["c", "a"]}, "id", ("c", "a"), ("b",)),
        (("id", "a", "reason"), {}, "id", ("a",), ("reason",)),
        (("id", "a", ""), {}, "id", ("a",), ()),
        (("id", "reason", "a"), {}, "id", ("reason", "a"), ()),
    ],
)
def test_columns_are_mapped(header, kwargs, id_column, names, ignored):  # type: ignore[no-untyped-def]
    """The id column by name or alias, else the first; attributes by default all the others."""
    mapping = map_columns(header, **kwargs)
    assert mapping.id_column == id_column and mapping.names == names
    assert mapping.ignored == ignored


@pytest.mark.parametrize(
    ("header", "kwargs", "error", "fragment"),
    [
        (("id", "a"), {"id_column": "nope"}, InputError, "There is no id column 'nope'"),
        (("id", "a"), {"columns": ["b"]}, InputError, "There is no attribute column 'b'"),
        (("id", "a"), {"columns": ["id"]}, InputError, "is the id column"),
        (("id", "profile.a"), {}, BatchRejected, "without the `profile.` prefix"),
        (("id", "a", "a"), {}, BatchRejected, "repeats the attribute name"),
        (("id", "", "a"), {}, BatchRejected, "is empty"),
    ],
)
def test_bad_columns_are_refused(header, kwargs, error, fragment):  # type: ignore[no-untyped-def]
    """The header is checked by the server's own rules before anything is sent."""
    with pytest.raises(error, match=fragment.replace(".", r"\.").replace("`", "`")):
        map_columns(header, **kwargs)


def test_rows_are_encoded_and_round_trip(tmp_path: Path):
    """Each part decodes, by the server's parser, to exactly the input's values."""
    data = 'id,name,note\n1,"a,b",x+y%z\n2,"line\nbreak",\n3,Łódź 東京,"  spaced  "\n'
    source = CsvFile(write(tmp_path, data.encode("utf-8")))
    with plan(source.records(), map_columns(source.header), BIG) as the_plan:
        assert len(the_plan.parts) == 1 and the_plan.rows == 3
        header, rows = batchfile.parse(the_plan.parts[0].body())
        assert header.names == ("name", "note")
        assert [(n, r.id, r.values) for n, r in rows] == [  # type: ignore[union-attr]
            (2, "1", {"name": "a,b", "note": "x+y%z"}),
            (3, "2", {"name": "line\nbreak"}),
            (4, "3", {"name": "Łódź 東京", "note": "  spaced  "}),
        ]


def test_split_by_rows(tmp_path: Path):
    rows = [{"id": f"r{i}", "a": "v"} for i in range(7)]
    header, records = records_of_rows(rows)
    limits = Limits(
        max_batch_bytes=10**6, max_batch_rows=3, rows_per_day=10**6, max_profile_bytes=1
    )
    with plan(records, map_columns(header), limits) as the_plan:
        assert [p.rows for p in the_plan.parts] == [3, 3, 1]
        assert [p.record_of_line(2) for p in the_plan.parts] == [1, 4, 7]


def test_split_by_encoded_bytes(tmp_path: Path):
    """The byte limit counts the percent-encoded body: Korean grows about threefold."""
    rows = [{"id": f"r{i}", "name": "한국어"} for i in range(10)]  # 9 bytes UTF-8, 27 encoded
    header, records = records_of_rows(rows)
    limits = Limits(
        max_batch_bytes=100, max_batch_rows=1000, rows_per_day=10**6, max_profile_bytes=1
    )
    with plan(records, map_columns(header), limits) as the_plan:
        bodies = [p.body() for p in the_plan.parts]
        assert all(len(body) < 100 for body in bodies)
        assert [p.rows for p in the_plan.parts] == [2, 2, 2, 2, 2]
        assert sum(len(batchfile.parse(body)[1]) for body in bodies) == 10


def test_rows_refused_before_sending(tmp_path: Path):
    """Rows the server would fail are kept back, each with the server's reason."""
    data = b"id,a\nok,1\n,2\nplus+,3\nslash/,4\nwide,5,6\nshort\n"
    source = CsvFile(write(tmp_path, data))
    limits = Limits(
        max_batch_bytes=40, max_batch_rows=1000, rows_per_day=10**6, max_profile_bytes=1
    )
    rows = list(source.records())
    with plan(rows, map_columns(source.header), limits) as the_plan:
        assert the_plan.rows == 2 and the_plan.records == 6
        reasons = {f.record: f.reason for f in the_plan.failures}
        assert set(reasons) == {2, 3, 4, 5}
        assert "empty id" in reasons[2] and "'+'" in reasons[3] and "'/'" in reasons[4]
        assert "the row has 3 cells but the header has 2 columns" in reasons[5]


def test_a_row_too_large_for_any_batch_is_refused():
    header, records = records_of_rows([{"id": "x", "a": "y" * 100}, {"id": "z", "a": "1"}])
    limits = Limits(max_batch_bytes=60, max_batch_rows=10, rows_per_day=10**6, max_profile_bytes=1)
    with plan(records, map_columns(header), limits) as the_plan:
        assert the_plan.rows == 1
        assert "too large for any batch" in the_plan.failures[0].reason


def test_errors_file_round_trip(tmp_path: Path):
    """The errors file keeps the input's columns and delimiter; `reason` is not pushed back."""
    path = tmp_path / "errors.csv"
    write_errors(path, ("id", "note"), [(("a/b", "x;y"), "bad id"), (("c",), "short")], ";")
    assert path.read_bytes() == b'id;note;reason\r\na/b;"x;y";bad id\r\nc;;short\r\n'
    again = CsvFile(path)
    assert again.delimiter == ";" and map_columns(again.header).names == ("note",)


def test_rows_as_mappings():
    """The SDK's in-memory rows: header in order of first appearance, None as empty."""
    header, records = records_of_rows([{"id": 1, "a": None}, {"id": 2, "b": "x"}])
    assert header == ("id", "a", "b")
    assert [r.cells for r in records] == [("1", "", ""), ("2", "", "x")]


@given(st.text())
def test_fast_encoding_equals_the_reference(value: str):
    """push's encoder gives exactly batchfile.encode_cell's output, faster."""
    assert encode(value) == batchfile.encode_cell(value)
