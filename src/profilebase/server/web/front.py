"""The short way in for the routes a site calls on every page view.

Starlette hands a request through five layers of middleware and then tries every route
of the app in turn: a fetch by thirdPartyId was matched against some twenty routes
before its own, and the matching and the layers took more of the event loop than the
fetch itself (a py-spy profile under wrk: docs/design.md, "The short way in").

``Front`` is the outermost middleware of the app. It knows a few routes (``/healthz``,
fetch and delete by id, the single update, the page call). A request that one of them
matches fully (path and method) goes straight to that route's endpoint, inside the same
``RequestObserver`` and ``ErrorGuard`` as every other request, with the app's handlers
for ``ProfilebaseError`` and ``HTTPException``: the same request id, log line, metrics
and error replies, with three layers and one route match instead of eight and twenty.
Everything else (other routes, a method no route of the path has, a trailing slash, the
lifespan) goes to the app unchanged, so its answers (405, redirects, 404) stay the
app's. A test checks that for every path the app's router and ``Front`` pick the same
route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from profilebase.errors import ProfilebaseError
from profilebase.server.metrics import Metrics
from profilebase.server.web import errors, observe

Handler = Callable[[Request, Exception], Awaitable[Response]]


def static_prefix(path: str) -> str:
    """The part of a route's path before its first parameter: no path outside it matches."""
    return path.split("{", 1)[0]


class Front:
    """Serve ``routes`` directly, around them the app's observer and guard; pass the rest
    to ``app``.

    ``routes`` must be routes of the app that no earlier route of the app matches first
    (tests/test_front.py checks the app's own list against its router).
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[Route],
        metrics: Metrics,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.app = app
        self.routes = [(static_prefix(route.path), route) for route in routes]
        self.on_profilebase_error: Handler = observe.counting(errors.profilebase_error)
        self.served = observe.RequestObserver(errors.ErrorGuard(self.dispatch, on_error), metrics)

    def match(self, scope: Scope) -> Route | None:
        """The first route that matches ``scope`` fully, if any; its path parameters and
        endpoint then are in ``scope``, as the app's router puts them."""
        path = scope["path"]
        for prefix, route in self.routes:
            if path.startswith(prefix):
                found, child = route.matches(scope)
                if found is Match.FULL:
                    scope["route"] = route
                    scope.update(child)
                    return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.match(scope) is not None:
            await self.served(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await scope["endpoint"](request)
        except ProfilebaseError as exc:
            response = await self.on_profilebase_error(request, exc)
        except HTTPException as exc:
            response = await errors.http_error(request, exc)
        await response(scope, receive, send)
