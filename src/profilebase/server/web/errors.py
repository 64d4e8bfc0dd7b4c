"""One place that turns errors into responses, in the format of the endpoint that failed.

``/m2/...`` endpoints answer in Target's XML (``success=false`` and a message),
everything else in JSON ``{"status", "message"}``. A reply never carries an
exception's class, SQL, a file name or a library's hint:

- a ``ProfilebaseError`` the user can fix answers with its own message;
- a database that cannot be used now answers 503 (``DatabaseUnavailable``, with
  Retry-After) or 507 (``StorageFull``) with our sentence, any other server-side
  failure 500 with a generic one; each quotes an error id, and the one log line
  that carries the same id has what the database or the traceback said;
- a client that hangs up mid-request gets no reply (it is gone) and costs one
  warning line without a traceback (``ErrorGuard``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from profilebase.errors import ProfilebaseError, StorageError
from profilebase.server.web import xml
from profilebase.server.web.responses import JsonResponse

log = logging.getLogger("profilebase.server.web")

#: The key under ``scope["extensions"]`` that the HTTP server sets when it closed the
#: connection itself (``client_timeout``): it has logged that already.
TIMED_OUT = "profilebase.timed_out"
#: Longest piece of a client-chosen text (a path) that goes into a log line.
LOG_TEXT_LIMIT = 200


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return error_reply(request.url.path, status, message, headers)


def error_reply(
    path: str, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error in the format of the endpoint at ``path``: Target's XML under ``/m2/``,
    JSON elsewhere."""
    if path.startswith("/m2/"):
        return xml.xml_response(
            xml.rejected(message, with_batch_status=path.endswith("/batchUpdate")),
            status=status,
            headers=headers,
        )
    return JsonResponse({"status": status, "message": message}, status_code=status, headers=headers)


def new_error_id(scope: Scope | None = None) -> str:
    """The id a reply quotes and the log line carries: the request's id (``X-Request-Id``,
    set by ``observe.RequestObserver``) when there is one, else a short random id."""
    request_id = (scope or {}).get("state", {}).get("request_id")
    return str(request_id) if request_id else secrets.token_hex(6)


def printable(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """``text`` safe for one log line: control and non-ASCII characters escaped, cut short.

    Paths are chosen by the client; a CR or LF in one must not forge log lines.
    """
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def request_line(scope: Mapping[str, Any]) -> str:
    """``METHOD /path`` of a request, printable, for log lines."""
    return f"{scope.get('method', '?')} {printable(scope.get('path', ''))}"


def client_of(scope: Mapping[str, Any]) -> str:
    """The caller's ``host:port`` (through trusted proxies), for log lines."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


async def profilebase_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProfilebaseError)
    if exc.status < 500:
        return error_response(request, exc.status, exc.message, exc.headers)
    error_id = new_error_id(request.scope)
    cause = exc.detail if isinstance(exc, StorageError) and exc.detail else repr(exc.__cause__)
    level = logging.WARNING if exc.status in {503, 507} else logging.ERROR
    log.log(
        level,
        "error id %s: %s from %s answered %d: %s (%s)",
        error_id,
        request_line(request.scope),
        client_of(request.scope),
        exc.status,
        exc.message,
        cause,
    )
    if exc.status in {503, 507}:  # our own sentence, which says what to do
        message = f"{exc.message} (error id {error_id})"
    else:
        message = f"Internal server error (error id {error_id}); the server log has the details."
    return error_response(request, exc.status, message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"No endpoint at {request.url.path}; see the README for the API's paths."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    return error_response(request, exc.status_code, str(message), dict(exc.headers or {}))


class ErrorGuard:
    """ASGI middleware around the app: the last word on every exception.

    1. A client that hangs up before its request was read (``ClientDisconnect``):
       one warning line with its address, the request and the body bytes received;
       nothing is answered. If the server closed the connection itself (a slow
       client, ``client_timeout``), it logged that, and nothing more is logged here.
    2. Any other exception: logged once, with its traceback, under an error id; a
       500 quoting the id, unless the response had started (then the connection is
       cut, which tells the client the reply is incomplete).

    Nothing is re-raised, so the server does not log the exception a second time.
    """

    def __init__(
        self, app: ASGIApp, on_error: Callable[[BaseException], None] | None = None
    ) -> None:
        self.app = app
        #: Told of every unexpected exception before it is logged (the metrics count them).
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except ClientDisconnect:
            if not scope.get("extensions", {}).get(TIMED_OUT):
                log.warning(
                    "client %s hung up during %s after %s bytes of the body%s",
                    client_of(scope),
                    request_line(scope),
                    f"{received:,}",
                    declared_length(scope),
                )
        except Exception as exc:
            if self.on_error is not None:
                self.on_error(exc)
            error_id = new_error_id(scope)
            log.error(
                "error id %s: unexpected error on %s from %s",
                error_id,
                request_line(scope),
                client_of(scope),
                exc_info=exc,
            )
            if not started:
                response = error_response(
                    Request(scope),
                    500,
                    f"Internal server error (error id {error_id}); the server log has the details.",
                )
                await response(scope, receive, send)


def declared_length(scope: Scope) -> str:
    """`` (Content-Length N)`` when the request declared one, for the hang-up line."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return f" (Content-Length {printable(value.decode('latin-1'), 20)})"
    return ""
