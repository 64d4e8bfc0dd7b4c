"""Watching requests: a request id, one log line and the metrics of every request.

``RequestObserver`` is an ASGI middleware around every route. For each HTTP
request it

1. takes the caller's ``X-Request-Id`` if it is a sane one (1 to 64 of
   ``A-Z a-z 0-9 . _ -``; a load balancer's id then joins both logs), else makes
   one (32 hex digits: 16 random ones drawn once per process, then a counter, so that
   no request pays for a system call), and sets it for every log line of the request
   (``logs.REQUEST_ID``);
2. answers with it in the ``X-Request-Id`` header;
3. when the reply ends, counts it by method, route (the path template, never the
   raw path, so that scanners cannot blow up the series) and status, and logs one
   line: method, route, status, duration, the client named in the request, the
   caller's address and the request id.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from profilebase.errors import QuotaExceeded, TooManyFailures, Unauthenticated
from profilebase.server import logs
from profilebase.server.metrics import (
    CONTENT_TYPE_LATEST,
    DatabaseCollector,
    Metrics,
    Scrape,
    token_matches,
)
from profilebase.server.web.context import Context, with_context

log = logging.getLogger("profilebase.requests")
HEADER = "x-request-id"
SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
CLIENT_CODE = re.compile(r"[a-z0-9_-]{1,64}")
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
UNMATCHED = "(unmatched)"
#: Routes polled by machines: their lines are logged at DEBUG, not INFO.
QUIET_ROUTES = {"/healthz", "/readyz", "/metrics", "/ui/static/{name}"}


class RequestIds:
    """Request ids unique across processes and restarts: a random prefix of the process
    (drawn again in a forked child), then a counter."""

    def __init__(self) -> None:
        self._start()
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


new_request_id = RequestIds()


def metrics_of(request: Request) -> Metrics:
    """The app's metrics, for the exception handlers (handlers have their context's)."""
    metrics: Metrics = request.app.state.metrics
    return metrics


def request_id_of(scope: Scope) -> str:
    """The id of the request ``scope`` belongs to (set by ``RequestObserver``)."""
    return str(scope.get("state", {}).get("request_id", ""))


def incoming_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if SANE_ID.fullmatch(text):
                return text
    return new_request_id()


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def client_of(scope: Scope) -> str:
    """The client code the request names (path or ``client`` parameter), if it is one."""
    code = scope.get("path_params", {}).get("client")
    if code is None:
        for pair in scope.get("query_string", b"").split(b"&"):
            name, _, value = pair.partition(b"=")
            if name == b"client":
                code = value.decode("latin-1")
                break
    return code if isinstance(code, str) and CLIENT_CODE.fullmatch(code) else "-"


class RequestObserver:
    """Request id, request log line and request metrics around an ASGI app."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        # Each request runs in a task of its own, so the id cannot leak into another's lines.
        logs.REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *[(k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"],
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.finished(scope, status, time.perf_counter() - start)

    def finished(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        route = route_of(scope)
        count, latency = self.series(method, route, status)
        count.inc()
        latency.observe(seconds)
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        if not log.isEnabledFor(level):
            return
        client = client_of(scope)
        address = scope["client"][0] if scope.get("client") else "-"
        if route == UNMATCHED:  # say which path was not found, safely quoted and cut short
            route = f"{UNMATCHED} {scope.get('path', '')[:200]!r}"
        log.log(
            level,
            "%s %s %d %.1f ms client=%s address=%s",
            method,
            route,
            status,
            seconds * 1000,
            client,
            address,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "client": client,
                "address": address,
            },
        )

    def series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The request counter's and the latency histogram's series of a request, looked up
        once (``labels`` validates and locks on every call). Their number is bounded: the
        methods, route templates and statuses the server has."""
        key = (method, route, status)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route),
            )
        return found


def counting(
    handler: Callable[[Request, Exception], Awaitable[Response]],
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler that first counts quota refusals and database errors."""

    async def handle(request: Request, exc: Exception) -> Response:
        metrics = metrics_of(request)
        if isinstance(exc, QuotaExceeded) and not isinstance(exc, TooManyFailures):
            metrics.quota_refusals.labels(client_of(request.scope)).inc()
        metrics.database_error(exc, "web")
        return await handler(request, exc)

    return handle


async def metrics_endpoint(request: Request, context: Context) -> Response:
    """The Prometheus text exposition: this process's counters (every process's, in
    multiprocess mode) and the gauges read from the database now."""
    settings, metrics = context.settings, context.metrics
    if not token_matches(request.headers.get("authorization", ""), settings.metrics_token):
        raise Unauthenticated(
            "Send the metrics token: `Authorization: Bearer <metrics_token>` "
            "(Prometheus: `authorization: {credentials: ...}` in the scrape config)."
        )
    # The database first: an error it meets is counted in this very scrape.
    scrape = Scrape(
        DatabaseCollector(context.store, settings, metrics, context.clock), metrics.counted()
    )
    body = await run_in_threadpool(scrape.text)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


#: Prometheus's format, not the profile API: left out of /openapi.json (docs/operations.md).
routes = [
    Route("/metrics", with_context(metrics_endpoint), methods=["GET"], include_in_schema=False)
]
