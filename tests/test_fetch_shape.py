"""What a fetch prints, made with fewer objects: ``iso_ms`` keeps the texts it made,
``build_profile`` makes each write's moment and provenance once, ``profile_json`` each
``writtenBy`` once; a fetch's reply is made from its row (``fetch_document``) without
any of them. The output is the same as making every one of them anew."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from profilebase import models
from profilebase.models import SEQ_SPAN, iso_ms, iso_ms_of
from profilebase.server.export import fetch_document, profile_json
from profilebase.server.storage.records import ProfileRecord, build_profile, provenance
from profilebase.server.web.responses import json_bytes

moments = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), UTC]),
)


@given(st.lists(moments, min_size=1, max_size=50))
def test_iso_ms_prints_what_isoformat_prints(values: list[datetime]):
    for value in values + values:  # the second time from what it kept
        assert iso_ms(value) == value.astimezone(UTC).isoformat(timespec="milliseconds")


def test_iso_ms_tells_apart_local_times_that_differ_only_in_fold():
    """01:30 on the night New York's clocks go back happens twice, an hour apart; the two
    moments compare equal and hash alike, so a cache keyed on them would print one twice."""
    new_york = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=new_york)
    second = first.replace(fold=1)
    assert iso_ms(first) == "2026-11-01T05:30:00.000+00:00"
    assert iso_ms(second) == "2026-11-01T06:30:00.000+00:00"


def test_iso_ms_keeps_a_bounded_number_of_texts():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(models._ISO_TEXTS_MOST * 2 + 5):
        iso_ms(start + timedelta(milliseconds=n))
        iso_ms_of(1_790_000_000_000 + n)
    assert 0 < len(models._ISO_TEXTS) <= models._ISO_TEXTS_MOST
    assert 0 < len(models._ISO_TEXTS_OF_MS) <= models._ISO_TEXTS_MOST


@given(st.lists(st.integers(-(10**12), 7 * 10**12), min_size=1, max_size=50))
def test_iso_ms_of_prints_the_moment_of_its_milliseconds(values: list[int]):
    for ms in values + values:  # the second time from what it kept
        assert iso_ms_of(ms) == models.from_ms(ms).isoformat(timespec="milliseconds")


def one_by_one(client_code, key, attrs, modified_ms, ids, writes):  # type: ignore[no-untyped-def]
    """The fetch's JSON with every moment, provenance and ``writtenBy`` made anew."""
    out = {
        "client": client_code,
        "visitorId": key[2:],
        "modifiedAt": models.from_ms(modified_ms).isoformat(timespec="milliseconds"),
        "profileAttributes": {},
    }
    for name in sorted(attrs):
        value, seq, ms = attrs[name]
        attribute = {
            "value": value,
            "modifiedAt": models.from_ms(ms).isoformat(timespec="milliseconds"),
        }
        source = provenance(seq, writes)
        if source is not None:
            written = {"kind": str(source.kind), "id": source.ref}
            if source.line is not None:
                written["line"] = source.line
            attribute["writtenBy"] = written
        out["profileAttributes"][name] = attribute
    return out


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.tuples(
            st.text(max_size=5),
            st.integers(1, 6).flatmap(
                lambda n: st.integers(0, 3).map(lambda line: n * SEQ_SPAN + line)
            ),
            st.integers(0, 3).map(lambda n: 1_790_000_000_000 + n),
        ),
        max_size=12,
    ),
    st.dictionaries(
        st.integers(1, 6),
        st.tuples(
            st.sampled_from(["batch", "update", "delivery"]),
            st.one_of(st.none(), st.text(max_size=6)),
        ),
        max_size=6,
    ),
)
def test_a_profiles_json_is_the_same_as_made_one_by_one(attrs, writes):  # type: ignore[no-untyped-def]
    attrs = {name: list(value) for name, value in attrs.items()}
    record = ProfileRecord("demo", "t:crm-1", attrs, 1_790_000_000_009, ["t:crm-1"], writes)
    profile = build_profile(*record)
    expected = one_by_one(*record)
    assert profile_json(profile) == expected
    assert record.profile() == profile
    assert fetch_document(record) == expected
    assert json_bytes(fetch_document(record)) == json_bytes(expected)  # the keys' order too
