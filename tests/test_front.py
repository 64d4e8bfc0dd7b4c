"""The short way in (web/front.py): the routes of every page view reach their endpoints
without Starlette's router, and answer exactly as through it.

The router test compares ``Front``'s choice with the app's own router on paths built from
the routes' own segments; the served tests run real HTTP against a live server and a real
``profilebase serve``.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer
from helpers import run_sql, xml_fields
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Match, Route
from test_crash import ServerProcess
from test_error_replies import quoted_error_id

from profilebase.server.merge import dump_attrs
from profilebase.server.metrics import Metrics
from profilebase.server.settings import Settings
from profilebase.server.web.app import create_app
from profilebase.server.web.front import Front


def the_app() -> Starlette:
    return create_app(Settings(database="sqlite:///:memory:", workers=0))


def front_of(app: Starlette) -> Front:
    (middleware,) = [m for m in app.user_middleware if m.cls is Front]
    return Front(app, middleware.kwargs["routes"], Metrics(), middleware.kwargs["handlers"])


APP = the_app()
FRONT = front_of(APP)


def scope_of(method: str, raw_path: str, root_path: str = "") -> dict[str, object]:
    """An HTTP scope as uvicorn makes it: ``path`` percent-decoded, ``raw_path`` as sent,
    both beginning with ``root_path`` (a proxy's prefix) if there is one."""
    from urllib.parse import unquote

    return {
        "type": "http",
        "method": method,
        "path": root_path + unquote(raw_path),
        "raw_path": (root_path + raw_path).encode("latin-1"),
        "root_path": root_path,
        "query_string": b"",
        "headers": [],
    }


def router_choice(scope: dict[str, object]) -> Route | None:
    """The route the app's router serves ``scope`` with: its first full match."""
    for route in APP.routes:
        found, _ = route.matches(dict(scope))
        if found is Match.FULL:
            assert isinstance(route, Route)
            return route
    return None


def test_the_front_answers_errors_with_the_apps_own_handlers():
    (middleware,) = [m for m in APP.user_middleware if m.cls is Front]
    assert middleware.kwargs["handlers"] is not None
    assert dict(middleware.kwargs["handlers"]) == dict(APP.exception_handlers)


def test_the_front_serves_only_routes_of_the_app():
    routes = [route for _, route in FRONT.routes]
    assert routes, "the front serves no route"
    for route in routes:
        assert any(route is own for own in APP.routes), route.path
    assert {route.path for route in routes} >= {
        "/healthz",
        "/rest/v1/profiles/thirdPartyId/{third_party_id}",
        "/m2/{client}/profile/update",
        "/rest/v1/delivery",
    }


SEGMENTS = [
    "rest", "v1", "profiles", "thirdPartyId", "marketingCloudVisitorId", "m2", "demo",
    "profile", "update", "delivery", "healthz", "batchUpdate", "x%2Fy", "%C3%BC", "", "a b",
    "%00", "%0D%0A", "%FF", "\r", "x" * 10_000,
]  # fmt: skip
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]


def examples() -> list[tuple[str, str]]:
    paths = [
        "/healthz",
        "/healthz/",
        "/rest/v1/profiles/thirdPartyId/crm-1",
        "/rest/v1/profiles/thirdPartyId/a%2Fb",
        "/rest/v1/profiles/thirdPartyId/a%00b",
        "/rest/v1/profiles/thirdPartyId/%FF%FE",
        "/rest/v1/profiles/thirdPartyId/" + "x" * 100_000,
        "/m2/%00/profile/update",
        "/rest/v1/profiles/thirdPartyId",
        "/rest/v1/profiles/thirdPartyId/",
        "/rest/v1/profiles/marketingCloudVisitorId/123",
        "/rest/v1/profiles/abc",
        "/rest/v1/profiles",
        "/rest/v1/profiles/",
        "/m2/demo/profile/update",
        "/m2/demo/profile/batchUpdate",
        "/m2/demo/v2/profile/batchUpdate",
        "/rest/v1/delivery",
        "/rest/v1/delivery/",
        "/readyz",
        "/metrics",
        "/ui",
    ]
    return [(method, path) for path in paths for method in METHODS]


def assert_same_choice(method: str, path: str, root: str = "") -> None:
    scope = scope_of(method, path, root)
    chosen = FRONT.match(scope)
    if chosen is not None:  # the front serves it: the router would have chosen the same
        assert chosen is router_choice(scope_of(method, path, root)), (method, path)
        assert scope["route"] is chosen and scope["endpoint"] is chosen.endpoint
    else:  # left to the app: no route of the front matches it fully
        for _, route in FRONT.routes:
            found, _ = route.matches(scope_of(method, path, root))
            assert found is not Match.FULL, (method, path, root)


@pytest.mark.parametrize("root", ["", "/api"])
@pytest.mark.parametrize(("method", "path"), examples())
def test_the_front_chooses_as_the_router_does(method: str, path: str, root: str):
    assert_same_choice(method, path, root)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(METHODS),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6),
)
def test_the_front_chooses_as_the_router_does_on_any_path(method: str, segments: list[str]):
    assert_same_choice(method, "/" + "/".join(segments))


@pytest.mark.parametrize("root", ["", "/api"])
def test_the_front_serves_the_routes_it_should(root: str):
    """Not an empty table: the routes of every page view do take the short way, behind a
    proxy's prefix (``root_path``) too."""
    for method, path in [
        ("GET", "/healthz"),
        ("GET", "/rest/v1/profiles/thirdPartyId/crm-1"),
        ("DELETE", "/rest/v1/profiles/thirdPartyId/crm-1"),
        ("GET", "/rest/v1/profiles/abc"),
        ("GET", "/m2/demo/profile/update"),
        ("POST", "/m2/demo/profile/update"),
        ("POST", "/rest/v1/delivery"),
    ]:
        assert FRONT.match(scope_of(method, path, root)) is not None, (method, path, root)


def page_call(third_party_id: str) -> dict[str, object]:
    return {"id": {"thirdPartyId": third_party_id}, "context": {"channel": "web"}}


def test_front_routes_answer_with_request_id_log_line_and_metrics(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
):
    """Through the front, as through the app: the caller's request id comes back, one log
    line names the route's template (the label the metrics count it under too), and errors
    keep each endpoint's format (JSON, Target's XML for /m2/)."""
    caplog.set_level(logging.INFO, logger="profilebase.requests")
    created = http.post(
        "/rest/v1/delivery", params={"client": "demo", "sessionId": "s1"}, json=page_call("crm-7")
    )
    assert created.status_code == 200, created.text
    ok = http.post(
        "/m2/demo/profile/update",
        params={"mbox3rdPartyId": "crm-7", "profile.tier": "gold"},
        headers={"X-Request-Id": "front-test-1"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-request-id"] == "front-test-1"
    fetched = http.get("/rest/v1/profiles/thirdPartyId/crm-7", params={"client": "demo"})
    assert fetched.status_code == 200
    assert fetched.json()["profileAttributes"]["tier"]["value"] == "gold"
    assert re.fullmatch(r"[0-9a-f]{32}", fetched.headers["x-request-id"])

    missing = http.get("/rest/v1/profiles/thirdPartyId/crm-none", params={"client": "demo"})
    assert missing.status_code == 404
    assert missing.json() == {
        "status": 404,
        "message": "No profile found for client demo with third party id=crm-none",
    }
    unknown = http.get("/m2/nobody/profile/update", params={"mbox3rdPartyId": "crm-7"})
    assert unknown.status_code == 404
    assert "Unknown client 'nobody'" in xml_fields(unknown)["message"]  # Target's XML
    bad = http.post("/rest/v1/delivery", params={"client": "demo"}, content=b"{not json")
    assert bad.status_code == 400 and bad.json()["status"] == 400
    # The app still answers what the front leaves to it.
    assert http.put("/rest/v1/delivery", params={"client": "demo"}).status_code == 405
    redirected = http.get("/healthz/", follow_redirects=False)
    assert redirected.status_code == 307 and redirected.headers["location"].endswith("/healthz")

    lines = [r.getMessage() for r in caplog.records if r.name == "profilebase.requests"]
    assert any(
        line.startswith("POST /m2/{client}/profile/update 200 ") and "client=demo" in line
        for line in lines
    ), lines
    assert any(
        line.startswith("GET /rest/v1/profiles/thirdPartyId/{third_party_id} 404 ")
        for line in lines
    ), lines
    assert any(line.startswith("PUT /rest/v1/delivery 405 ") for line in lines), lines
    records = [r for r in caplog.records if getattr(r, "route", None)]
    assert any(
        r.route == "/rest/v1/profiles/thirdPartyId/{third_party_id}" and r.status == 200
        for r in records
    )


def test_an_unexpected_error_on_a_front_route_is_a_500_quoting_its_id(
    database_url: str, tmp_path: Path
):
    """A real failure under the front's routes (the profiles table renamed away under the
    server): a fetch, a single update and a page call each answer 500 in their format,
    quoting an error id that is the request's id, with one ERROR line each; no reply names
    an internal."""
    log = tmp_path / "server.log"
    server = ServerProcess(database_url, log, workers="0")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post(
                "/rest/v1/delivery?client=demo&sessionId=s1", json=page_call("a")
            ).is_success
            run_sql(database_url, "ALTER TABLE profiles RENAME TO profiles_moved")
            replies = [
                (
                    fetched := http.get("/rest/v1/profiles/thirdPartyId/a?client=demo"),
                    fetched.json()["message"] if fetched.status_code == 500 else "",
                ),
                (
                    updated := http.get("/m2/demo/profile/update?mbox3rdPartyId=b&profile.x=1"),
                    xml_fields(updated)["message"] if updated.status_code == 500 else "",
                ),
                (
                    called := http.post(
                        "/rest/v1/delivery?client=demo&sessionId=s1",
                        json=page_call("c"),
                    ),
                    called.json()["message"] if called.status_code == 500 else "",
                ),
            ]
    finally:
        server.kill()
    text = log.read_text()
    for reply, message in replies:
        assert reply.status_code == 500, reply.text
        error_id = quoted_error_id(reply, message)
        errors = [line for line in text.splitlines() if error_id in line and "ERROR" in line]
        assert len(errors) == 1, errors


def test_what_start_up_made_is_out_of_the_collectors_sight(settings: Settings, store):
    """An app of ``serve`` (``freeze``) puts what exists once it has started out of the
    collector's sight (``gc.freeze``): a full collection then skips the modules, routes and
    caches every request would otherwise wait on. Any other app (tests) leaves it alone."""
    gc.unfreeze()
    try:
        with LiveServer(settings, store, workers=0) as server:
            assert httpx.get(server.url + "/healthz").status_code == 200
        assert gc.get_freeze_count() == 0
        with LiveServer(settings, store, workers=0, freeze=True) as server:
            assert httpx.get(server.url + "/healthz").status_code == 200
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


@given(value=st.text())
@settings(max_examples=300)
def test_attributes_are_encoded_as_json_dumps_would(value: str):
    """``dump_attrs`` (msgspec) writes the very bytes ``json.dumps`` did: stored sizes and
    the profile size limit stay as they were."""
    attrs: dict[str, list[object]] = {value: [value, 10**18 + 7, 1_700_000_000_000]}
    assert dump_attrs(attrs) == json.dumps(attrs, ensure_ascii=False, separators=(",", ":"))


def test_attributes_msgspec_cannot_encode_are_encoded_by_json_dumps():
    """A lone surrogate (a JSON body may send ``\\ud800``) falls back to ``json.dumps``,
    which keeps it as it did before."""
    attrs: dict[str, list[object]] = {"a": ["\ud800x", 1, 2]}
    assert dump_attrs(attrs) == json.dumps(attrs, ensure_ascii=False, separators=(",", ":"))
