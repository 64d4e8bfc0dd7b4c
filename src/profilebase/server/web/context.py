"""What every handler needs: settings, store, clock, the server secret, the request's
client — resolved and authorized in one place so that no endpoint can forget to — its
limits, and its body."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

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
from profilebase.server import tokens
from profilebase.server.clients import CODE
from profilebase.server.secret import ServerSecret
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage.base import Store
from profilebase.server.web.attempts import FailedAttempts
from profilebase.server.web.openapi import query

log = logging.getLogger("profilebase.server.web")


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


def secret_of(request: Request) -> ServerSecret:
    """The server secret tokens derive from, confirmed against the database at start-up."""
    secret: ServerSecret = request.app.state.secret
    return secret


def failed_attempts_of(request: Request) -> FailedAttempts:
    attempts: FailedAttempts = request.app.state.failed_attempts
    return attempts


def address_of(request: Request) -> str:
    """The caller's address (uvicorn takes it from X-Forwarded-For of trusted proxies)."""
    return request.client.host if request.client else "unknown"


def presented_tokens(request: Request) -> list[tokens.Presented]:
    """Every token the request carries: ``Authorization: Bearer <t>`` and, as older Target
    docs spell it, the header ``access_token: <t>``. A library that authenticates to Adobe
    I/O sends both, its own Bearer token and the profile API token, so each one counts."""
    found = []
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(tokens.Presented("the Authorization header", value.strip()))
    legacy = request.headers.get("access_token", "").strip()
    if legacy and all(legacy != other.value for other in found):
        found.append(tokens.Presented("the access_token header", legacy))
    return found


async def find_client(request: Request, code: str) -> Client:
    """The client ``code`` if it exists (404) and is not disabled (403); re-read on every
    request, so a change made with ``profilebase clients`` applies at once."""
    client = await run_in_threadpool(store_of(request).get_client, code)
    if client is None:
        raise UnknownClient(code)
    return enabled(client)


def enabled(client: Client) -> Client:
    if client.disabled:
        raise ClientDisabled(client.code)
    return client


async def resolve_client(request: Request, code: str | None = None) -> Client:
    """The client named in the path (or ``code``), once it may make this profile API call.

    1. Unknown client: 404; disabled client: 403.
    2. ``authorized``: the client's token, if it requires one.
    """
    client = await find_client(
        request, code if code is not None else request.path_params.get("client", "")
    )
    return await authorized(request, client)


async def authorized(request: Request, client: Client) -> Client:
    """``client`` once the request may make a profile API call for it.

    If the client requires authorization: an address with too many recent failures gets
    429; then one of the tokens the request carries must be the client's, valid now (401
    if there is none, 403 if none is). A refused request counts as a failure of the address.
    """
    if not client.require_auth:
        return client
    attempts = failed_attempts_of(request)
    attempts.check(address_of(request))
    try:
        await run_in_threadpool(
            tokens.authorize,
            store_of(request),
            client,
            presented_tokens(request),
            clock_of(request)(),
        )
    except AccessDenied:
        attempts.record(address_of(request))
        raise
    return client


async def request_client(
    request: Request, authorize: bool = True, literal: str | None = None
) -> Client:
    """The client of a route that takes it from outside the path (docs/clients.md, Which
    client a request is for), authorized as ``resolve_client`` does; with ``authorize``
    False only found (the Delivery API, which Target takes without credentials: page
    calls come from browsers). ``literal`` is the placeholder a path may carry instead of
    a client code (``/m2/client/…``): a client really named so comes before the default.
    """
    client = await run_in_threadpool(client_named_by, request, literal)
    enabled(client)
    return await authorized(request, client) if authorize else client


def client_named_by(request: Request, literal: str | None = None) -> Client:
    """Which client a request is for, the first of:

    1. the ``client`` query parameter (404 if there is no such client);
    2. the first label of the Host header, when it is a client's code
       (``acme.tt.omtrdc.net``: how Target's own clients name it);
    3. the client whose organization id is the ``imsOrgId`` query parameter;
    4. a client named ``literal``;
    5. the server's ``default_client``, while that client exists.
    """
    store = store_of(request)
    named = query(request, "client", "").strip()
    if named:
        found = store.get_client(named)
        if found is None:
            raise UnknownClient(named)
        return found
    label = host_label(request)
    found = store.get_client(label) if label else None
    if found is None:
        org_id = query(request, "imsOrgId", "").strip()
        found = store.find_client_by_org(org_id) if org_id else None
    if found is None and literal:
        found = store.get_client(literal)
    default = settings_of(request).default_client.strip()
    if found is None and default:
        found = store.get_client(default)
    if found is None:
        missing = f" (the server's default_client {default!r} does not exist)" if default else ""
        raise BadRequest(
            "The client query parameter is missing and nothing else names a client"
            f"{missing}: add ?client=<your client code>, or give the client the organization "
            "id the request carries as imsOrgId (`profilebase clients set CODE --org-id "
            "…@AdobeOrg`)."
        )
    return found


def host_label(request: Request) -> str | None:
    """The first label of the Host header, lower-cased, if it could be a client code."""
    host = request.headers.get("host", "")
    if host.startswith("["):  # an IPv6 address names no client
        return None
    label = host.split(":")[0].split(".")[0].lower()
    return label if CODE.fullmatch(label) else None


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
