"""Target's token endpoints: create or show the profile API token of a client.

- ``POST /{client}/target/authentication/token?authorizationScope=profile_api`` (or
  ``scope=``) creates a token: 201 ``{accessToken, tokenType, scope, expiresIn}``.
- ``GET`` on the same path returns the active token in the same shape, with the seconds
  it has left (the server derives it again from the server secret; 404 if none).
- ``GET|POST /admin/rest/v1/authentication/token?client=…&scope=profile_api`` is Target
  Classic's form: 200 ``{access_token, scope, expires_in, token_type}``; the client is
  resolved as every route that takes it from outside the path does.

All of them authenticate with HTTP Basic ``api_key:secret``, not with a token, so their
routes take the app's context and find the client themselves, after checking the scope.
"""

from __future__ import annotations

import base64
import binascii

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from profilebase.errors import BadRequest, NotFound, Unauthenticated
from profilebase.models import Client
from profilebase.server import clients, tokens
from profilebase.server.web.context import (
    Context,
    address_of,
    app_context,
    client_named_by,
    enabled,
    found_client,
)
from profilebase.server.web.openapi import (
    BASIC,
    CLIENT,
    CLIENT_FROM_OUTSIDE,
    JSON,
    REFUSALS,
    TARGET,
    ApiRoute,
    Schema,
    error_replies,
    operation,
    query,
    query_param,
    ref,
    reply,
)
from profilebase.server.web.responses import JsonResponse

NO_STORE = {"Cache-Control": "no-store"}


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(api_key, secret) of an ``Authorization: Basic`` header, or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    key, colon, secret = decoded.partition(":")
    return (key, secret) if colon else None


async def authenticated_client(request: Request, context: Context, client: Client) -> Client:
    """``client`` once the request's Basic credentials are its own (else 401)."""
    attempts = context.failed_attempts
    address = address_of(request)
    attempts.check(address)
    given = basic_credentials(request)
    if given is None:
        raise Unauthenticated(
            f"Authenticate with HTTP Basic: the API key and secret of client {client.code!r} "
            "as `Authorization: Basic base64(key:secret)` (curl -u KEY:SECRET). An operator "
            f"gets them with `profilebase clients new-secret {client.code}`.",
            scheme="Basic",
        )
    if not await run_in_threadpool(clients.check_credentials, client, *given):
        attempts.record(address)
        raise Unauthenticated(
            f"Wrong API key or secret for client {client.code!r}.", scheme="Basic"
        )
    return client


def require_scope(request: Request, *names: str) -> None:
    """Check the scope parameter (the first of ``names`` given) is profile_api."""
    given = (query(request, name) for name in names)
    scope = next((value for value in given if value is not None), "")
    if scope != tokens.PROFILE_API:
        raise BadRequest(
            f"Set the query parameter {names[0]}=profile_api: profilebase issues tokens of "
            f"the profile_api scope only (got {scope!r})."
        )


async def token(request: Request, context: Context) -> Response:
    """POST creates a token (201); GET returns the active one (200) or 404."""
    require_scope(request, "authorizationScope", "scope")
    code = request.path_params["client"]
    found = enabled(await run_in_threadpool(found_client, context.store, code))
    client = await authenticated_client(request, context, found)
    now = context.clock()
    if request.method == "GET":
        return await active_token(context, client, now)
    ttl = context.client_limits(client).token_ttl_seconds
    grace = context.settings.token_grace_seconds
    issued = await run_in_threadpool(
        tokens.issue, context.store, client, context.secret, ttl, grace, now
    )
    body = {
        "accessToken": issued.value,
        "tokenType": "bearer",
        "scope": tokens.PROFILE_API,
        "expiresIn": ttl,
    }
    return JsonResponse(body, status_code=201, headers=NO_STORE)


async def active_token(context: Context, client: Client, now: int) -> Response:
    """The client's active token, derived again from the server secret, with its seconds
    left; 404 when it has none, or only one made before tokens could be shown."""
    active = await run_in_threadpool(context.store.active_token, client.id, tokens.PROFILE_API, now)
    create = "create one with POST on this URL (with the same credentials)"
    if active is None:
        raise NotFound(f"Client {client.code!r} has no active profile_api token; {create}.")
    value = tokens.reveal(context.secret, active)
    if value is None:
        raise NotFound(
            f"The active token of client {client.code!r} (…{active.last4}) was made before "
            f"this server could show tokens again, so only its hash is kept; {create}."
        )
    body = {
        "accessToken": value,
        "tokenType": "bearer",
        "scope": active.scope,
        "expiresIn": int(active.expires_at.timestamp() - now / 1000),
    }
    return JsonResponse(body, headers=NO_STORE)


async def legacy_token(request: Request, context: Context) -> Response:
    """Target Classic's token call: a new token, in snake_case, with its shorter lifetime."""
    require_scope(request, "scope")
    found = enabled(await run_in_threadpool(client_named_by, request, context))
    client = await authenticated_client(request, context, found)
    settings = context.settings
    ttl = settings.legacy_token_ttl_seconds
    issued = await run_in_threadpool(
        tokens.issue,
        context.store,
        client,
        context.secret,
        ttl,
        settings.token_grace_seconds,
        context.clock(),
    )
    body = {
        "access_token": issued.value,
        "scope": tokens.PROFILE_API,
        "expires_in": ttl,
        "token_type": "bearer",
    }
    return JsonResponse(body, headers=NO_STORE)


PROFILE_API: Schema = {"type": "string", "enum": [tokens.PROFILE_API]}
SCOPE = query_param("scope", "profile_api, the one scope profilebase issues.", PROFILE_API)
AUTHORIZATION_SCOPE = query_param(
    "authorizationScope", "profile_api (or give it as scope).", PROFILE_API
)
CREATE = operation(
    TARGET,
    "Create the client's profile API token; the previous one is revoked (after "
    "token_grace_seconds).",
    [CLIENT, AUTHORIZATION_SCOPE, SCOPE],
    {
        "201": reply("The new token.", JSON, ref("Token")),
        **error_replies(JSON, 400, *REFUSALS, 507),
    },
    security=BASIC,
)
RETRIEVE = operation(
    TARGET,
    "Retrieve the client's active token: the token, its type, scope and the seconds it "
    "has left (the server derives it again from its secret); 404 when there is none.",
    [CLIENT, AUTHORIZATION_SCOPE, SCOPE],
    {
        "200": reply("The active token.", JSON, ref("Token")),
        **error_replies(JSON, 400, *REFUSALS),
    },
    security=BASIC,
)
LEGACY = operation(
    TARGET,
    "Target Classic's token call: a new profile API token, in snake_case, with its "
    "shorter lifetime (legacy_token_ttl_seconds).",
    [*CLIENT_FROM_OUTSIDE, {**SCOPE, "required": True}],
    {
        "200": reply("The new token.", JSON, ref("LegacyToken")),
        **error_replies(JSON, 400, *REFUSALS),
    },
    security=BASIC,
)

routes = [
    ApiRoute(
        "/{client}/target/authentication/token",
        token,
        methods=["GET", "POST"],
        context=app_context,
        operations={"get": RETRIEVE, "post": CREATE},
    ),
    ApiRoute(
        "/admin/rest/v1/authentication/token",
        legacy_token,
        methods=["GET", "POST"],
        context=app_context,
        operation=LEGACY,
    ),
]
