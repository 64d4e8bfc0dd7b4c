"""Profiles by id: Target's fetch, plus delete and export (beyond Target).

``/rest/v1/profiles/{pcId}`` and ``/rest/v1/profiles/thirdPartyId/{id}`` answer
GET (fetch) and DELETE; ``/rest/v1/profiles`` streams every profile of a client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from profilebase import export
from profilebase.errors import BadRequest, NotFound
from profilebase.models import KeyKind
from profilebase.storage.base import ProfileExport
from profilebase.web.context import client_from_query, clock_of, limits_of, store_of

#: Profiles read per database round trip while exporting.
EXPORT_PAGE = 500
FORMATS = {"batch": "text/plain; charset=utf-8", "jsonl": "application/x-ndjson"}


def not_found(client_code: str, kind: KeyKind, identifier: str) -> NotFound:
    """Target's 404 message for an unknown (or expired) profile."""
    what = "mboxPC" if kind is KeyKind.PC_ID else "third party id"
    return NotFound(f"No profile found for client {client_code} with {what}={identifier}")


def identify(request: Request) -> tuple[KeyKind, str]:
    if "third_party_id" in request.path_params:
        return KeyKind.THIRD_PARTY_ID, request.path_params["third_party_id"]
    return KeyKind.PC_ID, request.path_params["pc_id"]


async def fetch(request: Request) -> Response:
    """Target's fetch shape; each attribute adds ``writtenBy``, the write its value came from."""
    client = await client_from_query(request)
    kind, identifier = identify(request)
    before = limits_of(request, client).expire_before_ms(clock_of(request)())
    profile = await run_in_threadpool(
        store_of(request).get_profile, client.id, kind.key(identifier), before
    )
    if profile is None:
        raise not_found(client.code, kind, identifier)
    return JSONResponse(export.profile_json(profile))


async def delete(request: Request) -> Response:
    """Delete the profile with every id linked to it: 204, or 404 if there is none."""
    client = await client_from_query(request)
    kind, identifier = identify(request)
    now = clock_of(request)()
    deleted = await run_in_threadpool(
        store_of(request).delete_profile,
        client.id,
        kind.key(identifier),
        now,
        limits_of(request, client).expire_before_ms(now),
    )
    if not deleted:
        raise not_found(client.code, kind, identifier)
    return Response(status_code=204)


async def export_profiles(request: Request) -> Response:
    """Stream every profile of the client, a page at a time, from one consistent snapshot.

    A batch export reads the snapshot twice: first for the header's attribute names and
    the count of profiles it cannot key (sent as a reply header), then for the rows.
    """
    client = await client_from_query(request)
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
    before = limits_of(request, client).expire_before_ms(clock_of(request)())
    suffix = "txt" if form == "batch" else "jsonl"
    headers = {"content-disposition": f'attachment; filename="{client.code}-profiles.{suffix}"'}
    snapshot = await run_in_threadpool(store_of(request).open_export, client.id, None, before)
    plan = None
    try:
        if form == "batch":
            plan = await run_in_threadpool(export.plan_batch, snapshot.pages(EXPORT_PAGE), key_kind)
            headers[export.UNKEYED_HEADER] = str(plan.unkeyed)
    except BaseException:
        await run_in_threadpool(snapshot.close)
        raise
    return StreamingResponse(
        export_body(snapshot, form, key_kind, plan),
        media_type=FORMATS[form],
        headers=headers,
        # Also closed here if the client goes away before the body starts.
        background=BackgroundTask(snapshot.close),
    )


async def export_body(
    snapshot: ProfileExport, form: str, key_kind: KeyKind, plan: export.BatchPlan | None
) -> AsyncIterator[bytes]:
    """The export's bytes; the snapshot closes when they end."""
    try:
        chunks = export.export_chunks(snapshot.pages(EXPORT_PAGE), form, key_kind, plan)
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk.encode()
    finally:
        await run_in_threadpool(snapshot.close)


routes = [
    Route("/rest/v1/profiles", export_profiles, methods=["GET"]),
    Route("/rest/v1/profiles/thirdPartyId/{third_party_id}", fetch, methods=["GET"]),
    Route("/rest/v1/profiles/thirdPartyId/{third_party_id}", delete, methods=["DELETE"]),
    Route("/rest/v1/profiles/{pc_id}", fetch, methods=["GET"]),
    Route("/rest/v1/profiles/{pc_id}", delete, methods=["DELETE"]),
]
