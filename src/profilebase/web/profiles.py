"""Target's profile fetch: ``/rest/v1/profiles/{pcId}`` and ``/rest/v1/profiles/thirdPartyId/{id}``."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from profilebase.errors import BadRequest, NotFound
from profilebase.models import Client, KeyKind, Profile, iso_ms
from profilebase.web.context import resolve_client, store_of


def profile_json(profile: Profile) -> dict[str, Any]:
    """Target's fetch shape: exactly the attributes written, with millisecond UTC timestamps."""
    return {
        "client": profile.client_code,
        "visitorId": profile.visitor_id,
        "modifiedAt": iso_ms(profile.modified_at),
        "profileAttributes": {
            name: {"value": attribute.value, "modifiedAt": iso_ms(attribute.modified_at)}
            for name, attribute in sorted(profile.attributes.items())
        },
    }


async def client_from_query(request: Request) -> Client:
    code = request.query_params.get("client", "").strip()
    if not code:
        raise BadRequest(
            "The client query parameter is missing: add ?client=<your client code>."
        )
    return await resolve_client(request, code)


async def fetch(request: Request, kind: KeyKind, identifier: str) -> Response:
    client = await client_from_query(request)
    profile = await run_in_threadpool(store_of(request).get_profile, client.id, kind.key(identifier))
    if profile is None:
        what = "mboxPC" if kind is KeyKind.PC_ID else "third party id"
        raise NotFound(f"No profile found for client {client.code} with {what}={identifier}")
    return JSONResponse(profile_json(profile))


async def fetch_by_pc_id(request: Request) -> Response:
    return await fetch(request, KeyKind.PC_ID, request.path_params["pc_id"])


async def fetch_by_third_party_id(request: Request) -> Response:
    return await fetch(request, KeyKind.THIRD_PARTY_ID, request.path_params["third_party_id"])


routes = [
    Route("/rest/v1/profiles/thirdPartyId/{third_party_id}", fetch_by_third_party_id, methods=["GET"]),
    Route("/rest/v1/profiles/{pc_id}", fetch_by_pc_id, methods=["GET"]),
]
