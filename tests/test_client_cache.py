"""The web layer's cache of clients: a change written by another process applies within
client_cache_seconds, a change made in this process at once, tokens are never cached."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers import TEST_SECRET

from profilebase.models import now_ms
from profilebase.server import clients, tokens
from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.web.client_cache import MAX_KEY_CHARS, ClientCache, NotCached

BOUND = 0.3


class Monotonic:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_change_written_elsewhere_applies_once_the_bound_has_passed(store: Store):
    """Written to the database directly (as `profilebase clients` does from its own
    process), a change is not seen until the cached copy is client_cache_seconds old."""
    clients.create(store, "acme", False, now_ms())
    clock = Monotonic()
    cache = ClientCache(1.0, clock)
    first = cache.reading(store).get_client("acme")
    assert first is not None and not first.disabled
    store.update_client("acme", disabled=True)
    clock.now += 0.999
    cached = cache.cached().get_client("acme")
    assert cached is not None and not cached.disabled
    clock.now += 0.001
    with pytest.raises(NotCached):
        cache.cached().get_client("acme")
    fresh = cache.reading(store).get_client("acme")
    assert fresh is not None and fresh.disabled


def test_a_change_made_in_this_process_applies_at_once(store: Store):
    """clients.change, clients.create and clients.new_secret make every cache forget."""
    clock = Monotonic()
    cache = ClientCache(60.0, clock)
    assert cache.reading(store).get_client("acme") is None
    assert cache.cached().get_client("acme") is None  # no such client: cached too
    clients.create(store, "acme", False, now_ms())
    found = cache.reading(store).get_client("acme")
    assert found is not None
    clients.change(store, "acme", require_auth=True)
    with pytest.raises(NotCached):
        cache.cached().get_client("acme")
    changed = cache.reading(store).get_client("acme")
    assert changed is not None and changed.require_auth
    clients.new_secret(store, "acme")
    with pytest.raises(NotCached):
        cache.cached().get_client("acme")


def test_organization_ids_are_cached_apart_from_codes(store: Store):
    """A lookup by organization id is its own entry, with the same bound."""
    org = "65453EA95E702E8C0A495E27@AdobeOrg"
    clients.create(store, "acme", False, now_ms())
    clients.change(store, "acme", org_id=org)
    clock = Monotonic()
    cache = ClientCache(1.0, clock)
    with pytest.raises(NotCached):
        cache.cached().find_client_by_org(org)
    by_org = cache.reading(store).find_client_by_org(org)
    assert by_org is not None and by_org.code == "acme"
    assert cache.cached().find_client_by_org(org) == by_org
    with pytest.raises(NotCached):
        cache.cached().get_client("acme")


def test_a_name_longer_than_any_client_s_is_read_each_time_never_kept():
    """A caller may send names of 60,000 characters; keeping 4,096 of them took hundreds of
    megabytes. Past MAX_KEY_CHARS a name is looked up each time (and names no client)."""
    cache = ClientCache(60.0, Monotonic())
    reads: list[str] = []

    def read() -> None:
        reads.append("read")

    long = "x" * (MAX_KEY_CHARS + 1)
    for kind in ("code", "org"):
        assert cache.find(kind, long, read) is None
        assert cache.find(kind, long, read) is None
        with pytest.raises(NotCached):
            cache.find(kind, long, None)
    assert len(reads) == 4
    edge = "x" * MAX_KEY_CHARS  # at the bound: kept as any other
    assert cache.find("code", edge, read) is None and cache.find("code", edge, None) is None
    assert len(reads) == 5


def test_zero_seconds_reads_the_database_every_time(store: Store):
    """client_cache_seconds = 0 keeps nothing."""
    cache = ClientCache(0, Monotonic())
    assert cache.reading(store).get_client("demo") is not None
    with pytest.raises(NotCached):
        cache.cached().get_client("demo")


@pytest.mark.parametrize("settings", [{"client_cache_seconds": BOUND}], indirect=True)
def test_a_client_disabled_by_another_process_is_refused_within_the_bound(
    http: httpx.Client, store: Store, settings: Settings
):
    """The server serves a client disabled behind its back for at most client_cache_seconds
    (the documented bound, waited for here), then refuses it."""
    clients.create(store, "acme", False, now_ms())
    call = {"execute": {"pageLoad": {"profileParameters": {"seen": "1"}}}}
    params = {"client": "acme", "sessionId": "s1"}
    assert http.post("/rest/v1/delivery", params=params, json=call).status_code == 200
    store.update_client("acme", disabled=True)  # what `profilebase clients disable` writes
    time.sleep(settings.client_cache_seconds)
    refused = http.post("/rest/v1/delivery", params=params, json=call)
    assert refused.status_code == 403 and "is disabled" in refused.json()["message"]


def test_a_revoked_token_is_refused_at_once(http: httpx.Client, store: Store):
    """Tokens are checked against the database on every call, whatever the client cache."""
    client = clients.create(store, "acme", True, now_ms())[0]
    value = tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value
    headers = {"Authorization": f"Bearer {value}"}
    path = "/rest/v1/profiles/thirdPartyId/nobody"
    assert http.get(path, params={"client": "acme"}, headers=headers).status_code == 404
    store.revoke_tokens(client.id, now_ms())
    refused = http.get(path, params={"client": "acme"}, headers=headers)
    assert refused.status_code == 403


def test_a_cached_client_s_token_is_checked_before_anything_of_a_fetch(
    http: httpx.Client, store: Store
):
    """With the client cached, a fetch's token check moves into its trip to a thread, still
    first: no token 401 and a wrong one 403, even for an id the fetch would refuse (400)."""
    client = clients.create(store, "acme", True, now_ms())[0]
    value = tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value
    params = {"client": "acme"}
    good = {"Authorization": f"Bearer {value}"}
    for _ in range(2):  # the first request reads the client, the second finds it cached
        assert (
            http.get("/rest/v1/profiles/thirdPartyId/x", params=params, headers=good).status_code
            == 404
        )
    bad_id = "/rest/v1/profiles/thirdPartyId/%ZZ"
    assert http.get(bad_id, params=params, headers=good).status_code == 400
    assert http.get(bad_id, params=params).status_code == 401
    wrong = {"Authorization": "Bearer not-a-token"}
    assert http.get(bad_id, params=params, headers=wrong).status_code == 403
