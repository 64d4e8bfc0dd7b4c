"""What every handler needs from the application: settings, store, and the request's client."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from profilebase.config import Settings
from profilebase.errors import UnknownClient
from profilebase.models import Client
from profilebase.storage.base import Store


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def resolve_client(request: Request, code: str | None = None) -> Client:
    """The client named in the path (or ``code``); ``UnknownClient`` (404) if there is none."""
    code = code if code is not None else request.path_params.get("client", "")
    client = await run_in_threadpool(store_of(request).get_client, code)
    if client is None:
        raise UnknownClient(code)
    return client
