"""What a handler works with, resolved once per request: its ``Context``.

A handler is ``async def handler(request, context)``. Its route declares the context it
needs (``ApiRoute(..., context=...)``; ``with_context`` for the dashboard's and /metrics'
plain routes), and the route builds it before the handler runs:

- ``app_context``: the app's ``Context`` (store, settings, clock, server secret, failed
  attempts, metrics, dashboard sessions), made once when the app starts. For routes that
  serve no client (``/healthz``, ``/openapi.json``, the dashboard) or that find their client
  themselves before authenticating (the token routes: HTTP Basic, not a token).
- ``client_in_path``: a ``ClientContext``, the app's plus the client the path names, found
  and authorized, and its limits.
- ``client_named``: the same for a client named from outside the path (docs/clients.md,
  Which client a request is for); ``client_named_without_token`` only finds it (the
  Delivery API: page calls come from browsers, without credentials);
  ``client_in_path_or_named`` takes it from the path, or, for a path carrying the literal
  ``client`` in its place (``/m2/client/…``), from outside.

A client is resolved in one place so that no endpoint can forget to, and before anything
else the endpoint does (before a body is read): unknown 404, disabled 403, then, when the
client requires authorization, its token (``authorize``). The client comes from the app's
``ClientCache`` (``client_cache_seconds``; a change made in this process applies at once):
a cached client that needs no token costs no trip to a thread; otherwise finding and
authorizing run in one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import re
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from anyio import CapacityLimiter
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
from profilebase.server.metrics import Metrics
from profilebase.server.secret import ServerSecret
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage.base import Store, WriterApart
from profilebase.server.web.attempts import FailedAttempts
from profilebase.server.web.client_cache import CachedClients, ClientCache, NotCached
from profilebase.server.web.fetch_replies import FetchReplies
from profilebase.server.web.openapi import query
from profilebase.server.web.sessions import Sessions

log = logging.getLogger("profilebase.server.web")
T = TypeVar("T")
#: ``ClientContext``s kept at most (``Context.for_client``); past it, it starts again empty.
MAX_CLIENT_CONTEXTS = 1024


@dataclass(frozen=True)
class Context:
    """The app's world, the same for every request; made when the app starts."""

    store: Store
    settings: Settings
    #: Milliseconds since the epoch; tests give the app a clock they move by hand.
    clock: Callable[[], int]
    #: The server secret tokens derive from, confirmed against the database at start-up.
    secret: ServerSecret
    #: Failed authentications per address (``auth_failures_per_minute``).
    failed_attempts: FailedAttempts
    metrics: Metrics
    #: The dashboard's signed login cookies.
    sessions: Sessions
    #: Threads of the readiness checks' own, so that /readyz answers while every thread of
    #: the shared pool waits for a database that is gone.
    readiness_limiter: CapacityLimiter
    #: Clients read recently, by code and organization id (``client_cache_seconds``).
    clients: ClientCache
    #: Fetch replies kept while nothing is committed (``fetch_cache_mb``).
    fetch_replies: FetchReplies
    #: The ``ClientContext`` made for each client object lately (``for_client``), by its id.
    client_contexts: dict[int, ClientContext]
    #: The process of this one's online writes (``sqlite_writer_process``), if it has one.
    writer: WriterApart | None

    def client_limits(self, client: Client) -> Limits:
        """The limits in force for ``client``: its overrides, else the server's settings."""
        return client_limits(self.settings, client.limits)

    def for_client(self, client: Client) -> ClientContext:
        """This context with the request's client (found and authorized) and its limits;
        the same one for the same client object (the client cache hands out one while it
        keeps it), so that a request doesn't work out its limits again."""
        if self.clients.seconds <= 0:  # every request reads a new client object
            return self._client_context(client)
        kept = self.client_contexts.get(id(client))
        if kept is not None and kept.client is client:
            return kept
        made = self._client_context(client)
        if len(self.client_contexts) >= MAX_CLIENT_CONTEXTS:
            self.client_contexts.clear()
        # Holds the client, so its id is not reused while kept. Shared with the threads
        # that find clients (``resolved``): each dict operation is atomic, and a race at
        # worst makes a context twice.
        self.client_contexts[id(client)] = made
        return made

    def _client_context(self, client: Client) -> ClientContext:
        return ClientContext(
            self.store,
            self.settings,
            self.clock,
            self.secret,
            self.failed_attempts,
            self.metrics,
            self.sessions,
            self.readiness_limiter,
            self.clients,
            self.fetch_replies,
            self.client_contexts,
            self.writer,
            client,
            self.client_limits(client),
        )


@dataclass(frozen=True)
class ClientContext(Context):
    """The context of a route that serves one client: the app's, plus the client."""

    client: Client
    limits: Limits
    #: The token check still to make, for a route that lets ``in_thread`` make it (a
    #: cached client that requires a token: ``client_named_checked_in_thread``).
    pending: Callable[[], None] | None = None

    async def in_thread(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a worker thread, after the token check still pending, if any:
        one trip to a thread for both."""
        pending = self.pending
        if pending is None:
            return await run_in_threadpool(work, *args)

        def checked() -> T:
            pending()
            return work(*args)

        return await run_in_threadpool(checked)

    async def write_now(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, a store call that writes at once (``update_profile``, ``visit``,
        ``delete_profile``), on the store's writer thread if it has one (SQLite: the writes
        waiting together share a transaction, and no request thread waits for them),
        else in a worker thread; in the process of its own the store made for it
        (``writer``), if there is one."""
        if self.writer is not None:
            return cast(T, await self.writer.write(call, *args))
        future = self.store.submit_write(call, *args)
        if future is None:
            return await run_in_threadpool(call, *args)
        return cast(T, await _Settler.of(asyncio.get_running_loop()).watch(future))


class _Settler:
    """Hands the outcomes of a store's writer thread to the event loop, a group at a time.

    ``asyncio.wrap_future`` wakes the loop once per future; the writer thread settles a
    whole group's futures at once, so one wake-up settles every one that is done."""

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Settler] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.done: list[tuple[asyncio.Future[Any], concurrent.futures.Future[Any]]] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Settler:
        settler = cls._of_loop.get(loop)
        if settler is None:
            settler = cls._of_loop[loop] = cls(loop)
        return settler

    def watch(self, future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
        """An asyncio future settled as ``future`` is; cancelling it cancels ``future``
        if its call has not started."""
        waiter = self.loop.create_future()
        waiter.add_done_callback(lambda w: future.cancel() if w.cancelled() else None)
        future.add_done_callback(lambda f: self._finished(waiter, f))
        return waiter

    def _finished(
        self, waiter: asyncio.Future[Any], future: concurrent.futures.Future[Any]
    ) -> None:
        with self.lock:
            first = not self.done
            self.done.append((waiter, future))
        if first:
            self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self.lock:
            done, self.done = self.done, []
        for waiter, future in done:
            if waiter.done():
                continue
            if future.cancelled():
                waiter.cancel()
                continue
            error = future.exception()
            if error is None:
                waiter.set_result(future.result())
            else:
                waiter.set_exception(error)


Handler = Callable[[Request, Context], Awaitable[Response]]


async def app_context(request: Request) -> Context:
    """The app's context, for a route that serves no client (or finds it itself)."""
    context: Context = request.app.state.context
    return context


def with_context(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint that calls ``handler`` with the app's context (plain routes)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        return await handler(request, await app_context(request))

    return endpoint


#: Where clients are read from: the store, or the app's cache of it.
ClientSource = Store | CachedClients
Find = Callable[[Request, Context, ClientSource], Client]


async def resolved(
    request: Request, find: Find, authorize_it: bool = True, defer: bool = False
) -> ClientContext:
    """The context with the client ``find`` names (404 if none) once it is enabled (403)
    and, with ``authorize_it``, once the request may make a profile API call for it.

    From the cache alone when it holds every client ``find`` looks at and the client needs
    no token (no trip to a thread); otherwise in one trip, reading what the cache lacks.
    With ``defer``, a cached client's token check is left to the handler's ``in_thread``,
    which makes it before the handler's work, in the same trip."""
    context: Context = request.app.state.context  # app_context's, without its await
    try:
        client = enabled(find(request, context, context.clients.cached()))
        if not (authorize_it and client.require_auth):
            return context.for_client(client)
        if defer:
            return replace(
                context.for_client(client), pending=lambda: authorize(request, context, client)
            )
    except NotCached:
        pass

    def resolve() -> ClientContext:
        client = enabled(find(request, context, context.clients.reading(context.store)))
        if authorize_it:
            authorize(request, context, client)
        return context.for_client(client)

    return await run_in_threadpool(resolve)


def in_path(request: Request, context: Context, source: ClientSource) -> Client:
    return found_client(source, request.path_params.get("client", ""))


async def client_in_path(request: Request) -> ClientContext:
    """The client the path names (``{client}``), found and authorized."""
    return await resolved(request, in_path)


async def client_named(request: Request) -> ClientContext:
    """The client a request names from outside the path (``client_named_by``), authorized."""
    return await resolved(request, named)


async def client_named_checked_in_thread(request: Request) -> ClientContext:
    """``client_named``, for a handler whose first act is ``context.in_thread``: the token
    of a cached client is checked there, in the trip to a thread the handler makes anyway
    (the fetch: nothing before it reads a body or the database)."""
    return await resolved(request, named, defer=True)


async def client_named_without_token(request: Request) -> ClientContext:
    """The client a request names from outside the path, found only: the Delivery API,
    which Target takes without credentials (page calls come from browsers)."""
    return await resolved(request, named, authorize_it=False)


def named(request: Request, context: Context, source: ClientSource) -> Client:
    return client_named_by(request, context, source=source)


#: What a path may carry instead of a client code: ``/m2/client/profile/update``, as
#: Target's documentation prints it.
LITERAL_CLIENT = "client"


def in_path_or_named(request: Request, context: Context, source: ClientSource) -> Client:
    if request.path_params["client"] != LITERAL_CLIENT:
        return in_path(request, context, source)
    return client_named_by(request, context, LITERAL_CLIENT, source)


async def client_in_path_or_named(request: Request) -> ClientContext:
    """The client the path names, authorized; for the literal ``/m2/client/…``, the client
    named from outside the path, a client really named ``client`` before the default."""
    return await resolved(request, in_path_or_named)


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


def found_client(source: ClientSource, code: str) -> Client:
    """The client ``code``, if it exists (404); whether it is enabled is ``enabled``'s."""
    client = source.get_client(code)
    if client is None:
        raise UnknownClient(code)
    return client


def enabled(client: Client) -> Client:
    if client.disabled:
        raise ClientDisabled(client.code)
    return client


def authorize(request: Request, context: Context, client: Client) -> None:
    """Check the request may make a profile API call for ``client`` (blocking: run it in
    a thread).

    If the client requires authorization: an address with too many recent failures gets
    429; then one of the tokens the request carries must be the client's, valid now (401
    if there is none, 403 if none is). A refused request counts as a failure of the address.
    """
    if not client.require_auth:
        return
    attempts = context.failed_attempts
    attempts.check(address_of(request))
    try:
        tokens.authorize(context.store, client, presented_tokens(request), context.clock())
    except AccessDenied:
        attempts.record(address_of(request))
        raise


def client_named_by(
    request: Request,
    context: Context,
    literal: str | None = None,
    source: ClientSource | None = None,
) -> Client:
    """Which client a request is for, the first of:

    1. the ``client`` query parameter (404 if there is no such client);
    2. the first label of the Host header, when it is a client's code
       (``acme.tt.omtrdc.net``: how Target's own clients name it);
    3. the client whose organization id is the ``imsOrgId`` query parameter;
    4. a client named ``literal``;
    5. the server's ``default_client``, while that client exists.

    Clients are read from ``source``: the store (the default), or the app's cache.
    """
    store = context.store if source is None else source
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
    default = context.settings.default_client.strip()
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


#: A JSON escape of a UTF-16 surrogate (``\ud800``-``\udfff``): a body that has one may
#: spell a lone surrogate, which no UTF-8 can hold and no database stores.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_body(body: bytes, refusal: str) -> Any:
    """``body`` parsed as JSON; ``BadRequest(refusal)`` if it is not JSON, and a 400 that
    says so if a string in it is a lone surrogate (looked for only in a body that escapes
    one: a pair stands for one character beyond U+FFFF and is fine)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(refusal) from None
    if SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "The JSON body escapes a lone UTF-16 surrogate (\\ud800 to \\udfff without its "
                "pair), which is no character: send the text as UTF-8, or escape a character "
                "beyond U+FFFF as its surrogate pair."
            ) from None
    return document


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
