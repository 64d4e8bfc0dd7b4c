"""Experience Cloud IDs and customerIds: page calls link them to the visitor's profile, fetch
finds a profile by its ECID, delete and export know them; batches still take only pcId and
thirdPartyId."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers import attributes, deliver, submit, update, xml_fields

ECID = "08621943297426430424155574393592128755"
OTHER_ECID = "71392345820164598110362234771923008317"


def by_ecid(http: httpx.Client, ecid: str, client: str = "demo") -> httpx.Response:
    return http.get(f"/rest/v1/profiles/marketingCloudVisitorId/{ecid}", params={"client": client})


def values(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {name: a["value"] for name, a in response.json()["profileAttributes"].items()}


def visit(http: httpx.Client, ids: dict, **parameters: str) -> dict:
    """A page call with these ids and pageLoad profileParameters; its reply's id."""
    payload = {"id": ids, "execute": {"pageLoad": {"profileParameters": parameters}}}
    response = deliver(http, payload)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def export(http: httpx.Client) -> list[dict]:
    response = http.get("/rest/v1/profiles", params={"client": "demo"})
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_fetch_by_ecid_finds_the_profile_a_page_call_linked_it_to(http: httpx.Client):
    tnt_id = visit(http, {"tntId": "t1", "marketingCloudVisitorId": ECID}, tier="gold")["tntId"]
    response = by_ecid(http, ECID)
    assert values(response) == {"tier": "gold"}
    assert response.json()["visitorId"] == ECID and response.json()["client"] == "demo"
    assert values(http.get(f"/rest/v1/profiles/{tnt_id}", params={"client": "demo"})) == {
        "tier": "gold"
    }


@pytest.mark.parametrize("client", ["demo", "other"])
def test_an_unknown_ecid_is_404_with_targets_message(http: httpx.Client, store, client: str):
    """Another client's ECID is unknown here, exactly as one that never existed."""
    from profilebase.models import now_ms
    from profilebase.server import clients

    clients.create(store, "other", False, now_ms())
    visit(http, {"tntId": "t1", "marketingCloudVisitorId": ECID})
    unknown = ECID if client == "other" else OTHER_ECID
    response = by_ecid(http, unknown, client)
    assert response.status_code == 404
    assert response.json() == {
        "status": 404,
        "message": f"No profile found for client {client} with marketingCloudVisitorId={unknown}",
    }


def test_a_visitor_who_lost_the_target_cookie_finds_the_profile_by_ecid(http: httpx.Client):
    """A call with no tntId but a known ECID gets a new tntId linked to the ECID's profile;
    its parameters land there."""
    first = visit(http, {"marketingCloudVisitorId": ECID}, visits="1")["tntId"]
    second = visit(http, {"marketingCloudVisitorId": ECID}, visits="2", cart="full")["tntId"]
    assert second != first
    assert values(by_ecid(http, ECID)) == {"visits": "2", "cart": "full"}
    for tnt_id in (first, second):
        assert attributes(http, tnt_id, third_party=False) == {"visits": "2", "cart": "full"}
    assert len(export(http)) == 1


def test_signing_in_keeps_every_id_of_the_visitor(http: httpx.Client):
    """An anonymous visitor known by two tntIds and an ECID signs in: the profile becomes the
    thirdPartyId's, and every one of its ids finds it."""
    old = visit(http, {"marketingCloudVisitorId": ECID}, seen="yes")["tntId"]
    new = visit(http, {"marketingCloudVisitorId": ECID})["tntId"]
    visit(http, {"tntId": new, "thirdPartyId": "crm-1"}, tier="gold")
    expected = {"seen": "yes", "tier": "gold"}
    assert attributes(http, "crm-1") == expected
    assert attributes(http, old, third_party=False) == expected
    assert attributes(http, new, third_party=False) == expected
    assert values(by_ecid(http, ECID)) == expected
    (profile,) = export(http)
    assert profile["thirdPartyId"] == "crm-1" and set(profile["tntIds"]) == {old, new}
    assert profile["marketingCloudVisitorIds"] == [ECID]


def test_an_ecid_seen_with_another_visitor_moves_without_merging(http: httpx.Client):
    """The latest page call decides which profile an ECID finds; no attribute moves."""
    visit(http, {"tntId": "a", "marketingCloudVisitorId": ECID}, owner="a")
    visit(http, {"tntId": "b"}, owner="b")
    visit(http, {"tntId": "b", "marketingCloudVisitorId": ECID})
    assert values(by_ecid(http, ECID)) == {"owner": "b"}
    assert attributes(http, "a", third_party=False) == {"owner": "a"}


def test_customer_ids_are_aliases_of_the_profile(http: httpx.Client):
    """Each {id, integrationCode} is linked like an ECID: export lists them, and a call that
    carries one (and no tntId) finds the profile again."""
    customer = {"id": "c-1", "integrationCode": "crm:eu", "authenticatedState": "authenticated"}
    tnt_id = visit(http, {"tntId": "t1", "customerIds": [customer]}, tier="gold")["tntId"]
    again = visit(http, {"customerIds": [{"id": "c-1", "integrationCode": "crm:eu"}]}, x="1")
    assert attributes(http, again["tntId"], third_party=False) == {"tier": "gold", "x": "1"}
    (profile,) = export(http)
    assert profile["customerIds"] == [{"integrationCode": "crm:eu", "id": "c-1"}]
    assert tnt_id in profile["tntIds"]
    other_code = visit(http, {"customerIds": [{"id": "c-1", "integrationCode": "crm"}]})
    assert attributes(http, other_code["tntId"], third_party=False) == {}


def test_delete_by_ecid_removes_the_profile_with_every_id(http: httpx.Client):
    tnt_id = visit(
        http,
        {
            "tntId": "t1",
            "thirdPartyId": "crm-1",
            "marketingCloudVisitorId": ECID,
            "customerIds": [{"id": "c-1", "integrationCode": "crm"}],
        },
        tier="gold",
    )["tntId"]
    deleted = http.delete(
        f"/rest/v1/profiles/marketingCloudVisitorId/{ECID}", params={"client": "demo"}
    )
    assert deleted.status_code == 204
    assert by_ecid(http, ECID).status_code == 404
    assert attributes(http, "crm-1") is None
    assert attributes(http, tnt_id, third_party=False) is None
    again = http.delete(
        f"/rest/v1/profiles/marketingCloudVisitorId/{ECID}", params={"client": "demo"}
    )
    assert again.status_code == 404
    assert again.json()["message"].endswith(f"with marketingCloudVisitorId={ECID}")
    fresh = visit(http, {"customerIds": [{"id": "c-1", "integrationCode": "crm"}]})
    assert attributes(http, fresh["tntId"], third_party=False) == {}  # nothing left to find


def test_the_update_reply_names_a_tnt_id_never_an_ecid(http: httpx.Client):
    """pcId in the single update's reply is a tntId of the profile, not one of its other ids."""
    visit(http, {"tntId": "t-9", "thirdPartyId": "crm-9", "marketingCloudVisitorId": ECID})
    response = update(http, mbox3rdPartyId="crm-9", profile_tier="gold")
    assert xml_fields(response)["pcId"] == "t-9"


def test_batches_still_take_only_pc_id_and_third_party_id(http: httpx.Client):
    """As Target: "The Marketing Cloud visitor ID is not supported" as a batch key."""
    response = submit(http, f"batch=marketingCloudVisitorId,tier\n{ECID},gold\n".encode())
    assert response.status_code == 400
    assert "pcId" in xml_fields(response)["message"]


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        ({"marketingCloudVisitorId": "9" * 129}, "is 129 characters long; at most 128"),
        ({"marketingCloudVisitorId": "123\x00456"}, "contains a control character"),
        ({"marketingCloudVisitorId": "123\r\n456"}, "contains a control character"),
        ({"marketingCloudVisitorId": 12345}, "id.marketingCloudVisitorId must be a string"),
        ({"customerIds": {"id": "c"}}, "id.customerIds must be a JSON array"),
        ({"customerIds": ["c-1"]}, "id.customerIds[0] must be a JSON object"),
        (
            {"customerIds": [{"id": "c", "integrationCode": "x"}] * 51},
            "size must be between 0 and 50",
        ),
        ({"customerIds": [{"integrationCode": "crm"}]}, "id.customerIds[0].id is missing"),
        ({"customerIds": [{"id": "c-1"}]}, "id.customerIds[0].integrationCode is missing"),
        (
            {"customerIds": [{"id": "c-1", "integrationCode": "x" * 51}]},
            "integrationCode is 51 characters long; at most 50",
        ),
        (
            {"customerIds": [{"id": "c", "integrationCode": "x", "authenticatedState": "yes"}]},
            "authenticatedState must be one of authenticated, logged_out, unknown",
        ),
        *[
            (
                {"customerIds": [{"id": "c", "integrationCode": "x", "authenticatedState": s}]},
                "authenticatedState must be one of authenticated, logged_out, unknown",
            )
            for s in (["authenticated"], {"a": 1}, 1, True)  # a list was a 500 (schemathesis)
        ],
    ],
)
def test_invalid_ecids_and_customer_ids_are_400_and_change_nothing(
    http: httpx.Client, ids: dict, fragment: str
):
    payload = {
        "id": {"tntId": "t1", **ids},
        "execute": {"pageLoad": {"profileParameters": {"a": "1"}}},
    }
    response = deliver(http, payload)
    assert response.status_code == 400
    assert fragment in response.json()["message"]
    assert attributes(http, "t1", third_party=False) is None
