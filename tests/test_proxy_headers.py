"""X-Forwarded-For is believed only from the proxies named in forwarded_allow_ips (default:
none), so a caller cannot pick the address its failed authentications are counted under.
A real `profilebase serve` on loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_crash import ServerProcess

from profilebase.errors import ConfigError
from profilebase.models import now_ms
from profilebase.server import clients
from profilebase.server.settings import Settings
from profilebase.server.storage import open_store
from profilebase.server.web.app import prepare

pytestmark = pytest.mark.slow

FETCH = "/rest/v1/profiles/thirdPartyId/crm-1"


@pytest.fixture
def database(tmp_path: Path) -> str:
    """A database with the client `acme`, which requires a token."""
    url = f"sqlite:///{tmp_path}/proxy.db"
    store = open_store(url)
    prepare(store, Settings(database=url))
    clients.create(store, "acme", True, now_ms())
    store.close()
    return url


def fail(http: httpx.Client, forwarded_for: str) -> httpx.Response:
    """A fetch with a wrong token, claiming to come from ``forwarded_for``."""
    return http.get(
        FETCH,
        params={"client": "acme"},
        headers={"Authorization": "Bearer wrong", "X-Forwarded-For": forwarded_for},
    )


def serve(database: str, tmp_path: Path, **settings: str) -> ServerProcess:
    return ServerProcess(
        database, tmp_path / "server.log", workers="0", auth_failures_per_minute="2", **settings
    )


def test_forwarded_for_from_loopback_is_not_believed_by_default(database: str, tmp_path: Path):
    """By default a loopback caller's failures count under 127.0.0.1 whatever address it
    claims: a new X-Forwarded-For does not buy it new attempts."""
    server = serve(database, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert [fail(http, f"203.0.113.{i}").status_code for i in range(3)] == [403] * 3
            limited = fail(http, "198.51.100.7")
        assert limited.status_code == 429
        assert "from 127.0.0.1:" in limited.json()["message"]
        assert "203.0.113" not in limited.text and "198.51.100" not in limited.text
    finally:
        server.kill()


def test_forwarded_for_from_a_named_proxy_is_believed(database: str, tmp_path: Path):
    """With forwarded_allow_ips naming the proxy (loopback here), each forwarded address is
    counted on its own: one that failed too often waits, another does not."""
    server = serve(database, tmp_path, forwarded_allow_ips="127.0.0.1")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert [fail(http, "203.0.113.9").status_code for _ in range(3)] == [403] * 3
            limited = fail(http, "203.0.113.9")
            other = fail(http, "198.51.100.7")
        assert limited.status_code == 429
        assert "from 203.0.113.9" in limited.json()["message"]
        assert other.status_code == 403
    finally:
        server.kill()


def test_an_invalid_proxy_list_stops_serve_with_a_clear_message(database: str):
    """A name instead of an address is refused when the settings are read."""
    with pytest.raises(ConfigError, match="forwarded_allow_ips holds 'lb.internal'"):
        Settings.from_env({"PROFILEBASE_FORWARDED_ALLOW_IPS": "10.0.0.5, lb.internal"})
