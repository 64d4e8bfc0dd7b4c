"""The profile side of the Delivery API: new tntIds, profileParameters, linking and merging."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from helpers import attributes, batch_id_of, deliver, status, submit, update

from profilebase import batchfile

TNT_ID = re.compile(r"[0-9a-f]{32}")


def test_a_call_without_id_gets_a_new_tnt_id_that_fetch_finds(http: httpx.Client):
    response = deliver(http, {"context": {"channel": "web"}})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == 200 and body["client"] == "demo"
    assert uuid.UUID(body["requestId"])
    assert "edgeHost" not in body  # Adobe's SDKs would read a location hint in it
    tnt_id = body["id"]["tntId"]
    assert TNT_ID.fullmatch(tnt_id)
    profile = http.get(f"/rest/v1/profiles/{tnt_id}", params={"client": "demo"}).json()
    assert profile["visitorId"] == tnt_id and profile["profileAttributes"] == {}
    assert deliver(http, {}).json()["id"]["tntId"] != tnt_id


def test_the_envelope_echoes_each_part_without_content(http: httpx.Client):
    payload = {
        "requestId": "req-1",
        "id": {"tntId": "t1.0_0", "marketingCloudVisitorId": "ecid-1"},
        "execute": {"pageLoad": {}, "mboxes": [{"index": 3, "name": "hero"}, {"name": "footer"}]},
        "prefetch": {"views": [{"name": "home"}], "mboxes": [{"index": 0, "name": "promo"}]},
        "notifications": [{"id": "n1", "type": "display"}],
    }
    body = deliver(http, payload).json()
    assert body["requestId"] == "req-1"
    assert body["id"] == {"tntId": "t1.0_0", "marketingCloudVisitorId": "ecid-1"}
    assert body["execute"] == {
        "pageLoad": {},
        "mboxes": [
            {"index": 3, "name": "hero", "options": []},
            {"index": 1, "name": "footer", "options": []},
        ],
    }
    assert body["prefetch"] == {
        "views": [{"name": "home", "options": []}],
        "mboxes": [{"index": 0, "name": "promo", "options": []}],
    }
    assert body["notifications"] == [{"id": "n1"}]


def test_null_parts_are_absent_parts(http: httpx.Client):
    payload = {"id": None, "execute": None, "prefetch": {"mboxes": None}, "notifications": None}
    body = deliver(http, payload).json()
    assert TNT_ID.fullmatch(body["id"]["tntId"])
    assert "execute" not in body and body["prefetch"] == {} and "notifications" not in body


def test_null_items_are_empty_items(http: httpx.Client):
    """A ``null`` mbox, view or notification is read as an empty one and echoed so, not a
    server error."""
    payload = {
        "execute": {"mboxes": [None, {"name": "hero"}]},
        "prefetch": {"views": [None]},
        "notifications": [None, {"id": "n1"}],
    }
    response = deliver(http, payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["execute"]["mboxes"] == [
        {"index": 0, "options": []},
        {"index": 1, "name": "hero", "options": []},
    ]
    assert body["prefetch"]["views"] == [{"options": []}]
    assert body["notifications"] == [{}, {"id": "n1"}]


def test_profile_parameters_from_every_part_apply_later_parts_winning(http: httpx.Client):
    """pageLoad, mboxes, views and notifications all carry profileParameters; later ones win."""
    payload = {
        "id": {"tntId": "t2"},
        "execute": {
            "pageLoad": {"profileParameters": {"a": "execute.pageLoad", "only1": "1"}},
            "mboxes": [
                {
                    "index": 0,
                    "name": "m",
                    "profileParameters": {"a": "execute.mboxes", "only2": "2"},
                }
            ],
        },
        "prefetch": {
            "pageLoad": {"profileParameters": {"only3": "3"}},
            "views": [{"profileParameters": {"only4": "4"}}],
            "mboxes": [
                {"index": 0, "name": "p", "profileParameters": {"only5": "5", "n": 7, "b": False}}
            ],
        },
        "notifications": [{"id": "x", "profileParameters": {"a": "notification", "empty": ""}}],
    }
    assert deliver(http, payload).status_code == 200
    assert attributes(http, "t2", third_party=False) == {
        "a": "notification",
        "only1": "1",
        "only2": "2",
        "only3": "3",
        "only4": "4",
        "only5": "5",
        "n": "7",
        "b": "false",
    }


def test_a_known_tnt_id_updates_its_profile(http: httpx.Client, drain):
    submit(http, b"batch=pcId,tier,city\nt3,silver,Berlin\n")
    drain()
    deliver(
        http,
        {"id": {"tntId": "t3"}, "execute": {"pageLoad": {"profileParameters": {"tier": "gold"}}}},
    )
    assert attributes(http, "t3", third_party=False) == {"tier": "gold", "city": "Berlin"}


def test_v1_batches_update_the_profiles_page_calls_created(http: httpx.Client, drain):
    """What makes v1 meaningful: the site creates profiles, a v1 batch updates only those."""
    tnt_id = deliver(http, {}).json()["id"]["tntId"]
    body = batchfile.encode("pcId", ["tier"], [[tnt_id, "gold"], ["never-seen", "gold"]])
    batch_id = batch_id_of(submit(http, body, v2=False))
    drain()
    fields = status(http, batch_id)
    assert (fields["successfulUpdates"], fields["profilesNotFound"]) == ("1", "1")
    assert attributes(http, tnt_id, third_party=False) == {"tier": "gold"}
    assert attributes(http, "never-seen", third_party=False) is None


def test_third_party_id_alone_gets_a_tnt_id_mapped_to_it(http: httpx.Client):
    body = deliver(
        http,
        {
            "id": {"thirdPartyId": "crm-9"},
            "execute": {"pageLoad": {"profileParameters": {"a": "1"}}},
        },
    ).json()
    assert body["id"]["thirdPartyId"] == "crm-9" and TNT_ID.fullmatch(body["id"]["tntId"])
    assert attributes(http, "crm-9") == {"a": "1"}
    assert attributes(http, body["id"]["tntId"], third_party=False) == {"a": "1"}


def test_linking_merges_the_two_profiles_third_party_id_winning(http: httpx.Client, drain):
    """A batch made crm-1; the site made an anonymous profile; a call with both ids joins them.

    On conflicts the thirdPartyId's values win (Target's rule); the call's own parameters apply
    after the link and win over both; later lookups by either id find the one profile.
    """
    submit(http, b"batch=thirdPartyId,tier,city,color\ncrm-1,gold,Berlin,blue\n")
    drain()
    deliver(
        http,
        {
            "id": {"tntId": "anon.0_0"},
            "execute": {
                "pageLoad": {
                    "profileParameters": {"tier": "bronze", "color": "red", "seen": "home"}
                }
            },
        },
    )
    body = deliver(
        http,
        {
            "id": {"tntId": "anon.0_0", "thirdPartyId": "crm-1"},
            "execute": {"pageLoad": {"profileParameters": {"color": "green", "login": "yes"}}},
        },
    ).json()
    assert body["id"] == {"tntId": "anon.0_0", "thirdPartyId": "crm-1"}
    merged = {"tier": "gold", "city": "Berlin", "color": "green", "seen": "home", "login": "yes"}
    assert attributes(http, "crm-1") == merged
    assert attributes(http, "anon.0_0", third_party=False) == merged


def test_linking_an_anonymous_profile_to_a_new_third_party_id_keeps_it(http: httpx.Client):
    deliver(
        http, {"id": {"tntId": "t5"}, "execute": {"pageLoad": {"profileParameters": {"a": "1"}}}}
    )
    deliver(http, {"id": {"tntId": "t5", "thirdPartyId": "crm-5"}})
    assert attributes(http, "crm-5") == {"a": "1"}
    assert attributes(http, "t5", third_party=False) == {"a": "1"}


def test_another_person_on_the_same_device_is_not_merged(http: httpx.Client):
    """A tntId linked to crm-a that arrives with crm-b moves to crm-b; no attribute moves."""
    deliver(
        http,
        {
            "id": {"tntId": "shared", "thirdPartyId": "crm-a"},
            "execute": {"pageLoad": {"profileParameters": {"who": "a"}}},
        },
    )
    deliver(
        http,
        {
            "id": {"tntId": "shared", "thirdPartyId": "crm-b"},
            "execute": {"pageLoad": {"profileParameters": {"seen": "b"}}},
        },
    )
    assert attributes(http, "crm-a") == {"who": "a"}
    assert attributes(http, "crm-b") == {"seen": "b"}
    assert attributes(http, "shared", third_party=False) == {"seen": "b"}


def test_linked_tnt_id_is_used_by_batches_and_updates(http: httpx.Client, drain):
    """pcId batch rows (v1 and v2) and single updates by a linked tntId reach the linked profile."""
    deliver(http, {"id": {"tntId": "t6", "thirdPartyId": "crm-6"}})
    v1 = batch_id_of(submit(http, b"batch=pcId,a\nt6,v1\n", v2=False))
    submit(http, b"batch=pcId,b\nt6,v2\n")
    drain()
    assert status(http, v1)["successfulUpdates"] == "1"
    assert update(http, mboxPC="t6", profile_c="update").status_code == 200
    assert attributes(http, "crm-6") == {"a": "v1", "b": "v2", "c": "update"}


def test_provenance_names_the_page_call(http: httpx.Client):
    deliver(
        http,
        {
            "requestId": "r-42",
            "id": {"tntId": "t7"},
            "execute": {"pageLoad": {"profileParameters": {"a": "1"}}},
        },
    )
    profile = http.get("/rest/v1/profiles/t7", params={"client": "demo"}).json()
    assert profile["profileAttributes"]["a"]["writtenBy"] == {"kind": "delivery", "id": "r-42"}


BAD = [
    (
        {
            "id": {"tntId": "t"},
            "execute": {"pageLoad": {"profileParameters": {f"p{i}": "v" for i in range(51)}}},
        },
        "at most 50",
    ),
    ({"execute": {"pageLoad": {"profileParameters": {"n" * 129: "v"}}}}, "at most 128"),
    (
        {"execute": {"pageLoad": {"profileParameters": {"profile.a": "v"}}}},
        "must not start with 'profile.'",
    ),
    ({"execute": {"pageLoad": {"profileParameters": {" ": "v"}}}}, "blank parameter name"),
    ({"execute": {"mboxes": [{"name": "m", "profileParameters": {"a": None}}]}}, "cannot be null"),
    ({"prefetch": {"views": [{"profileParameters": {"a": "v" * 257}}]}}, "at most 256"),
    ({"notifications": [{"profileParameters": {"a": ["x"]}}]}, "must be a string"),
    ({"id": {"tntId": "t" * 129}}, "at most 128"),
    ({"id": {"tntId": "a.b.c"}}, "at most one '.'"),
    ({"id": {"thirdPartyId": "a/b"}}, "must not contain '+' or '/'"),
    ({"id": {"thirdPartyId": "x" * 257}}, "at most 256"),
    ({"id": "t"}, "id must be a JSON object"),
    (
        {"execute": {"mboxes": [{"name": f"m{i}"} for i in range(51)]}},
        "size must be between 0 and 50",
    ),
    ({"execute": {"mboxes": {"name": "m"}}}, "must be a JSON array"),
    (["not", "an", "object"], "must be a JSON object"),
]


@pytest.mark.parametrize(("payload", "fragment"), BAD, ids=[fragment for _, fragment in BAD])
def test_validation_errors_are_400_json(http: httpx.Client, payload, fragment: str):
    response = http.post(
        "/rest/v1/delivery", params={"client": "demo", "sessionId": "s"}, json=payload
    )
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == 400 and fragment in body["message"]
    assert http.get("/rest/v1/profiles", params={"client": "demo", "format": "jsonl"}).text == ""


@pytest.mark.parametrize(
    ("params", "status", "fragment"),
    [
        ({"client": "demo"}, 400, "sessionId query parameter is missing"),
        ({"client": "demo", "sessionId": "a b"}, 400, "sessionId must be"),
        ({"client": "demo", "sessionId": "a/b"}, 400, "sessionId must be"),
        ({"client": "demo", "sessionId": "s" * 129}, 400, "sessionId must be"),
        ({"client": "nobody", "sessionId": "s"}, 404, "Unknown client 'nobody'"),
    ],
)
def test_query_parameters_are_checked(http: httpx.Client, params, status: int, fragment: str):
    response = http.post("/rest/v1/delivery", params=params, json={})
    assert response.status_code == status
    assert fragment in response.json()["message"]


def test_a_body_that_is_not_json_is_400(http: httpx.Client):
    response = http.post(
        "/rest/v1/delivery", params={"client": "demo", "sessionId": "s"}, content=b"{"
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["message"]


@pytest.mark.parametrize("settings", [{"max_delivery_bytes": 100}], indirect=True)
def test_a_body_over_the_limit_is_413(http: httpx.Client):
    response = deliver(http, {"execute": {"pageLoad": {"profileParameters": {"a": "x" * 100}}}})
    assert response.status_code == 413
    assert "max_delivery_bytes" in response.json()["message"]
