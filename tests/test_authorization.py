"""Authorization and isolation: every profile route × every kind of credential, on a
client that requires authorization and on one that does not (real sockets)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from conftest import FakeClock, LiveServer, PostgresServer
from helpers import TEST_SECRET, batch_id_of, deliver, submit, xml_fields
from starlette.routing import Route as StarletteRoute

from profilebase.models import now_ms
from profilebase.server import clients, tokens
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store, open_store
from profilebase.server.web import create_app
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

BODY = b"batch=pcId,a\npc1,new\n"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    params: dict[str, str]
    body: bytes | None = None
    #: True if the right credentials make it store a batch.
    writes: bool = False
    #: True if its reply to the right credentials is a profile fetched as JSON.
    fetches: bool = False

    def request(
        self, http: httpx.Client, client: str, batch_id: str, headers: dict[str, str]
    ) -> httpx.Response:
        path = self.path.format(client=client, batch=batch_id)
        params = {k: v.format(client=client, batch=batch_id) for k, v in self.params.items()}
        return http.request(self.method, path, params=params, content=self.body, headers=headers)


EXTENSION = "/profilebase/v1/clients/{client}"

#: Every route that touches a client's data, Target's and profilebase's own extensions;
#: a new one must be added here to be covered.
ROUTES = {
    "batchUpdate v1": Route("POST", "/m2/{client}/profile/batchUpdate", {}, BODY, writes=True),
    "batchUpdate v2": Route("POST", "/m2/{client}/v2/profile/batchUpdate", {}, BODY, writes=True),
    "batchUpdate dry run": Route(
        "POST", "/m2/{client}/v2/profile/batchUpdate", {"dryRun": "true"}, BODY
    ),
    "batchStatus": Route(
        "GET", "/m2/{client}/profile/batchStatus", {"batchId": "{batch}", "showDetails": "true"}
    ),
    "batchStatus v2": Route("GET", "/m2/{client}/v2/profile/batchStatus", {"batchId": "{batch}"}),
    "fetch pcId": Route("GET", "/rest/v1/profiles/pc1", {"client": "{client}"}, fetches=True),
    "fetch thirdPartyId": Route(
        "GET", "/rest/v1/profiles/thirdPartyId/tp1", {"client": "{client}"}, fetches=True
    ),
    "single update GET": Route(
        "GET", "/m2/{client}/profile/update", {"mboxPC": "pc1", "profile.seen": "get"}
    ),
    "single update POST": Route(
        "POST", "/m2/{client}/profile/update", {"mbox3rdPartyId": "tp1", "profile.seen": "post"}
    ),
    "delete pcId": Route("DELETE", "/rest/v1/profiles/doomed", {"client": "{client}"}),
    "delete thirdPartyId": Route(
        "DELETE", "/rest/v1/profiles/thirdPartyId/doomed", {"client": "{client}"}
    ),
    "fetch ECID": Route(
        "GET",
        "/rest/v1/profiles/marketingCloudVisitorId/ecid1",
        {"client": "{client}"},
        fetches=True,
    ),
    "delete ECID": Route(
        "DELETE", "/rest/v1/profiles/marketingCloudVisitorId/doomed", {"client": "{client}"}
    ),
    "export": Route("GET", "/rest/v1/profiles", {"client": "{client}", "format": "jsonl"}),
    "client info": Route("GET", EXTENSION, {}),
    "JSON batch status": Route("GET", EXTENSION + "/batches/{batch}", {}),
    "failed rows": Route("GET", EXTENSION + "/batches/{batch}/failures", {}),
    "failed rows as CSV": Route("GET", EXTENSION + "/batches/{batch}/failures", {"format": "csv"}),
    "failed rows as JSONL": Route(
        "GET", EXTENSION + "/batches/{batch}/failures", {"format": "jsonl"}
    ),
    "batch list": Route("GET", EXTENSION + "/batches", {}),
    "cancel": Route("POST", EXTENSION + "/batches/{batch}/cancel", {}),
    "import": Route(
        "POST",
        EXTENSION + "/imports",
        {},
        b'{"visitorId": "pc1", "profileAttributes": {}}\n',
        writes=True,
    ),
}

#: Routes that touch no client's data, or authenticate with the client's secret instead
#: (the token endpoints, tests/test_tokens.py), or, as Target's Delivery API, take no
#: credentials at all (test_page_calls_need_no_token below).
NOT_IN_ROUTES = {
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/rest/v1/delivery",
    "/{client}/target/authentication/token",
    "/admin/rest/v1/authentication/token",
    # The dashboard's door, its logout and its own script and stylesheet
    # (tests/test_dashboard.py), and the metrics (tests/test_metrics.py).
    "/",
    "/ui/login",
    "/ui/logout",
    "/ui/static/{name}",
    "/metrics",
}

#: The dashboard's routes: a login session instead of a token (DASHBOARD_SESSIONS).
DASHBOARD = {
    "overview": Route("GET", "/ui", {}),
    "batch list": Route("GET", "/ui/batches", {"client": "{client}"}),
    "batch page": Route("GET", "/ui/batches/{client}/{batch}", {}),
    "failed rows CSV": Route("GET", "/ui/batches/{client}/{batch}/failed.csv", {}),
    "profile lookup": Route(
        "GET", "/ui/profiles", {"client": "{client}", "kind": "pcId", "id": "pc1"}, fetches=True
    ),
    "upload": Route("POST", "/ui/upload", {}, BODY, writes=True),
}

#: The dashboard sessions the table tries on client `secure`'s data.
DASHBOARD_SESSIONS = ["no login", "secure's login", "other's login", "admin"]
ADMIN_PASSWORD = "admin password of the world"

#: What each kind of credential gets from a client that requires authorization.
EXPECTED = {
    "no token": (401, "requires an authorization token"),
    "wrong token": (403, "is not valid for client"),
    "other client's token": (403, "belongs to another client"),
    "expired token": (403, "expired at"),
    "revoked token": (403, "was revoked at"),
    "right token": (200, None),  # or 204 for a delete
}


class World:
    """One server with clients `secure` (requires authorization), `open` (does not) and
    `other`; each has a batch, profiles pc1 and tp1, and tokens in every state. The
    failed-authentication slowdown is off here (it has its own tests below)."""

    def __init__(self, database: str) -> None:
        self.settings = Settings(
            database=database,
            workers=0,
            auth_failures_per_minute=0,
            admin_password=ADMIN_PASSWORD,
        )
        self.store = open_store(self.settings.database)
        prepare(self.store, self.settings)
        self.server = LiveServer(self.settings, self.store, workers=0).__enter__()
        self.http = httpx.Client(base_url=self.server.url, timeout=30)
        self.batch: dict[str, str] = {}
        self.tokens: dict[str, dict[str, str]] = {}
        now = now_ms()
        for code in ["secure", "open", "other"]:
            client = clients.create(self.store, code, False, now)[0]
            body = f"batch=pcId,owner\npc1,{code}\n".encode()
            self.batch[code] = batch_id_of(submit(self.http, body, client=code))
            submit(self.http, f"batch=thirdPartyId,owner\ntp1,{code}\n".encode(), client=code)
            expired = tokens.issue(self.store, client, TEST_SECRET, 1, 0, now - 10_000).value
            revoked = tokens.issue(self.store, client, TEST_SECRET, 3600, 0, now - 5_000).value
            right = tokens.issue(self.store, client, TEST_SECRET, 3600, 0, now).value
            self.tokens[code] = {
                "expired token": expired,
                "revoked token": revoked,
                "right token": right,
            }
        Worker(self.store, self.settings).run(until_idle=True)
        for code in ["secure", "open", "other"]:
            deliver(self.http, {"id": {"tntId": "pc1", "marketingCloudVisitorId": "ecid1"}}, code)
        for code in ["secure", "other"]:
            clients.change(self.store, code, require_auth=True)

    def headers(self, client: str, credential: str) -> dict[str, str]:
        value = {
            "no token": None,
            "wrong token": "not-a-token-" + "x" * 32,
            "other client's token": self.tokens["other"]["right token"],
        }.get(credential) or self.tokens[client].get(credential)
        return {} if value is None else {"Authorization": f"Bearer {value}"}

    def doomed(self, client: str, route: Route) -> bool:
        """Whether the client has the profile a delete route deletes (by the route's id)."""
        found = self.store.get_client(client)
        assert found is not None
        key = "t:doomed" if "thirdPartyId" in route.path else "p:doomed"
        if "marketingCloudVisitorId" in route.path:
            key = "m:doomed"
        return self.store.get_profile(found.id, key) is not None

    def target_batch(self, client: str, route: Route) -> str:
        """The batch a route names: for a cancel, a fresh queued one (a completed batch has
        nothing left to cancel)."""
        if not route.path.endswith("/cancel"):
            return self.batch[client]
        found = self.store.get_client(client)
        assert found is not None
        limits = client_limits(self.settings, found.limits)
        intake = Intake(limits, self.settings.unit_rows)
        intake.feed(b"batch=pcId,queued\nqueued,1\n")
        return store_batch(self.store, found, 2, intake.finish(), limits, now_ms())[1]

    def make_doomed(self, client: str, route: Route) -> None:
        """Give the client the profile a delete route deletes, if it has not."""
        if route.method != "DELETE" or self.doomed(client, route):
            return
        if "marketingCloudVisitorId" in route.path:  # only a page call links an ECID
            ids = {"tntId": "doomed-visitor", "marketingCloudVisitorId": "doomed"}
            deliver(self.http, {"id": ids}, client)
            return
        found = self.store.get_client(client)
        assert found is not None
        column = "thirdPartyId" if "thirdPartyId" in route.path else "pcId"
        limits = client_limits(self.settings, found.limits)
        intake = Intake(limits, self.settings.unit_rows)
        intake.feed(f"batch={column},owner\ndoomed,{client}\n".encode())
        store_batch(self.store, found, 2, intake.finish(), limits, now_ms())
        Worker(self.store, self.settings).run(until_idle=True)

    def written(self, client: str) -> tuple[int, int, object]:
        """Batches accepted for the client, units not yet applied anywhere, and the
        attributes of its profiles pc1 and tp1 (which the single update routes change)."""
        found = self.store.get_client(client)
        assert found is not None
        profiles = [self.store.get_profile(found.id, key) for key in ["p:pc1", "t:tp1"]]
        attributes = [
            {name: a.value for name, a in p.attributes.items()} if p else None for p in profiles
        ]
        return len(self.store.recent_batches(found.id, 0)), self.store.pending_units(), attributes

    def close(self) -> None:
        self.http.close()
        self.server.__exit__()
        self.store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """The world on each backend, built once per module (the table has hundreds of cases)."""
    if request.param == "sqlite":
        the_world = World(f"sqlite:///{tmp_path_factory.mktemp('world')}/world.db")
        yield the_world
        the_world.close()
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = server.clone()
    the_world = World(server.with_database(name))
    yield the_world
    the_world.close()
    server.drop(name)


def assert_format(route: Route, response: httpx.Response) -> str:
    """The reply is in the endpoint's own format (XML for /m2/ but a dry run's report,
    JSON for the rest, CSV when asked for); return its message (or body)."""
    if route.path.startswith("/m2/") and (
        response.status_code >= 400 or "dryRun" not in route.params
    ):
        fields = xml_fields(response)
        if response.status_code >= 400:
            assert fields["success"] == "false"
            return fields["message"]
        return response.text
    if response.status_code < 400:
        return response.text
    assert response.headers["content-type"].startswith("application/json")
    return str(response.json()["message"])


def test_every_route_of_the_app_is_in_the_table(settings: Settings):
    """A route added to the app is either in ROUTES or named in NOT_IN_ROUTES."""
    app = create_app(settings, workers=0)
    for route in app.routes:
        assert isinstance(route, StarletteRoute)
        if route.path in NOT_IN_ROUTES:
            continue
        for method in (route.methods or set()) - {"HEAD"}:
            assert any(
                entry.method == method
                and route.path_regex.match(entry.path.format(client="c", batch="b"))
                for entry in [*ROUTES.values(), *DASHBOARD.values()]
            ), f"{method} {route.path} is missing from ROUTES"


@pytest.mark.parametrize("credential", list(EXPECTED))
@pytest.mark.parametrize("route_name", list(ROUTES))
def test_client_that_requires_authorization(world: World, route_name: str, credential: str):
    """Only the client's own valid token passes; every refusal says why and writes nothing."""
    route = ROUTES[route_name]
    world.make_doomed("secure", route)
    batch = world.target_batch("secure", route)
    before = world.written("secure")
    response = route.request(world.http, "secure", batch, world.headers("secure", credential))
    status, fragment = EXPECTED[credential]
    assert response.status_code == status or (fragment is None and response.is_success), (
        response.text
    )
    message = assert_format(route, response)
    if fragment is None:
        assert world.written("secure")[0] == before[0] + route.writes
        if route.path.endswith(("/batchUpdate", "/profile/update")):
            assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(
                response.headers
            )
        if route.fetches:
            assert response.json()["profileAttributes"]["owner"]["value"] == "secure"
        if route.method == "DELETE":
            assert not world.doomed("secure", route)
        if route.path.startswith("/profilebase/") and route.params.get("format") is None:
            body = response.json()
            assert body.get("client", "secure") == "secure"
            if not route.writes:  # an import answers with its own new batch id
                assert body.get("batchId", batch) == batch
        return
    assert fragment in message
    assert world.written("secure") == before
    assert route.method != "DELETE" or world.doomed("secure", route)
    assert "owner" not in response.text and "batchSize" not in response.text
    assert not any(h.lower().startswith("x-ratelimit") for h in response.headers)
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("credential", list(EXPECTED))
@pytest.mark.parametrize("route_name", list(ROUTES))
def test_client_that_does_not_require_authorization_ignores_tokens(
    world: World, route_name: str, credential: str
):
    route = ROUTES[route_name]
    world.make_doomed("open", route)
    batch = world.target_batch("open", route)
    response = route.request(world.http, "open", batch, world.headers("open", credential))
    assert response.is_success, response.text
    assert_format(route, response)
    if route.fetches:
        assert response.json()["profileAttributes"]["owner"]["value"] == "open"


@pytest.mark.parametrize(
    "spelling", ["Authorization: Bearer", "Authorization: bearer", "access_token"]
)
def test_both_header_spellings_are_accepted(world: World, spelling: str):
    token = world.tokens["secure"]["right token"]
    name, _, scheme = spelling.partition(": ")
    headers = {name: f"{scheme} {token}".strip()}
    response = world.http.get("/rest/v1/profiles/pc1", params={"client": "secure"}, headers=headers)
    assert response.status_code == 200


def test_basic_credentials_are_not_a_profile_api_token(world: World):
    response = world.http.get("/rest/v1/profiles/pc1", params={"client": "secure"}, auth=("a", "b"))
    assert response.status_code == 401


def not_found_text(response: httpx.Response, *ids: str) -> str:
    text = response.text
    for identifier in ids:
        text = text.replace(identifier, "<id>")
    return text


def test_another_clients_batch_ids_are_not_found(world: World):
    """With its own valid token, `secure` sees `other`'s batch id exactly as a made-up one."""
    headers = world.headers("secure", "right token")
    theirs = world.batch["other"]
    made_up = re.sub(r"-\d+$", "-999999", theirs)
    answers = [
        world.http.get(
            f"/m2/secure{v2}/profile/batchStatus", params={"batchId": batch_id}, headers=headers
        )
        for v2 in ["", "/v2"]
        for batch_id in [theirs, made_up]
    ]
    assert {r.status_code for r in answers} == {404}
    assert not_found_text(answers[0], theirs) == not_found_text(answers[1], made_up)
    assert "owner" not in answers[0].text and "batchSize" not in answers[0].text


@pytest.mark.parametrize(
    ("tail", "params"), [("", {}), ("/failures", {}), ("/failures", {"format": "csv"})]
)
def test_another_clients_batch_ids_are_not_found_by_the_extensions(
    world: World, tail: str, params: dict[str, str]
):
    """The JSON status and the failed rows answer `other`'s batch id as a made-up one."""
    headers = world.headers("secure", "right token")
    theirs = world.batch["other"]
    made_up = re.sub(r"-\d+$", "-999999", theirs)
    answers = [
        world.http.get(
            f"/profilebase/v1/clients/secure/batches/{batch_id}{tail}",
            params=params,
            headers=headers,
        )
        for batch_id in [theirs, made_up]
    ]
    assert [r.status_code for r in answers] == [404, 404]
    assert not_found_text(answers[0], theirs) == not_found_text(answers[1], made_up)
    assert "owner" not in answers[0].text and "batchSize" not in answers[0].text


def test_another_clients_profiles_are_not_found(world: World, store_other_only: str):
    headers = world.headers("secure", "right token")
    for path in [
        f"/rest/v1/profiles/{store_other_only}",
        f"/rest/v1/profiles/thirdPartyId/{store_other_only}",
    ]:
        theirs = world.http.get(path, params={"client": "secure"}, headers=headers)
        made_up = world.http.get(
            path.replace(store_other_only, "nobody-at-all"),
            params={"client": "secure"},
            headers=headers,
        )
        assert theirs.status_code == made_up.status_code == 404
        assert not_found_text(theirs, store_other_only) == not_found_text(made_up, "nobody-at-all")


@pytest.fixture
def store_other_only(world: World) -> str:
    """A visitor id that only client `other` has, under both kinds of id."""
    token = {"Authorization": "Bearer " + world.tokens["other"]["right token"]}
    for body in [b"batch=pcId,a\nonly-other,1\n", b"batch=thirdPartyId,a\nonly-other,1\n"]:
        assert (
            world.http.post(
                "/m2/other/v2/profile/batchUpdate", content=body, headers=token
            ).status_code
            == 200
        )
    Worker(world.store, world.settings).run(until_idle=True)
    assert (
        world.http.get(
            "/rest/v1/profiles/only-other", params={"client": "other"}, headers=token
        ).status_code
        == 200
    )
    return "only-other"


def test_same_visitor_id_in_two_clients_stays_apart(world: World):
    for code in ["secure", "other"]:
        response = world.http.get(
            "/rest/v1/profiles/pc1",
            params={"client": code},
            headers=world.headers(code, "right token"),
        )
        assert response.json()["profileAttributes"]["owner"]["value"] == code
        assert response.json()["client"] == code


# -- the dashboard: sessions instead of tokens ----------------------------------------------


def dashboard_session(world: World, session: str) -> httpx.Client:
    """A browser-like client holding ``session``: logged in through the login form."""
    http = httpx.Client(base_url=world.server.url, timeout=30)
    fields = {
        "no login": None,
        "secure's login": {"client": "secure", "token": world.tokens["secure"]["right token"]},
        "other's login": {"client": "other", "token": world.tokens["other"]["right token"]},
        "admin": {"password": ADMIN_PASSWORD},
    }[session]
    page = http.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    if fields is not None:
        assert http.post("/ui/login", data={"csrf": csrf.group(1), **fields}).status_code == 303
    return http


def dashboard_request(
    http: httpx.Client, route: Route, client: str, batch_id: str
) -> httpx.Response:
    if route.method == "POST":  # the upload form, with the session's CSRF token
        page = http.get("/ui/batches")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        return http.post(
            route.path,
            data={"csrf": found.group(1) if found else "none", "client": client},
            files={"batch": ("batch.txt", route.body or b"", "text/plain")},
        )
    return route.request(http, client, batch_id, {})


@pytest.mark.parametrize("session", DASHBOARD_SESSIONS)
@pytest.mark.parametrize("route_name", list(DASHBOARD))
def test_dashboard_pages_of_a_client_that_requires_authorization(
    world: World, route_name: str, session: str
):
    """`secure`'s data: its own login and the admin see it, no login is sent to the login
    page, `other`'s login finds nothing (404, as for ids that do not exist)."""
    route = DASHBOARD[route_name]
    world.make_doomed("secure", route)
    before = world.written("secure")
    http = dashboard_session(world, session)
    try:
        response = dashboard_request(http, route, "secure", world.batch["secure"])
    finally:
        http.close()
    if session == "no login":
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login?next=")
        assert world.written("secure") == before
        return
    if session == "other's login" and route_name != "overview":
        assert response.status_code == 404, response.text
        assert "owner" not in response.text and world.written("secure") == before
        return
    if route.writes:
        assert response.status_code == 303, response.text
        assert world.written("secure")[0] == before[0] + 1
        return
    assert response.status_code == 200, response.text
    if session == "other's login":  # the overview: other's own, nothing of secure's
        assert world.batch["secure"] not in response.text and ">secure<" not in response.text
        return
    if route.fetches:
        assert "secure" in response.text and ">owner<" in response.text
    if "{batch}" in route.path:
        assert world.batch["secure"] in response.text or route.path.endswith(".csv")


@pytest.mark.parametrize("route_name", list(DASHBOARD))
def test_a_client_login_never_sees_another_clients_dashboard(world: World, route_name: str):
    """With its own valid login, `secure` sees `other`'s (and `open`'s) data as not found."""
    route = DASHBOARD[route_name]
    if route_name == "overview":
        return
    http = dashboard_session(world, "secure's login")
    try:
        for code in ["other", "open"]:
            before = world.written(code)
            response = dashboard_request(http, route, code, world.batch[code])
            assert response.status_code == 404, response.text
            assert "owner" not in response.text and world.written(code) == before
    finally:
        http.close()


# -- disabled clients and the failed-authentication slowdown --------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now_ms())


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database=database_url, workers=0, auth_failures_per_minute=3)


@pytest.mark.parametrize("require_auth", [True, False])
def test_a_disabled_client_gets_403_everywhere(
    http: httpx.Client, store: Store, require_auth: bool
):
    client, credentials = clients.create(store, "gone", require_auth, now_ms())
    token = tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value
    batch_id = batch_id_of(
        submit(http, BODY, client="gone")
        if not require_auth
        else http.post(
            "/m2/gone/v2/profile/batchUpdate", content=BODY, headers={"access_token": token}
        )
    )
    clients.change(store, "gone", disabled=True)
    headers = {"Authorization": f"Bearer {token}"}
    for route in ROUTES.values():
        response = route.request(http, "gone", batch_id, headers)
        assert response.status_code == 403
        assert "is disabled" in assert_format(route, response)
    for method in ["GET", "POST"]:
        for path, params in [
            ("/gone/target/authentication/token", {"scope": "profile_api"}),
            ("/admin/rest/v1/authentication/token", {"client": "gone", "scope": "profile_api"}),
        ]:
            response = http.request(
                method, path, params=params, auth=(credentials.api_key, credentials.secret)
            )
            assert response.status_code == 403 and "is disabled" in response.json()["message"]
    clients.change(store, "gone", disabled=False)
    assert ROUTES["batchStatus"].request(http, "gone", batch_id, headers).status_code == 200


def test_page_calls_need_no_token(http: httpx.Client, store: Store):
    """Target's Delivery API takes no credentials, so a page call of a client that requires
    authorization for its profile APIs needs no token; a disabled client is refused."""
    client = clients.create(store, "shop", True, now_ms())[0]
    call = {
        "id": {"tntId": "a" * 32 + ".0_0"},
        "execute": {"pageLoad": {"profileParameters": {"seen": "1"}}},
    }
    assert deliver(http, call, client="shop").status_code == 200
    token = {
        "Authorization": "Bearer "
        + tokens.issue(store, client, TEST_SECRET, 3600, 0, now_ms()).value
    }
    fetched = http.get(
        f"/rest/v1/profiles/{'a' * 32}.0_0", params={"client": "shop"}, headers=token
    )
    assert fetched.json()["profileAttributes"]["seen"]["value"] == "1"
    clients.change(store, "shop", disabled=True)
    refused = deliver(http, call, client="shop")
    assert refused.status_code == 403 and "is disabled" in refused.json()["message"]


def test_failed_authentications_slow_down_that_address_only(
    http: httpx.Client, store: Store, clock: FakeClock
):
    """More than 3 failures a minute (set here) from one address: 429 there, not elsewhere."""
    client, credentials = clients.create(store, "acme", True, now_ms())
    good = {
        "Authorization": "Bearer "
        + tokens.issue(store, client, TEST_SECRET, 3600, 0, clock()).value
    }
    bad = {"Authorization": "Bearer wrong"}

    def call(address: str, headers: dict[str, str]) -> httpx.Response:
        return http.get(
            "/rest/v1/profiles/x",
            params={"client": "acme"},
            headers={**headers, "X-Forwarded-For": address},
        )

    assert [call("10.0.0.1", bad).status_code for _ in range(4)] == [403] * 4
    blocked = call("10.0.0.1", good)
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["retry-after"]) <= 60
    assert "auth_failures_per_minute" in blocked.json()["message"]
    basic = http.post(
        "/acme/target/authentication/token",
        params={"scope": "profile_api"},
        auth=(credentials.api_key, credentials.secret),
        headers={"X-Forwarded-For": "10.0.0.1"},
    )
    assert basic.status_code == 429
    assert call("10.0.0.2", good).status_code == 404  # authorized: no such profile
    clock.advance(60)
    assert call("10.0.0.1", good).status_code == 404


def test_wrong_basic_secrets_count_as_failures(http: httpx.Client, store: Store):
    credentials = clients.create(store, "acme", False, now_ms())[1]
    path, params = "/acme/target/authentication/token", {"scope": "profile_api"}
    headers = {"X-Forwarded-For": "10.0.0.9"}
    codes = [
        http.post(
            path, params=params, auth=(credentials.api_key, "nope"), headers=headers
        ).status_code
        for _ in range(5)
    ]
    assert codes == [401, 401, 401, 401, 429]


def test_a_missing_token_is_not_a_failed_attempt(http: httpx.Client, store: Store):
    clients.create(store, "acme", True, now_ms())
    codes = [
        http.get("/rest/v1/profiles/x", params={"client": "acme"}).status_code for _ in range(6)
    ]
    assert codes == [401] * 6
