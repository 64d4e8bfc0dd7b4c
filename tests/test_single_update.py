"""Single profile update over HTTP: applied at once, update only, both paths, limits, quota."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers import attributes, batch_id_of, deliver, run_sql, submit, update, xml_fields

from profilebase.server import clients
from profilebase.server.settings import Settings
from profilebase.server.storage import Store


@pytest.fixture
def crm(http: httpx.Client, drain) -> httpx.Client:
    """Profile crm-1 (thirdPartyId) and 123 (pcId) exist, created by a v2 batch."""
    submit(http, b"batch=thirdPartyId,tier,city\ncrm-1,silver,Berlin\n")
    submit(http, b"batch=pcId,tier\n123,bronze\n")
    drain()
    return http


def test_update_is_visible_at_once(crm: httpx.Client):
    """The reply is Target's; a fetch right after it returns the new value, the rest unchanged."""
    response = update(crm, mbox3rdPartyId="crm-1", profile_tier="gold")
    assert response.status_code == 200
    assert xml_fields(response) == {
        "success": "true",
        "pcId": "",
        "message": "Request successfully submitted",
    }
    assert attributes(crm, "crm-1") == {"tier": "gold", "city": "Berlin"}


def test_update_by_mbox_pc_echoes_the_pc_id(crm: httpx.Client):
    response = update(crm, mboxPC="123", profile_tier="gold", profile_new="1")
    assert xml_fields(response)["pcId"] == "123"
    assert attributes(crm, "123", third_party=False) == {"tier": "gold", "new": "1"}


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda http, path, q: http.get(path, params=q), id="GET query"),
        pytest.param(lambda http, path, q: http.post(path, params=q), id="POST query, no body"),
        pytest.param(lambda http, path, q: http.post(path, data=q), id="POST form body"),
        pytest.param(lambda http, path, q: http.post(path, json=q), id="POST JSON body"),
        pytest.param(
            lambda http, path, q: http.post(
                path, content=httpx.QueryParams(q).__str__(), headers={"content-type": "text/plain"}
            ),
            id="POST form body without its content type",
        ),
    ],
)
def test_every_way_of_sending_parameters(crm: httpx.Client, send):
    """Query string, form body or JSON body: UTF-8, URL-encoded, case-sensitive names."""
    query = {
        "mbox3rdPartyId": "crm-1",
        "profile.City": "München & Köln",
        "profile.note": "a+b 100%",
        "other": "x",
    }
    response = send(crm, "/m2/demo/profile/update", query)
    assert response.status_code == 200, response.text
    assert attributes(crm, "crm-1") == {
        "tier": "silver",
        "city": "Berlin",
        "City": "München & Köln",
        "note": "a+b 100%",
    }


def test_json_numbers_and_booleans_become_text(crm: httpx.Client):
    response = crm.post(
        "/m2/demo/profile/update",
        json={
            "mbox3rdPartyId": "crm-1",
            "profile.age": 42,
            "profile.vip": True,
            "profile.city": None,
        },
    )
    assert response.status_code == 200
    assert attributes(crm, "crm-1") == {
        "tier": "silver",
        "city": "Berlin",
        "age": "42",
        "vip": "true",
    }


def test_empty_value_leaves_the_attribute_unchanged(crm: httpx.Client):
    assert (
        update(crm, mbox3rdPartyId="crm-1", profile_tier="", profile_city="Paris").status_code
        == 200
    )
    assert attributes(crm, "crm-1") == {"tier": "silver", "city": "Paris"}


def test_unknown_id_creates_nothing(crm: httpx.Client):
    """Target silently drops it; profilebase says so: 404, success=false, client and id named."""
    response = update(crm, mbox3rdPartyId="nobody", profile_tier="gold")
    assert response.status_code == 404
    fields = xml_fields(response)
    assert fields["success"] == "false"
    assert "No profile found for client demo with mbox3rdPartyId=nobody" in fields["message"]
    assert attributes(crm, "nobody") is None
    response = update(crm, mboxPC="999", profile_tier="gold")
    assert "with mboxPC=999" in xml_fields(response)["message"]


def test_a_profile_in_a_queued_batch_does_not_exist_yet(http: httpx.Client, drain):
    """Update only: the profile must exist when the update runs; a queued batch has not made it."""
    submit(http, b"batch=thirdPartyId,tier\nlater,silver\n")
    assert update(http, mbox3rdPartyId="later", profile_tier="gold").status_code == 404
    drain()
    assert attributes(http, "later") == {"tier": "silver"}


def test_rows_of_a_batch_queued_before_the_update_lose_to_it(crm: httpx.Client, drain):
    """The update takes its place in the per-profile order: older rows lose to it, per attribute."""
    submit(crm, b"batch=thirdPartyId,tier,city\ncrm-1,platinum,Rome\n")
    assert update(crm, mbox3rdPartyId="crm-1", profile_tier="gold").status_code == 200
    submit(crm, b"batch=thirdPartyId,city\ncrm-1,Oslo\n")
    drain()
    assert attributes(crm, "crm-1") == {"tier": "gold", "city": "Oslo"}


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/m2/client/profile/update?client=demo&mbox3rdPartyId=crm-1&profile.tier=gold", {}),
        (
            "/m2/client/profile/update?mbox3rdPartyId=crm-1&profile.tier=gold",
            {"host": "demo.tt.omtrdc.net"},
        ),
        ("/m2/demo/profile/update?client=demo&mbox3rdPartyId=crm-1&profile.tier=gold", {}),
    ],
    ids=["client parameter", "Host header", "client code in the path"],
)
def test_both_path_forms(crm: httpx.Client, url: str, headers: dict[str, str]):
    """Target's docs print the literal /m2/client/…; the client comes from ?client= or the Host."""
    response = crm.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert attributes(crm, "crm-1")["tier"] == "gold"


@pytest.mark.parametrize("host", ["127.0.0.1", "demo.tt.omtrdc.net"])
def test_literal_path_with_an_unknown_client_parameter_is_404(crm: httpx.Client, host: str):
    """An explicit ?client= is authoritative: the Host header does not stand in for it."""
    url = "/m2/client/profile/update?client=nobody&mbox3rdPartyId=crm-1&profile.a=1"
    response = crm.get(url, headers={"host": host})
    assert response.status_code == 404
    assert "Unknown client 'nobody'" in xml_fields(response)["message"]
    assert "a" not in attributes(crm, "crm-1")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("profile.a=1", "exactly one of mboxPC"),
        ("mboxPC=123&mbox3rdPartyId=crm-1&profile.a=1", "exactly one of mboxPC"),
        ("mbox3rdPartyId=&profile.a=1", "exactly one of mboxPC"),
        ("mbox3rdPartyId=a%2Fb&profile.a=1", "must not contain '+' or '/'"),
        ("mboxPC=1.2.3&profile.a=1", "at most one '.'"),
        ("mbox3rdPartyId=crm-1&profile.=1", "does not name an attribute"),
        ("mbox3rdPartyId=crm-1&profile.profile.a=1", "one `profile.` prefix"),
        ("mbox3rdPartyId=crm-1&profile.a=%FF", "not valid UTF-8"),
    ],
)
def test_invalid_requests_are_400(crm: httpx.Client, query: str, fragment: str):
    response = crm.get("/m2/demo/profile/update?" + query)
    assert response.status_code == 400
    fields = xml_fields(response)
    assert fields["success"] == "false" and fragment in fields["message"]


def test_invalid_json_body_is_400(crm: httpx.Client):
    response = crm.post(
        "/m2/demo/profile/update", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "JSON" in xml_fields(response)["message"]


def test_pc_id_of_a_linked_profile(crm: httpx.Client):
    """Updating by thirdPartyId names the tntId linked to the profile, as Target's pcId."""
    deliver(crm, {"id": {"tntId": "abc.0_0", "thirdPartyId": "crm-1"}})
    response = update(crm, mbox3rdPartyId="crm-1", profile_tier="gold")
    assert xml_fields(response)["pcId"] == "abc.0_0"
    assert attributes(crm, "abc.0_0", third_party=False)["tier"] == "gold"


def test_nothing_to_write_still_answers_success(crm: httpx.Client):
    response = update(crm, mbox3rdPartyId="crm-1", other="x")
    assert response.status_code == 200
    assert attributes(crm, "crm-1") == {"tier": "silver", "city": "Berlin"}


class TestLimits:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        """Small limits, on each backend (the daily quota is counted in SQL)."""
        return Settings(
            database=database_url,
            workers=0,
            max_update_url_bytes=200,
            max_update_body_bytes=300,
            updates_per_day=3,
        )

    def test_get_request_line_over_the_limit_is_413(self, crm: httpx.Client):
        short = "/m2/demo/profile/update?mbox3rdPartyId=crm-1&profile.a="
        fits = short + "x" * (200 - len("GET ") - len(short) - len(" HTTP/1.1"))
        assert crm.get(fits).status_code == 200
        response = crm.get(fits + "x")
        assert response.status_code == 413
        fields = xml_fields(response)
        assert fields["success"] == "false" and "max_update_url_bytes" in fields["message"]

    def test_post_body_over_the_limit_is_413(self, crm: httpx.Client):
        body = {"mbox3rdPartyId": "crm-1", "profile.a": "x" * 400}
        response = crm.post("/m2/demo/profile/update", data=body)
        assert (
            response.status_code == 413
            and "max_update_body_bytes" in xml_fields(response)["message"]
        )

        def chunks():
            yield b"mbox3rdPartyId=crm-1&profile.a="
            for _ in range(50):
                yield b"x" * 10

        assert crm.post("/m2/demo/profile/update", content=chunks()).status_code == 413
        assert attributes(crm, "crm-1") == {"tier": "silver", "city": "Berlin"}

    def test_daily_quota_is_429_with_retry_after(self, crm: httpx.Client):
        """Applied updates count; an unknown id or an update with nothing to write does not."""
        assert update(crm, mbox3rdPartyId="nobody", profile_a="1").status_code == 404
        assert update(crm, mbox3rdPartyId="crm-1", other="1").status_code == 200
        for n in range(3):
            assert update(crm, mbox3rdPartyId="crm-1", profile_a=str(n)).status_code == 200
        response = update(crm, mbox3rdPartyId="crm-1", profile_a="late")
        assert response.status_code == 429
        assert 0 < int(response.headers["retry-after"]) <= 86_400 + 60
        assert "updates_per_day" in xml_fields(response)["message"]
        assert attributes(crm, "crm-1")["a"] == "2"

    def test_every_reply_carries_the_daily_update_quota_headers(self, crm: httpx.Client):
        """Applied, not found and over-quota replies all say limit, remaining and reset."""

        def headers(response: httpx.Response) -> tuple[str, str, bool]:
            h = response.headers
            reset = 86_400 <= int(h["x-ratelimit-reset"]) <= 86_460  # a day after the minute
            return h["x-ratelimit-limit"], h["x-ratelimit-remaining"], reset

        assert headers(update(crm, mbox3rdPartyId="crm-1", profile_a="1")) == ("3", "2", True)
        missing = update(crm, mbox3rdPartyId="nobody", profile_a="1")
        assert missing.status_code == 404 and headers(missing) == ("3", "2", True)
        update(crm, mbox3rdPartyId="crm-1", profile_a="2")
        update(crm, mbox3rdPartyId="crm-1", profile_a="3")
        refused = update(crm, mbox3rdPartyId="crm-1", profile_a="4")
        assert refused.status_code == 429 and headers(refused) == ("3", "0", True)
        assert "at 20" in xml_fields(refused)["message"]  # says when, as an ISO time


class TestAFullDayOfUpdates:
    """A client that updated every minute of the last day has 1,430 minute rows in the
    quota's window (read as a sum in the database, not row by row): the headers and the
    refusal count every one of them, and no row older than the window."""

    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(database=database_url, workers=0, updates_per_day=1530)

    def test_the_window_counts_every_minute_of_the_day(self, crm: httpx.Client, database_url: str):
        now_minute = time.time_ns() // 60_000_000_000
        # 1 update in each of the last 1,429 minutes, 100 in the one before; 9,999 in a
        # minute a day and more ago, outside the window.
        counts = [(now_minute - m, 1) for m in range(1, 1430)]
        counts += [(now_minute - 1430, 100), (now_minute - 1500, 9_999)]
        (client_id,) = run_sql(database_url, "SELECT id FROM clients WHERE code = 'demo'")[0]
        rows = ", ".join(f"({client_id}, {minute}, {n})" for minute, n in counts)
        run_sql(
            database_url, f"INSERT INTO update_counts (client_id, minute, updates) VALUES {rows}"
        )
        applied = update(crm, mbox3rdPartyId="crm-1", profile_a="1")
        assert applied.status_code == 200
        assert applied.headers["x-ratelimit-limit"] == "1530"
        assert applied.headers["x-ratelimit-remaining"] == "0"  # 1,529 + this one
        # The oldest minute of the window (100 updates) leaves it 11 minutes from now,
        # less the seconds of the current minute gone.
        assert 600 <= int(applied.headers["x-ratelimit-reset"]) <= 661
        refused = update(crm, mbox3rdPartyId="crm-1", profile_a="2")
        assert refused.status_code == 429
        assert 600 <= int(refused.headers["retry-after"]) <= 661
        assert attributes(crm, "crm-1")["a"] == "1"


def test_limits_are_configurable_per_client(crm: httpx.Client, store: Store):
    """A client's own size limits and daily quota apply to it; other clients keep the defaults."""
    clients.change(
        store,
        "demo",
        limits={
            "max_update_url_bytes": "200",
            "max_update_body_bytes": "300",
            "updates_per_day": "1",
        },
    )
    store.ensure_client("other")
    # An unknown id is 404 once the request is within the limits, 413 before.
    for client, within in [("demo", False), ("other", True)]:
        got = update(crm, client=client, mbox3rdPartyId="nobody", p="x" * 200).status_code
        assert got == (404 if within else 413)
        body = {"mbox3rdPartyId": "nobody", "p": "x" * 400}
        got = crm.post(f"/m2/{client}/profile/update", data=body).status_code
        assert got == (404 if within else 413)
    assert update(crm, mbox3rdPartyId="crm-1", profile_a="1").status_code == 200
    refused = update(crm, mbox3rdPartyId="crm-1", profile_a="2")
    assert refused.status_code == 429 and refused.headers["x-ratelimit-limit"] == "1"
    assert update(crm, client="other", mbox3rdPartyId="nobody").headers["x-ratelimit-limit"] == (
        "1000000"
    )


@pytest.mark.parametrize("settings", [{"max_profile_bytes": 150}], indirect=True)
def test_profile_size_limit_is_413(crm: httpx.Client):
    """An update that would grow the profile past max_profile_bytes writes nothing."""
    assert update(crm, mbox3rdPartyId="crm-1", profile_small="y").status_code == 200
    response = update(crm, mbox3rdPartyId="crm-1", profile_big="y" * 80, profile_other="z")
    assert response.status_code == 413
    assert "max_profile_bytes" in xml_fields(response)["message"]
    assert attributes(crm, "crm-1") == {"tier": "silver", "city": "Berlin", "small": "y"}


def test_status_url_is_unaffected(crm: httpx.Client, drain):
    """The update routes do not shadow the bulk routes of the same client."""
    response = submit(crm, b"batch=thirdPartyId,a\nx,1\n")
    assert response.status_code == 200
    assert batch_id_of(response).startswith("demo-")
