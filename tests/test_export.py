"""Export: every profile of a client as JSON lines or as a v2 batch that restores it."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from helpers import batch_id_of, deliver, status, submit
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from profilebase import batchfile
from profilebase.ids import check_id
from profilebase.models import KeyKind, now_ms
from profilebase.server.storage import Store
from profilebase.server.storage.base import Visit


def export(http: httpx.Client, client: str = "demo", **params: str) -> httpx.Response:
    response = http.get("/rest/v1/profiles", params={"client": client, **params})
    assert response.status_code == 200, response.text
    return response


def exported(http: httpx.Client, client: str = "demo") -> dict[str, dict[str, str]]:
    """Each exported profile's stored id and attribute values, from the JSON-lines export."""
    out = {}
    for line in export(http, client, format="jsonl").text.split("\n")[:-1]:
        profile = json.loads(line)
        out[profile["visitorId"]] = {
            name: a["value"] for name, a in profile["profileAttributes"].items()
        }
    return out


@pytest.fixture
def mixed(http: httpx.Client, drain) -> None:
    """An anonymous profile (anon), one with only a thirdPartyId (crm-2), a linked one (crm-1)."""
    submit(http, b"batch=thirdPartyId,tier,city\ncrm-1,gold,Berlin\ncrm-2,silver\n")
    submit(http, b"batch=pcId,tier\nanon,bronze\n")
    drain()
    deliver(http, {"requestId": "r1", "id": {"tntId": "t1", "thirdPartyId": "crm-1"}})
    deliver(http, {"id": {"tntId": "t2", "thirdPartyId": "crm-1"}})


def test_jsonl_is_one_fetch_shaped_object_per_profile(http: httpx.Client, mixed):
    response = export(http, format="jsonl")
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["visitorId"] for line in lines] == ["anon", "crm-1", "crm-2"]
    anon, crm1, crm2 = lines
    assert set(anon) == {"client", "visitorId", "modifiedAt", "profileAttributes", "tntIds"}
    assert anon["tntIds"] == ["anon"] and anon["client"] == "demo"
    assert crm1["thirdPartyId"] == "crm-1" and crm1["tntIds"] == ["t1", "t2"]
    assert "tntIds" not in crm2
    assert crm1["profileAttributes"]["tier"]["value"] == "gold"
    assert crm1["profileAttributes"]["tier"]["writtenBy"]["kind"] == "batch"


def test_batch_export_keyed_by_pc_id(http: httpx.Client, mixed):
    """Every profile with a tntId, once per tntId; a profile known only by thirdPartyId has none."""
    response = export(http, format="batch")
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "batch=pcId,city,tier\nanon,,bronze\nt1,Berlin,gold\nt2,Berlin,gold\n"


def test_batch_export_keyed_by_third_party_id(http: httpx.Client, mixed):
    response = export(http, format="batch", key="thirdPartyId")
    assert response.text == "batch=thirdPartyId,city,tier\ncrm-1,Berlin,gold\ncrm-2,,silver\n"


def test_export_of_an_empty_client(http: httpx.Client):
    assert export(http, format="jsonl").text == ""
    assert export(http, format="batch").text == "batch=pcId\n"


def test_export_pages_through_many_profiles(http: httpx.Client, drain):
    """More profiles than one page: each exactly once, in key order."""
    ids = [f"id{n:05d}" for n in range(1234)]
    submit(http, batchfile.encode("thirdPartyId", ["n"], [[i, i[-1]] for i in ids]))
    drain()
    lines = export(http, format="batch", key="thirdPartyId").text.splitlines()
    assert lines[0] == "batch=thirdPartyId,n"
    assert lines[1:] == [f"{i},{i[-1]}" for i in ids]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"format": "xml"}, "format must be batch or jsonl"),
        ({"format": "batch", "key": "ecid"}, "key must be pcId or thirdPartyId"),
        ({"format": "jsonl", "key": "pcId"}, "key applies to format=batch only"),
    ],
)
def test_bad_export_parameters_are_400(http: httpx.Client, params: dict[str, str], fragment: str):
    response = http.get("/rest/v1/profiles", params={"client": "demo", **params})
    assert response.status_code == 400 and fragment in response.json()["message"]


# -- round trip ------------------------------------------------------------------------------

TRICKY = st.sampled_from(
    [",", "%", "+", "&", "=", "\n", "\r\n", " ", "%2C", "😀", "é", "\t", "\x00"]
)


def texts(max_size: int) -> st.SearchStrategy[str]:
    """Random UTF-8 text (no lone surrogates) rich in characters the formats must escape."""
    pieces = st.one_of(st.characters(blacklist_categories=("Cs",)), TRICKY)
    return st.lists(pieces, min_size=1, max_size=max_size).map("".join)


NAMES = texts(10).filter(lambda name: not name.startswith("profile."))
VALUES = texts(16)
THIRD_PARTY_IDS = texts(12).filter(lambda i: check_id(KeyKind.THIRD_PARTY_ID, i) is None)
PC_IDS = texts(12).filter(lambda i: check_id(KeyKind.PC_ID, i) is None)
CLIENTS = itertools.count()


def profiles_of(ids: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, dict[str, str]]]:
    return st.dictionaries(ids, st.dictionaries(NAMES, VALUES, max_size=4), min_size=1, max_size=6)


def no_nul(text: str) -> str:
    return text.replace("\x00", "?")


def round_trip(
    http: httpx.Client, store: Store, drain, key: str, profiles: dict[str, dict[str, str]]
) -> None:
    if getattr(store, "backend", "") == "postgres":  # it refuses U+0000 (docs/deployment.md)
        profiles = {
            no_nul(i): {no_nul(n): no_nul(v) for n, v in values.items()}
            for i, values in profiles.items()
        }
    source, copy = f"src{next(CLIENTS)}", f"dst{next(CLIENTS)}"
    store.ensure_client(source)
    store.ensure_client(copy)
    # Half of the values arrive by batch, the rest by single updates (form-encoded by httpx).
    names = sorted({name for values in profiles.values() for name in values})
    rows = [
        [identifier] + [values.get(name) if n % 2 == 0 else None for n, name in enumerate(names)]
        for identifier, values in profiles.items()
    ]
    assert submit(http, batchfile.encode(key, names, rows), client=source).status_code == 200
    drain()
    id_parameter = "mboxPC" if key == "pcId" else "mbox3rdPartyId"
    for identifier, values in profiles.items():
        form = {id_parameter: identifier} | {
            f"profile.{name}": value
            for n, name in enumerate(names)
            if n % 2 and (value := values.get(name))
        }
        response = http.post(f"/m2/{source}/profile/update", data=form)
        assert response.status_code == 200, response.text

    body = export(http, source, format="batch", key=key).content
    batch_id = batch_id_of(submit(http, body, client=copy))
    drain()
    assert status(http, batch_id, client=copy)["failedUpdates"] == "0"
    assert exported(http, source) == profiles
    assert exported(http, copy) == profiles


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(profiles=profiles_of(THIRD_PARTY_IDS))
def test_round_trip_by_third_party_id(http: httpx.Client, store: Store, drain, profiles):
    """Export as a batch keyed by thirdPartyId, post it into a fresh client: identical profiles."""
    round_trip(http, store, drain, "thirdPartyId", profiles)


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(profiles=profiles_of(PC_IDS))
def test_round_trip_by_pc_id(http: httpx.Client, store: Store, drain, profiles):
    """The same with a batch keyed by pcId."""
    round_trip(http, store, drain, "pcId", profiles)


def test_client_info_announces_export_delete_and_provenance(http: httpx.Client):
    info = http.get("/profilebase/v1/clients/demo").json()
    assert info["extensions"]["profileExport"] == "/rest/v1/profiles?client=demo&format=jsonl"
    assert info["extensions"]["profileDelete"] is True and info["extensions"]["writtenBy"] is True
    assert info["limits"]["updatesPerDay"] == 1_000_000 and info["limits"]["profileExpiryDays"] == 0


def test_an_export_reads_one_snapshot_page_by_page(store: Store):
    """Writes made while an export is being read do not tear it; each pass sees the same."""
    client = store.ensure_client("snap")
    for n in range(5):
        store.visit(client.id, Visit(f"t{n}", None, {"n": str(n)}, "r"), now_ms(), 10_000)
    snapshot = store.open_export(client.id)
    try:
        pages = snapshot.pages(2)
        first = next(pages)
        store.visit(client.id, Visit("t9", None, {"n": "9"}, "r"), now_ms(), 10_000)
        store.visit(client.id, Visit("t4", None, {"n": "changed"}, "r"), now_ms(), 10_000)
        assert store.delete_profile(client.id, "p:t3", now_ms())
        rest = [profile for page in pages for profile in page]
        assert [len(first), len(rest)] == [2, 3]
        seen = {p.visitor_id: p.attributes["n"].value for p in first + rest}
        assert seen == {f"t{n}": str(n) for n in range(5)}
        again = [p.visitor_id for page in snapshot.pages(100) for p in page]
        assert again == [f"t{n}" for n in range(5)]
    finally:
        snapshot.close()
    assert len(store.get_profile(client.id, "p:t9").attributes) == 1


def test_a_page_of_large_profiles_ends_early(store: Store, monkeypatch: pytest.MonkeyPatch):
    """Pages are bounded by size as well as by count, so large profiles never pile up."""
    from profilebase.server.storage import profiles

    monkeypatch.setattr(profiles, "EXPORT_PAGE_CHARS", 250)
    client = store.ensure_client("large")
    for n in range(4):
        store.visit(client.id, Visit(f"t{n}", None, {"v": "x" * 100}, "r"), now_ms(), 10_000)
    snapshot = store.open_export(client.id)
    try:
        sizes = [len(page) for page in snapshot.pages(100)]
    finally:
        snapshot.close()
    assert sizes == [2, 2]
