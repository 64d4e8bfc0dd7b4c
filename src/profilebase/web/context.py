"""What every handler needs: settings, store, the request's client and limits, its body."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from profilebase.config import Settings, client_limits
from profilebase.errors import BadRequest, RequestTooLarge, UnknownClient
from profilebase.models import Client, Limits
from profilebase.storage.base import Store


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def limits_of(request: Request, client: Client) -> Limits:
    """The limits in force for ``client``: its overrides, else the server's settings."""
    return client_limits(settings_of(request), client.limits)


async def resolve_client(request: Request, code: str | None = None) -> Client:
    """The client named in the path (or ``code``); ``UnknownClient`` (404) if there is none."""
    code = code if code is not None else request.path_params.get("client", "")
    client = await run_in_threadpool(store_of(request).get_client, code)
    if client is None:
        raise UnknownClient(code)
    return client


async def client_from_query(request: Request) -> Client:
    """The client named by the ``client`` query parameter, as Target's ``/rest/`` APIs take it."""
    code = request.query_params.get("client", "").strip()
    if not code:
        raise BadRequest("The client query parameter is missing: add ?client=<your client code>.")
    return await resolve_client(request, code)


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
