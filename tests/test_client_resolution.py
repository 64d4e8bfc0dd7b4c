"""Which client a request is for, on routes that take it from outside the path: client=, then
the Host's first label, then imsOrgId, then the server's default_client; authorization as ever."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner
from helpers import TEST_SECRET, deliver, submit, xml_fields

from profilebase.cli import main
from profilebase.models import now_ms
from profilebase.server import clients, tokens
from profilebase.server.settings import Settings
from profilebase.server.storage import Store

ACME_ORG = "65453EA95E702E8C0A495E27@AdobeOrg"
BETA_ORG = "0000000000000000000000BB@AdobeOrg"


@pytest.fixture
def orgs(store: Store) -> None:
    """Clients acme and beta, each with its organization id, beside the default `demo`."""
    for code, org in [("acme", ACME_ORG), ("beta", BETA_ORG)]:
        clients.create(store, code, False, now_ms())
        clients.change(store, code, org_id=org)


def page_call(http: httpx.Client, params: dict[str, str], host: str | None = None):
    headers = {"Host": host} if host else {}
    return http.post(
        "/rest/v1/delivery", params={"sessionId": "s1", **params}, json={}, headers=headers
    )


@pytest.mark.parametrize(
    ("params", "host", "expected"),
    [
        ({"client": "acme"}, None, "acme"),
        ({"client": "demo"}, "acme.tt.omtrdc.net", "demo"),  # the query parameter comes first
        ({}, "acme.tt.omtrdc.net", "acme"),
        ({}, "ACME.tt.omtrdc.net:443", "acme"),
        ({"imsOrgId": BETA_ORG}, "acme.tt.omtrdc.net", "acme"),  # the Host before imsOrgId
        ({}, "nobody.tt.omtrdc.net", "demo"),  # a label that names no client falls through
        ({"imsOrgId": ACME_ORG}, None, "acme"),
        ({"imsOrgId": BETA_ORG}, "127.0.0.1:8080", "beta"),
        ({"imsOrgId": "FFFF@AdobeOrg"}, None, "demo"),  # no client has it: the default
        ({}, "[::1]:8080", "demo"),
        ({}, None, "demo"),
    ],
)
@pytest.mark.usefixtures("orgs")
def test_the_client_comes_from_the_first_source_that_names_one(
    http: httpx.Client, params: dict[str, str], host: str | None, expected: str
):
    response = page_call(http, params, host)
    assert response.status_code == 200, response.text
    assert response.json()["client"] == expected


@pytest.mark.usefixtures("orgs")
def test_an_unknown_client_parameter_is_404_not_a_fallback(http: httpx.Client):
    response = page_call(http, {"client": "nobody", "imsOrgId": ACME_ORG}, "acme.tt.omtrdc.net")
    assert response.status_code == 404 and "Unknown client 'nobody'" in response.json()["message"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({"default_client": "beta"}, 200), ({"default_client": ""}, 400), ({"demo": False}, 400)],
    indirect=["settings"],
)
@pytest.mark.usefixtures("orgs")
def test_the_default_client_is_a_setting(http: httpx.Client, settings: Settings, expected: int):
    """default_client names the fallback; empty (or a client that does not exist, as `demo`
    without the demo client) refuses a request that names none, saying how to name one."""
    response = page_call(http, {})
    assert response.status_code == expected
    if expected == 200:
        assert response.json()["client"] == "beta"
    else:
        message = response.json()["message"]
        assert "add ?client=<your client code>" in message and "--org-id" in message
        if not settings.demo:
            assert "default_client 'demo' does not exist" in message


@pytest.mark.usefixtures("orgs")
def test_every_route_that_takes_the_client_from_outside_the_path_resolves_it(
    http: httpx.Client, drain
):
    """Fetch, export, the literal single update and delete all find acme by imsOrgId alone."""
    submit(http, b"batch=thirdPartyId,tier\ncrm-1,gold\n", client="acme")
    drain()
    org = {"imsOrgId": ACME_ORG}
    fetched = http.get("/rest/v1/profiles/thirdPartyId/crm-1", params=org)
    assert fetched.status_code == 200 and fetched.json()["client"] == "acme"
    exported = http.get("/rest/v1/profiles", params=org)
    assert exported.status_code == 200 and '"crm-1"' in exported.text
    updated = http.get(
        "/m2/client/profile/update", params={**org, "mbox3rdPartyId": "crm-1", "profile.a": "1"}
    )
    assert updated.status_code == 200, updated.text
    assert (
        http.get("/rest/v1/profiles/thirdPartyId/crm-1", params={"client": "demo"}).status_code
        == 404
    )
    assert http.delete("/rest/v1/profiles/thirdPartyId/crm-1", params=org).status_code == 204
    assert http.get("/rest/v1/profiles/thirdPartyId/crm-1", params=org).status_code == 404


def test_the_literal_update_path_on_a_bare_address_uses_the_default_client(
    http: httpx.Client, live_server
):
    """`/m2/client/profile/update` sent to http://127.0.0.1:PORT (no client in the host) is
    for the default client, demo, rather than a 404 for a client named `client`."""
    deliver(http, {"id": {"thirdPartyId": "crm-7"}})
    response = http.get(
        "/m2/client/profile/update", params={"mbox3rdPartyId": "crm-7", "profile.tier": "gold"}
    )
    assert response.status_code == 200, response.text
    assert xml_fields(response)["success"] == "true"


def test_a_client_named_client_still_comes_before_the_default(http: httpx.Client, store: Store):
    clients.create(store, "client", False, now_ms())
    deliver(http, {"id": {"thirdPartyId": "crm-8"}}, client="client")
    response = http.get("/m2/client/profile/update", params={"mbox3rdPartyId": "crm-8"})
    assert response.status_code == 200, response.text


def test_authorization_does_not_depend_on_how_the_client_was_found(
    http: httpx.Client, store: Store
):
    """A client that requires a token requires it when found by imsOrgId or Host as well;
    page calls need none, as always."""
    client = clients.create(store, "secure", True, now_ms())[0]
    clients.change(store, "secure", org_id=ACME_ORG)
    token = tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value
    for how in [{"params": {"imsOrgId": ACME_ORG}}, {"headers": {"Host": "secure.example"}}]:
        refused = http.get("/rest/v1/profiles/p1", **how)  # type: ignore[arg-type]
        assert refused.status_code == 401, refused.text
        assert "Client 'secure' requires an authorization token" in refused.json()["message"]
        headers = {**how.get("headers", {}), "access_token": token}
        allowed = http.get("/rest/v1/profiles/p1", params=how.get("params"), headers=headers)
        assert allowed.status_code == 404  # authorized; there is no such profile
    assert page_call(http, {"imsOrgId": ACME_ORG}).json()["client"] == "secure"


def test_the_legacy_token_endpoint_resolves_its_client_too(http: httpx.Client, store: Store):
    """Target Classic's token call without client= finds the client by its Host label."""
    credentials = clients.create(store, "acme", True, now_ms())[1]
    response = http.post(
        "/admin/rest/v1/authentication/token",
        params={"scope": "profile_api"},
        headers={"Host": "acme.tt.omtrdc.net"},
        auth=(credentials.api_key, credentials.secret),
    )
    assert response.status_code == 200, response.text
    refused = http.post(
        "/admin/rest/v1/authentication/token",
        params={"scope": "profile_api"},
        auth=(credentials.api_key, credentials.secret),
    )
    assert refused.status_code == 401 and "client 'demo'" in refused.json()["message"]


def test_any_valid_token_among_several_authorizes(http: httpx.Client, store: Store):
    """A library that authenticates to Adobe I/O sends its own Bearer token and the profile
    token as access_token: the call is allowed; when neither is valid the 403 says of each
    header what is wrong with its token."""
    client = clients.create(store, "secure", True, now_ms())[0]
    other = clients.create(store, "other", True, now_ms())[0]
    right = tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value
    others = tokens.issue(store, other, TEST_SECRET, 3600, 0, now_ms()).value
    params = {"client": "secure"}
    both = {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.ims.token", "access_token": right}
    assert http.get("/rest/v1/profiles/p1", params=params, headers=both).status_code == 404
    swapped = {"Authorization": f"Bearer {right}", "access_token": "not-a-token"}
    assert http.get("/rest/v1/profiles/p1", params=params, headers=swapped).status_code == 404
    wrong = {"Authorization": "Bearer ims-token", "access_token": others}
    response = http.get("/rest/v1/profiles/p1", params=params, headers=wrong)
    assert response.status_code == 403
    message = response.json()["message"]
    assert "No token the call carries is valid for client 'secure'" in message
    assert "the authorization token in the Authorization header is not valid" in message
    assert "the authorization token in the access_token header belongs to another" in message
    alone = http.get("/rest/v1/profiles/p1", params=params, headers={"access_token": others})
    assert alone.json()["message"].startswith(
        "The authorization token in the access_token header belongs to another client"
    )


def test_clients_set_org_id(settings: Settings, store: Store):
    """--org-id sets, shows and removes the organization id; a malformed one or one that
    another client has is refused with a sentence saying what to do."""
    runner = CliRunner()
    env = {"PROFILEBASE_DATABASE": settings.database}
    clients.create(store, "acme", False, now_ms())
    clients.create(store, "beta", False, now_ms())

    def run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(main, list(args), env=env)

    done = run("clients", "set", "acme", "--org-id", ACME_ORG)
    assert done.exit_code == 0 and f"organization id: {ACME_ORG}" in done.output
    assert f"organization:  {ACME_ORG}" in run("clients", "show", "acme").output
    taken = run("clients", "set", "beta", "--org-id", ACME_ORG)
    assert taken.exit_code == 1 and "belongs to client 'acme' already" in taken.output
    bad = run("clients", "set", "beta", "--org-id", "acme<script>")
    assert bad.exit_code == 1 and "Invalid organization id" in bad.output
    assert "Traceback" not in bad.output + taken.output
    assert run("clients", "set", "acme", "--org-id", "").exit_code == 0
    assert store.find_client_by_org(ACME_ORG) is None
    assert run("clients", "set", "beta", "--org-id", ACME_ORG).exit_code == 0
    assert store.find_client_by_org(ACME_ORG).code == "beta"  # type: ignore[union-attr]


@pytest.mark.usefixtures("orgs")
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://acme.tt.omtrdc.net/rest/v1/delivery?sessionId=s1", "acme"),
        ("HTTPS://user@ACME.tt.omtrdc.net:443/rest/v1/delivery?sessionId=s1", "acme"),
        ("http://nobody.example/rest/v1/delivery?sessionId=s1", "demo"),
        ("/rest/v1/delivery?sessionId=s1", "beta"),  # origin form: the Host header
        ("http://acme.tt.omtrdc.net?client=demo", None),  # no path: / (405 for a POST), not 400
    ],
)
def test_an_absolute_request_target_names_the_client_before_the_host_header(
    live_server, target: str, expected: str | None
):
    """RFC 9112 3.2.2: a server takes the host of an absolute-form target and ignores the
    Host header, as Target's edge would."""
    import json
    import socket

    body = b"{}"
    request = (
        f"POST {target} HTTP/1.1\r\nHost: beta.tt.omtrdc.net\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    if expected is None:
        assert head.startswith(b"HTTP/1.1 405 "), reply[:500]
        return
    assert head.startswith(b"HTTP/1.1 200 "), reply[:500]
    assert json.loads(payload)["client"] == expected


@pytest.mark.parametrize(
    ("target", "absolute"),
    [
        (b"/rest/v1/delivery", None),
        (b"*", None),
        (b"http://acme.x", (b"acme.x", b"/")),
        (b"http://acme.x:8080/p?q=http://other.y/", (b"acme.x:8080", b"/p?q=http://other.y/")),
        (b"http://u:pw@acme.x/p", (b"acme.x", b"/p")),
        (b"http://acme.x?client=b", (b"acme.x", b"/?client=b")),
        (b"HTTP://[::1]:80/p", (b"[::1]:80", b"/p")),
        (b"http:///p", None),
        (b"ftp://acme.x/p", None),
        (b"/p?next=http://other.y/", None),
    ],
)
def test_absolute_target(target: bytes, absolute: tuple[bytes, bytes] | None):
    from profilebase.server.web.server import absolute_target

    assert absolute_target(target) == absolute
