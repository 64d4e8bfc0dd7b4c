"""What every handler needs: settings, store, clock, the request's client — resolved and
authorized in one place so that no endpoint can forget to — its limits, and its body."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from profilebase import tokens
from profilebase.config import Settings, client_limits
from profilebase.errors import (
    AccessDenied,
    BadRequest,
    ClientDisabled,
    ProfilebaseError,
    RequestTooLarge,
    StorageError,
    UnknownClient,
)
from profilebase.models import Client, Limits
from profilebase.storage.base import Store
from profilebase.web.attempts import FailedAttempts

log = logging.getLogger("profilebase.web")


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def limits_of(request: Request, client: Client) -> Limits:
    """The limits in force for ``client``: its overrides, else the server's settings."""
    return client_limits(settings_of(request), client.limits)


def clock_of(request: Request) -> Callable[[], int]:
    """Milliseconds since the epoch; tests give the app a clock they move by hand."""
    clock: Callable[[], int] = request.app.state.clock
    return clock


def failed_attempts_of(request: Request) -> FailedAttempts:
    attempts: FailedAttempts = request.app.state.failed_attempts
    return attempts


def address_of(request: Request) -> str:
    """The caller's address (uvicorn takes it from X-Forwarded-For of trusted proxies)."""
    return request.client.host if request.client else "unknown"


def presented_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <t>`` or, as older Target docs spell it,
    of the header ``access_token: <t>``."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("access_token", "").strip() or None


async def find_client(request: Request, code: str) -> Client:
    """The client ``code`` if it exists (404) and is not disabled (403); re-read on every
    request, so a change made with ``profilebase clients`` applies at once."""
    client = await run_in_threadpool(store_of(request).get_client, code)
    if client is None:
        raise UnknownClient(code)
    if client.disabled:
        raise ClientDisabled(client.code)
    return client


async def resolve_client(request: Request, code: str | None = None) -> Client:
    """The client named in the path (or ``code``), once it may make this profile API call.

    1. Unknown client: 404; disabled client: 403.
    2. If the client requires authorization: an address with too many recent failures
       gets 429; then the token must be the client's, valid now (401 if missing, 403
       if not). A refused token counts as a failure of the address.
    """
    client = await find_client(
        request, code if code is not None else request.path_params.get("client", "")
    )
    if not client.require_auth:
        return client
    attempts = failed_attempts_of(request)
    attempts.check(address_of(request))
    try:
        await run_in_threadpool(
            tokens.authorize,
            store_of(request),
            client,
            presented_token(request),
            clock_of(request)(),
        )
    except AccessDenied:
        attempts.record(address_of(request))
        raise
    return client


async def client_from_query(request: Request, authorize: bool = True) -> Client:
    """The client named by the ``client`` query parameter, as Target's ``/rest/`` APIs take it,
    authorized as ``resolve_client`` does; with ``authorize`` False only found (the Delivery
    API, which Target takes without credentials: page calls come from browsers)."""
    code = request.query_params.get("client", "").strip()
    if not code:
        raise BadRequest("The client query parameter is missing: add ?client=<your client code>.")
    if not authorize:
        return await find_client(request, code)
    return await resolve_client(request, code)


async def with_headers(
    reply: Awaitable[Response], headers: Callable[[], Awaitable[dict[str, str]]]
) -> Response:
    """The response of ``reply`` with ``headers()`` added, or its ``ProfilebaseError`` with
    them: the quota headers go on every reply to an authorized caller, refusals included.

    The headers need the database. When it fails, the reply goes without them: a batch
    already accepted must never be answered as refused (the client would send it again),
    and a request refused because the database is gone must not wait for it twice.
    """
    try:
        response = await reply
    except StorageError:
        raise
    except ProfilebaseError as exc:
        exc.headers.update(await optional_headers(headers))
        raise
    response.headers.update(await optional_headers(headers))
    return response


async def optional_headers(headers: Callable[[], Awaitable[dict[str, str]]]) -> dict[str, str]:
    """``headers()``, or none if the database fails meanwhile (logged)."""
    try:
        return await headers()
    except StorageError as exc:
        log.warning("reply sent without its quota headers: %s (%s)", exc.message, exc.detail)
        return {}


def scalar_text(value: object) -> str | None:
    """A JSON scalar as an attribute value: text as is, numbers and booleans as JSON writes
    them, None for anything else (null, arrays, objects) so the caller can say what is wrong."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return value if isinstance(value, str) else None


async def read_body(request: Request, limit: int, setting: str, already: int = 0) -> bytes:
    """The whole body, refused with 413 as soon as ``already`` plus its size passes ``limit``.

    ``setting`` names the limit in the message so the user knows what to change.
    """

    def too_large(size: int) -> RequestTooLarge:
        return RequestTooLarge(
            f"The request is {size:,} bytes or more; at most {limit:,} bytes are accepted "
            f"({setting})."
        )

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and already + int(declared) > limit:
        raise too_large(already + int(declared))
    chunks = []
    size = already
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size)
        chunks.append(chunk)
    return b"".join(chunks)
