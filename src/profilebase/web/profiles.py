"""Profiles by id: Target's fetch, plus delete and export (beyond Target).

``/rest/v1/profiles/{pcId}``, ``/rest/v1/profiles/thirdPartyId/{id}`` and
``/rest/v1/profiles/marketingCloudVisitorId/{ECID}`` answer GET (fetch) and DELETE;
``/rest/v1/profiles`` streams every profile of a client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from profilebase import export
from profilebase.errors import BadRequest, NotFound
from profilebase.models import KeyKind
from profilebase.storage.base import Store
from profilebase.storage.links import ecid_key
from profilebase.web.context import clock_of, limits_of, request_client, store_of

#: Profiles read per database round trip while exporting.
EXPORT_PAGE = 500
FORMATS = {"batch": "text/plain; charset=utf-8", "jsonl": "application/x-ndjson"}


def not_found(client_code: str, named: str) -> NotFound:
    """Target's 404 message for an unknown (or expired) profile; ``named`` is ``what=id``."""
    return NotFound(f"No profile found for client {client_code} with {named}")


def identify(request: Request) -> tuple[str, str]:
    """The key the path names a profile by, and the id as Target's 404 names it."""
    params = request.path_params
    if "third_party_id" in params:
        identifier = params["third_party_id"]
        return KeyKind.THIRD_PARTY_ID.key(identifier), f"third party id={identifier}"
    if "ecid" in params:
        return ecid_key(params["ecid"]), f"marketingCloudVisitorId={params['ecid']}"
    return KeyKind.PC_ID.key(params["pc_id"]), f"mboxPC={params['pc_id']}"


async def fetch(request: Request) -> Response:
    """Target's fetch shape; each attribute adds ``writtenBy``, the write its value came from."""
    client = await request_client(request)
    key, named = identify(request)
    before = limits_of(request, client).expire_before_ms(clock_of(request)())
    profile = await run_in_threadpool(store_of(request).get_profile, client.id, key, before)
    if profile is None:
        raise not_found(client.code, named)
    return JSONResponse(export.profile_json(profile))


async def delete(request: Request) -> Response:
    """Delete the profile with every id linked to it: 204, or 404 if there is none."""
    client = await request_client(request)
    key, named = identify(request)
    now = clock_of(request)()
    deleted = await run_in_threadpool(
        store_of(request).delete_profile,
        client.id,
        key,
        now,
        limits_of(request, client).expire_before_ms(now),
    )
    if not deleted:
        raise not_found(client.code, named)
    return Response(status_code=204)


async def export_profiles(request: Request) -> Response:
    """Stream every profile of the client, a page at a time, from one consistent snapshot."""
    client = await request_client(request)
    form = request.query_params.get("format", "jsonl")
    if form not in FORMATS:
        raise BadRequest(f"format must be batch or jsonl, got {form!r}.")
    key = request.query_params.get("key")
    if key is not None and form != "batch":
        raise BadRequest("key applies to format=batch only.")
    try:
        key_kind = KeyKind(key or KeyKind.PC_ID)
    except ValueError:
        raise BadRequest(f"key must be pcId or thirdPartyId, got {key!r}.") from None
    # A pcId export also holds profiles stored under a thirdPartyId that have tntIds.
    only = (
        KeyKind.THIRD_PARTY_ID if form == "batch" and key_kind is KeyKind.THIRD_PARTY_ID else None
    )
    before = limits_of(request, client).expire_before_ms(clock_of(request)())
    suffix = "txt" if form == "batch" else "jsonl"
    return StreamingResponse(
        export_body(store_of(request), client.id, only, before, form, key_kind),
        media_type=FORMATS[form],
        headers={"content-disposition": f'attachment; filename="{client.code}-profiles.{suffix}"'},
    )


async def export_body(
    store: Store,
    client_id: int,
    only: KeyKind | None,
    expire_before_ms: int,
    form: str,
    key_kind: KeyKind,
) -> AsyncIterator[bytes]:
    """The export's bytes; the snapshot opens when streaming starts and closes when it ends."""
    snapshot = await run_in_threadpool(store.open_export, client_id, only, expire_before_ms)
    names: list[str] = []
    try:
        if form == "batch":
            # A batch header lists every attribute: a first pass over the snapshot finds them.
            found: set[str] = set()
            async for page in iterate_in_threadpool(snapshot.pages(EXPORT_PAGE)):
                found.update(name for profile in page for name in profile.attributes)
            names = sorted(found)
            yield export.batch_header(key_kind, names).encode()
        async for page in iterate_in_threadpool(snapshot.pages(EXPORT_PAGE)):
            if form == "batch":
                yield export.batch_lines(key_kind, names, page).encode()
            else:
                yield export.jsonl_lines(page).encode()
    finally:
        snapshot.close()


routes = [
    Route("/rest/v1/profiles", export_profiles, methods=["GET"]),
    Route("/rest/v1/profiles/thirdPartyId/{third_party_id}", fetch, methods=["GET"]),
    Route("/rest/v1/profiles/thirdPartyId/{third_party_id}", delete, methods=["DELETE"]),
    Route("/rest/v1/profiles/marketingCloudVisitorId/{ecid}", fetch, methods=["GET"]),
    Route("/rest/v1/profiles/marketingCloudVisitorId/{ecid}", delete, methods=["DELETE"]),
    Route("/rest/v1/profiles/{pc_id}", fetch, methods=["GET"]),
    Route("/rest/v1/profiles/{pc_id}", delete, methods=["DELETE"]),
]
