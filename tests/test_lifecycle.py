"""Beyond Target: deleting profiles, expiring inactive ones, and where each value came from."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import FakeClock, LiveServer
from helpers import attributes, batch_id_of, deliver, status, submit, update

from profilebase.models import DAY_MS, now_ms
from profilebase.server import clients
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store
from profilebase.server.storage.base import Visit
from profilebase.server.worker import Worker


def delete(
    http: httpx.Client, identifier: str, third_party: bool = True, client: str = "demo"
) -> httpx.Response:
    path = (
        f"/rest/v1/profiles/thirdPartyId/{identifier}"
        if third_party
        else f"/rest/v1/profiles/{identifier}"
    )
    return http.delete(path, params={"client": client})


def test_delete_then_fetch_is_404(http: httpx.Client, drain):
    submit(http, b"batch=pcId,a\n123,1\n124,2\n")
    drain()
    response = delete(http, "123", third_party=False)
    assert response.status_code == 204 and response.content == b""
    assert attributes(http, "123", third_party=False) is None
    assert attributes(http, "124", third_party=False) == {"a": "2"}
    response = delete(http, "123", third_party=False)
    assert response.status_code == 404
    assert response.json() == {
        "status": 404,
        "message": "No profile found for client demo with mboxPC=123",
    }
    assert (
        delete(http, "nope").json()["message"]
        == "No profile found for client demo with third party id=nope"
    )


@pytest.mark.parametrize("by", ["thirdPartyId", "linked tntId"])
def test_delete_removes_the_profile_and_its_identity_links(http: httpx.Client, by: str):
    deliver(
        http,
        {
            "id": {"tntId": "t1", "thirdPartyId": "crm-1"},
            "execute": {"pageLoad": {"profileParameters": {"a": "1"}}},
        },
    )
    response = (
        delete(http, "crm-1") if by == "thirdPartyId" else delete(http, "t1", third_party=False)
    )
    assert response.status_code == 204
    assert attributes(http, "crm-1") is None
    assert attributes(http, "t1", third_party=False) is None
    # The tntId is free again: a page call with it starts a new anonymous profile.
    deliver(
        http, {"id": {"tntId": "t1"}, "execute": {"pageLoad": {"profileParameters": {"b": "2"}}}}
    )
    assert attributes(http, "t1", third_party=False) == {"b": "2"}
    assert attributes(http, "crm-1") is None


def test_a_queued_batch_row_does_not_resurrect_a_deleted_profile(http: httpx.Client, drain):
    """Rows accepted before the delete are older than it: in acceptance order they were
    applied, then deleted. Batches accepted after it may create the profile anew (v2)."""
    submit(http, b"batch=thirdPartyId,a\ncrm-1,old\n")
    drain()
    queued = batch_id_of(submit(http, b"batch=thirdPartyId,a,b\ncrm-1,queued,queued\nother,1\n"))
    assert delete(http, "crm-1").status_code == 204
    drain()
    assert attributes(http, "crm-1") is None
    assert attributes(http, "other") == {"a": "1"}
    fields = status(http, queued)
    assert fields["successfulUpdates"] == "2" and fields["status"] == "complete"
    v1 = batch_id_of(submit(http, b"batch=thirdPartyId,a\ncrm-1,v1\n", v2=False))
    drain()
    assert status(http, v1)["profilesNotFound"] == "1"
    submit(http, b"batch=thirdPartyId,b\ncrm-1,new\n")
    drain()
    assert attributes(http, "crm-1") == {"b": "new"}


def test_deleting_a_profile_only_a_queued_batch_would_create(http: httpx.Client, drain):
    """404 (no profile yet), and the queued row older than the delete creates nothing."""
    submit(http, b"batch=thirdPartyId,a\nfresh,1\n")
    assert delete(http, "fresh").status_code == 404
    drain()
    assert attributes(http, "fresh") is None


def test_delete_needs_a_known_client(http: httpx.Client):
    """client=nobody is 404; no client at all is the default client's (docs/clients.md)."""
    assert http.delete("/rest/v1/profiles/1", params={"client": "nobody"}).status_code == 404
    unnamed = http.delete("/rest/v1/profiles/1")
    assert unnamed.status_code == 404
    assert unnamed.json()["message"] == "No profile found for client demo with mboxPC=1"


def test_provenance_names_the_batch_line_or_the_update(http: httpx.Client, store: Store, drain):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a,b\nx,1,1\nx,,2\n"))
    drain()
    update(http, mbox3rdPartyId="x", profile_c="3")
    attrs = http.get("/rest/v1/profiles/thirdPartyId/x", params={"client": "demo"}).json()[
        "profileAttributes"
    ]
    assert attrs["a"]["writtenBy"] == {"kind": "batch", "id": batch_id, "line": 2}
    assert attrs["b"]["writtenBy"] == {"kind": "batch", "id": batch_id, "line": 3}
    assert attrs["c"]["writtenBy"]["kind"] == "update"
    assert re.fullmatch(r"update-\d+", attrs["c"]["writtenBy"]["id"])
    # Records of single updates are kept as long as batch statuses; then only the value stays.
    store.purge(now_ms() + 1)
    attrs = http.get("/rest/v1/profiles/thirdPartyId/x", params={"client": "demo"}).json()[
        "profileAttributes"
    ]
    assert "writtenBy" not in attrs["c"] and attrs["c"]["value"] == "3"
    assert attrs["a"]["writtenBy"]["id"] == batch_id


def test_client_limits_override_the_server_defaults():
    limits = client_limits(Settings(), {"profile_expiry_days": 14, "updates_per_day": 5})
    assert (limits.profile_expiry_days, limits.updates_per_day) == (14.0, 5)
    assert limits.expire_before_ms(DAY_MS * 20) == DAY_MS * 6
    assert client_limits(Settings(), {}).expire_before_ms(DAY_MS * 20) == 0


def visit_at(store: Store, moment: int, tnt_id: str, **values: str) -> None:
    """A page call made at ``moment``, so that a test needs no waiting to make a profile old."""
    client = store.get_client("demo")
    assert client is not None
    store.visit(client.id, Visit(tnt_id, None, values, "r"), moment, 10_000)


def test_profiles_never_expire_by_default(http: httpx.Client, store: Store):
    visit_at(store, now_ms() - 400 * DAY_MS, "ancient", a="1")
    assert attributes(http, "ancient", third_party=False) == {"a": "1"}


def test_expiry_is_configurable_per_client(http: httpx.Client, store: Store, settings: Settings):
    """A client with its own profile_expiry_days expires its profiles; other clients keep theirs."""
    clients.change(store, "demo", limits={"profile_expiry_days": "14"})
    other = store.ensure_client("other")
    visit_at(store, now_ms() - 15 * DAY_MS, "old", a="1")
    store.visit(other.id, Visit("old", None, {"a": "1"}, "r"), now_ms() - 15 * DAY_MS, 10_000)
    assert attributes(http, "old", third_party=False) is None
    assert attributes(http, "old", third_party=False, client="other") == {"a": "1"}
    assert Worker(store, settings).expire_profiles(now_ms()) == 1
    clients.change(store, "demo", limits={"profile_expiry_days": ""})
    assert attributes(http, "old", third_party=False) is None
    assert attributes(http, "old", third_party=False, client="other") == {"a": "1"}


class TestExpiry:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        """Expiry after 14 days, on each backend."""
        return Settings(database=database_url, workers=0, profile_expiry_days=14)

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The app's and the workers' clock, still until a test moves it."""
        return FakeClock(now_ms())

    @pytest.fixture
    def old(self, store: Store) -> None:
        """Profile `old` was last active 15 days ago, `recent` 13 days ago."""
        visit_at(store, now_ms() - 15 * DAY_MS, "old", a="1")
        visit_at(store, now_ms() - 13 * DAY_MS, "recent", a="1")

    def test_an_inactive_profile_is_not_found(self, http: httpx.Client, old):
        assert attributes(http, "old", third_party=False) is None
        assert attributes(http, "recent", third_party=False) == {"a": "1"}
        assert update(http, mboxPC="old", profile_b="2").status_code == 404
        assert http.delete("/rest/v1/profiles/old", params={"client": "demo"}).status_code == 404
        lines = http.get(
            "/rest/v1/profiles", params={"client": "demo", "format": "jsonl"}
        ).text.splitlines()
        assert len(lines) == 1 and '"recent"' in lines[0]

    def test_a_kept_reply_is_not_sent_once_its_profile_expired(
        self, http: httpx.Client, store: Store, clock: FakeClock, live_server: LiveServer
    ):
        client = store.get_client("demo")
        assert client is not None
        store.visit(client.id, Visit("ageing", None, {"a": "1"}, "r"), clock.ms, 10_000)
        assert attributes(http, "ageing", third_party=False) == {"a": "1"}
        clock.advance(14 * DAY_MS / 1000 - 1)
        assert attributes(http, "ageing", third_party=False) == {"a": "1"}
        replies = live_server.server.config.app.state.context.fetch_replies  # type: ignore[union-attr]
        assert replies.size[0] == 1  # kept
        clock.advance(2)  # nothing written: only time passed
        assert attributes(http, "ageing", third_party=False) is None

    def test_writes_after_expiry_start_a_new_profile(self, http: httpx.Client, drain, old):
        deliver(
            http,
            {"id": {"tntId": "old"}, "execute": {"pageLoad": {"profileParameters": {"b": "2"}}}},
        )
        assert attributes(http, "old", third_party=False) == {"b": "2"}

    def test_batches_see_an_expired_profile_as_gone(self, http: httpx.Client, drain, store: Store):
        visit_at(store, now_ms() - 15 * DAY_MS, "gone1", a="1")
        visit_at(store, now_ms() - 15 * DAY_MS, "gone2", a="1")
        v1 = batch_id_of(submit(http, b"batch=pcId,b\ngone1,2\n", v2=False))
        drain()
        submit(http, b"batch=pcId,b\ngone2,2\n")
        drain()
        assert status(http, v1)["profilesNotFound"] == "1"
        assert attributes(http, "gone1", third_party=False) is None
        assert attributes(http, "gone2", third_party=False) == {"b": "2"}

    def test_housekeeping_deletes_expired_profiles(
        self, http: httpx.Client, store: Store, settings: Settings, old
    ):
        deliver(http, {"id": {"tntId": "linked", "thirdPartyId": "crm-old"}})
        client = store.get_client("demo")
        assert client is not None
        assert Worker(store, settings).expire_profiles(now_ms()) == 1
        assert Worker(store, settings).expire_profiles(now_ms() + 14 * DAY_MS + 1) == 2
        assert (
            attributes(http, "crm-old") is None
            and attributes(http, "linked", third_party=False) is None
        )

    def test_page_calls_and_writes_keep_a_profile_active(
        self, http: httpx.Client, store: Store, clock: FakeClock
    ):
        """A page call naming the profile, even with no parameters, or any write is activity."""
        for tnt_id in ["idle", "called", "updated"]:
            visit_at(store, clock.ms - 13 * DAY_MS, tnt_id, a="1")
        deliver(http, {"id": {"tntId": "called"}})
        assert update(http, mboxPC="updated", profile_b="2").status_code == 200
        clock.advance(2 * 86_400)
        assert attributes(http, "idle", third_party=False) is None
        assert attributes(http, "called", third_party=False) == {"a": "1"}
        assert attributes(http, "updated", third_party=False) == {"a": "1", "b": "2"}
