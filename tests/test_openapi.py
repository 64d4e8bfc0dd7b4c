"""/openapi.json describes every route of the app, and marks profilebase's own as extensions."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import httpx
import pytest
from conftest import LiveServer
from helpers import batch_id_of, submit
from starlette.routing import Route

from profilebase.server.web import context, create_app, openapi, profiles


def test_every_route_is_described_and_nothing_else(settings, store):  # type: ignore[no-untyped-def]
    """The document's paths and methods are exactly the app's routes."""
    app = create_app(settings, store, workers=0)  # the fixture closes the store
    routes = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.include_in_schema  # not the dashboard's HTML
        for method in (route.methods or set()) - {"HEAD"}
    }
    described = {
        (path, method)
        for path, operations in openapi.document(app.routes, "0").get("paths", {}).items()
        for method in operations
    }
    assert described == routes


def test_every_api_route_declares_its_operation(settings, store):  # type: ignore[no-untyped-def]
    """A route is either an ApiRoute with an operation per method, or kept out on purpose."""
    app = create_app(settings, store, workers=0)  # the fixture closes the store
    for route in app.routes:
        assert isinstance(route, Route)
        if route.include_in_schema:
            assert isinstance(route, openapi.ApiRoute), route.path
            methods = {m.lower() for m in route.methods or set()} - {"head"}
            assert set(route.operations) == methods, route.path


#: The contexts that find the request's client and check its token before the handler runs,
#: or (client_named_checked_in_thread) in the handler's first trip to a thread.
NAMED = {context.client_named, context.client_named_checked_in_thread}
AUTHORIZING = {context.client_in_path, context.client_in_path_or_named, *NAMED}
#: The handlers whose first act is ``context.in_thread``, which makes a deferred token check.
CHECK_IN_THREAD = {profiles.fetch}


def test_every_api_route_declares_the_context_its_operation_promises(settings, store):  # type: ignore[no-untyped-def]
    """A route whose operation takes the token resolves and authorizes its client before
    its handler runs, from the path when the path names it; the Delivery API finds its client
    without a token; the rest (health, the document, the token routes, which check Basic
    credentials themselves) take the app's context."""
    app = create_app(settings, store, workers=0)  # the fixture closes the store
    for route in app.routes:
        if not isinstance(route, openapi.ApiRoute):
            continue
        security = {str(op.get("security")) for op in route.operations.values()}
        assert len(security) == 1, route.path
        if security == {str(openapi.TOKEN_IF_REQUIRED)}:
            assert route.context in AUTHORIZING, route.path
            in_path = "{client}" in route.path
            assert in_path == (route.context not in NAMED), route.path
            deferred = route.context is context.client_named_checked_in_thread
            assert deferred == (route.handler in CHECK_IN_THREAD), route.path
        elif route.path == "/rest/v1/delivery":
            assert route.context is context.client_named_without_token
        else:
            assert route.context is context.app_context, route.path


#: Operations Target lacks that sit beside Target's own paths (issue 3 names these paths).
EXTENSIONS_ON_TARGET_PATHS = {
    ("/rest/v1/profiles", "get"),
    ("/rest/v1/profiles/{pc_id}", "delete"),
    ("/rest/v1/profiles/thirdPartyId/{third_party_id}", "delete"),
    ("/rest/v1/profiles/marketingCloudVisitorId/{ecid}", "delete"),
}


def test_extensions_are_marked(http: httpx.Client):
    """Operations under /profilebase/ and /openapi.json, and profile delete and export, are
    extensions; Target's own operations are not."""
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            own = (
                path.startswith("/profilebase/")
                or path == "/openapi.json"
                or (path, method) in EXTENSIONS_ON_TARGET_PATHS
            )
            assert operation.get("x-profilebase-extension", False) is own, path
            assert operation["tags"] == ["profilebase extensions" if own else "Target-compatible"]
    update = document["paths"]["/m2/{client}/v2/profile/batchUpdate"]["post"]
    marked = {p["name"] for p in update["parameters"] if p.get("x-profilebase-extension")}
    assert marked == {"dryRun", "Idempotency-Key"}


def test_path_parameters_are_declared(http: httpx.Client):
    """Each {name} in a path has a matching path parameter."""
    document = http.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for operation in operations.values():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == names, path


def test_credentials_are_declared(http: httpx.Client):
    """Operations on a client's data take the token, optional (only a client that requires
    authorization needs it); the token endpoints take Basic; the rest take nothing."""
    document = http.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "accessToken", "basic"}
    open_paths = {"/healthz", "/readyz", "/openapi.json", "/rest/v1/delivery"}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.endswith("/authentication/token"):
                expected = [{"basic": []}]
            elif path in open_paths:
                expected = None
            else:
                expected = [{"bearer": []}, {"accessToken": []}, {}]
                assert {"401", "403"} <= set(operation["responses"]), path
            assert operation.get("security") == expected, path


class ReadRecorder:
    """ASGI middleware that keeps the query parameter names the last request's handler read
    through its route's declaration."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.read: set[str] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[openapi.READ_KEY] = self.read = set()
        await self.app(scope, receive, send)


def example(parameter: dict[str, Any]) -> str:
    """A value the parameter's schema allows."""
    schema = parameter.get("schema", {})
    if "enum" in schema:
        return str(schema["enum"][-1])
    return {"boolean": "true", "integer": "1"}.get(schema.get("type"), "demo")


#: A body each operation that needs one takes (content type, bytes).
BODIES = {
    "/m2/{client}/profile/batchUpdate": (
        "application/x-www-form-urlencoded",
        b"batch=pcId,a\nx,1\n",
    ),
    "/m2/{client}/v2/profile/batchUpdate": (
        "application/x-www-form-urlencoded",
        b"batch=pcId,a\nx,1\n",
    ),
    "/rest/v1/delivery": ("application/json", b'{"id": {"thirdPartyId": "crm-1"}}'),
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_documented_query_parameter_is_read(settings, store):  # type: ignore[no-untyped-def]
    """For each operation and each query parameter it documents (but those documented as
    ignored), a request carrying it reaches the handler, which reads it; a handler that read
    a parameter its operation does not document would fail with UndeclaredParameter (a 500)."""
    recorder: ReadRecorder | None = None

    def wrap(app: Any) -> Any:
        nonlocal recorder
        recorder = ReadRecorder(app)
        return recorder

    with (
        LiveServer(settings, store, 0, wrap=wrap) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert recorder is not None
        batch_id = batch_id_of(submit(http, b"batch=pcId,tier\nknown-1,gold\n"))
        known = {"client": "demo", "batch_id": batch_id, "batchId": batch_id, "pc_id": "known-1"}
        document = http.get("/openapi.json").json()
        unread = []
        checked = 0
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                query = [p for p in operation["parameters"] if p["in"] == "query"]
                required = {
                    p["name"]: known.get(p["name"], example(p)) for p in query if p.get("required")
                }
                for parameter in query:
                    if parameter.get(openapi.IGNORED):
                        continue
                    name = parameter["name"]
                    values = {**known}
                    if path == "/m2/{client}/profile/update" and name in ("client", "imsOrgId"):
                        values["client"] = "client"  # only the literal path names it outside
                    url = path.format_map(defaultdict(lambda: "x", values))
                    params = {**required, name: known.get(name, example(parameter))}
                    content_type, body = BODIES.get(path, ("application/json", b"{}"))
                    reply = http.request(
                        method.upper(),
                        url,
                        params=params,
                        content=body if method == "post" else None,
                        headers={"content-type": content_type} if method == "post" else {},
                    )
                    assert reply.status_code < 500, (path, method, name, reply.text)
                    checked += 1
                    if name not in recorder.read:
                        unread.append((method, path, name, reply.status_code))
        assert checked >= 20
        assert unread == []
