"""The short way in for the routes a site calls on every page view.

Starlette hands a request through its layers of middleware and then tries the app's
routes in turn: a fetch by thirdPartyId was matched against 8 routes before its own (a
fetch by pcId 12, a page call 14), each try of a raw-path route copying the scope, and
the matching and the layers took more of the event loop than the fetch's statement (a
py-spy profile under wrk: docs/design.md, "The short way in").

``Front`` is the first of the app's own middleware (inside Starlette's
``ServerErrorMiddleware``). It knows a few routes (``/healthz``, fetch and delete by id,
the single update, the page call). A request that one of them matches fully (path and
method, behind a proxy's ``root_path`` too) goes straight to that route's endpoint,
inside the same ``RequestObserver`` and ``ErrorGuard`` as every other request and with
the app's own exception handlers: the same request id, log line, metrics and error
replies, past two layers fewer and with one or two route tries. Everything else (other
routes, a method no route of the path has, a trailing slash, the lifespan) goes to the
app unchanged, so its answers (405, redirects, 404) stay the app's. A test checks that
for every path the app's router and ``Front`` pick the same route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from profilebase.server.metrics import Metrics
from profilebase.server.web import errors, observe

Handler = Callable[[Request, Exception], Awaitable[Response]]


def static_prefix(path: str) -> str:
    """The part of a route's path before its first parameter: no path outside it matches."""
    return path.split("{", 1)[0]


class Front:
    """Serve ``routes`` directly, around them the app's observer and guard and with its
    exception ``handlers``; pass the rest to ``app``.

    ``routes`` must be routes of the app that no earlier route of the app matches first
    (tests/test_front.py checks the app's own list against its router).
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[Route],
        metrics: Metrics,
        handlers: Mapping[type[Exception], Handler],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.app = app
        self.routes = [(static_prefix(route.path), route) for route in routes]
        self.handlers = dict(handlers)
        self.served = observe.RequestObserver(errors.ErrorGuard(self.dispatch, on_error), metrics)

    def match(self, scope: Scope) -> Route | None:
        """The first route that matches ``scope`` fully, if any; its path parameters and
        endpoint then are in ``scope``, as the app's router puts them."""
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # behind a proxy's prefix: as the router sees it
            path = path[len(root) :]
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
        except Exception as exc:
            handler = self.handler_of(exc)
            if handler is None:
                raise  # to the guard: a 500 quoting the request's id
            response = await handler(request, exc)
        await response(scope, receive, send)

    def handler_of(self, exc: Exception) -> Handler | None:
        """The app's handler of ``exc``'s class or its nearest base, as Starlette picks it."""
        for kind in type(exc).__mro__:
            if kind in self.handlers:
                return self.handlers[kind]
        return None
