"""Target's single profile update: ``GET|POST /m2/{client}/profile/update``.

Parameters come from the query string and, for POST, from a form-encoded body
(or, leniently, a JSON object). ``mboxPC`` or ``mbox3rdPartyId`` names the
profile; every ``profile.``-prefixed parameter is an attribute (prefix stripped).
The update applies before the reply, so a fetch right after it sees it.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from profilebase.errors import (
    BadRequest,
    NotFound,
    ProfilebaseError,
    RequestTooLarge,
    StorageError,
)
from profilebase.ids import check_id
from profilebase.models import DAY_MS, KeyKind, Limits
from profilebase.server import quota
from profilebase.server.web import xml
from profilebase.server.web.context import (
    ClientContext,
    client_in_path_or_named,
    json_body,
    read_body,
    scalar_text,
)
from profilebase.server.web.openapi import (
    CLIENT,
    CLIENT_FROM_OUTSIDE,
    JSON,
    REFUSALS,
    TARGET,
    TOKEN_IF_REQUIRED,
    XML,
    ApiRoute,
    Schema,
    declared,
    error_replies,
    operation,
    query_param,
    ref,
    reply,
)

log = logging.getLogger("profilebase.server.web")

ATTRIBUTE_PREFIX = "profile."
ID_PARAMETERS = {"mboxPC": KeyKind.PC_ID, "mbox3rdPartyId": KeyKind.THIRD_PARTY_ID}
PARAMETER_OF = {kind: name for name, kind in ID_PARAMETERS.items()}


async def update(request: Request, context: ClientContext) -> Response:
    """Apply one profile update; every reply to an authorized caller carries the headers
    of the client's daily update quota.

    An update that counted brings the quota's counts from its own transaction; any other
    reply, a refusal included, reads them in a trip to a thread."""
    try:
        kind, identifier, values = await parse_request(request, context.limits)
        pc_id, recent = await apply(context, kind, identifier, values)
    except StorageError:
        raise
    except ProfilebaseError as exc:
        exc.headers.update(await run_in_threadpool(quota_headers, context))
        raise
    if recent is None:
        headers = await run_in_threadpool(quota_headers, context)
    else:
        limit = context.limits.updates_per_day
        headers = quota.rate_limit_headers(recent, limit, context.clock())
    return xml.UpdatedResponse(pc_id, headers)


def quota_headers(context: ClientContext) -> dict[str, str]:
    """``X-RateLimit-*`` for the client's rolling daily update quota (updates_per_day), or
    none if the database fails meanwhile (logged): the update's own outcome stands.
    Blocking: run it in a thread."""
    now = context.clock()
    try:
        recent = context.store.recent_updates(context.client.id, now - DAY_MS)
    except StorageError as exc:
        log.warning("reply sent without its quota headers: %s (%s)", exc.message, exc.detail)
        return {}
    return quota.rate_limit_headers(recent, context.limits.updates_per_day, now)


async def parse_request(request: Request, limits: Limits) -> tuple[KeyKind, str, dict[str, str]]:
    """The profile the request names and the attributes it sets (400 and 413 refusals)."""
    parameters = await read_parameters(request, limits)
    for name in ID_PARAMETERS:
        declared(request, name)
    return parse_update(parameters)


async def apply(
    context: ClientContext, kind: KeyKind, identifier: str, values: dict[str, str]
) -> tuple[str | None, Sequence[tuple[int, int]] | None]:
    """Apply one profile update now; 404 (creating nothing) if no profile has the id.
    Returns the pcId to reply with and the quota's counts the update brought, if it
    counted."""
    client, limits = context.client, context.limits
    now = context.clock()
    outcome = await context.write_now(
        context.store.update_profile,
        client,
        kind.key(identifier),
        values,
        now,
        limits.updates_per_day,
        limits.max_profile_bytes,
        limits.expire_before_ms(now),
    )
    if outcome is None:
        raise NotFound(
            f"No profile found for client {client.code} with {PARAMETER_OF[kind]}={identifier}: "
            "the single profile update API updates existing profiles only and created nothing. "
            "A profile in a batch that is still queued does not exist yet; create profiles with "
            "a v2 batch or a page call first."
        )
    return outcome.pc_id, outcome.recent


async def read_parameters(request: Request, limits: Limits) -> list[tuple[str, str]]:
    """The query string's parameters, then (POST) the body's; limits as Target's (8 KB / 60 KB)."""
    query = request.scope.get("query_string", b"")
    if request.method == "GET":
        path = request.scope.get("raw_path") or request.url.path.encode()
        line = len(request.method) + 1 + len(path) + (1 + len(query) if query else 0) + 9
        if line > limits.max_update_url_bytes:
            raise RequestTooLarge(
                f"The request line is {line:,} bytes; a GET update may have at most "
                f"{limits.max_update_url_bytes:,} (max_update_url_bytes). Send the parameters "
                "in a POST body instead."
            )
        return form_pairs(query, "query string")
    body = await read_body(
        request, limits.max_update_body_bytes, "max_update_body_bytes", already=len(query)
    )
    pairs = form_pairs(query, "query string")
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json") or body.lstrip().startswith(b"{"):
        return pairs + json_pairs(body)
    return pairs + form_pairs(body, "body")


def form_pairs(raw: bytes, where: str) -> list[tuple[str, str]]:
    try:
        return urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(
            f"The {where} is not valid UTF-8 once percent-decoded: encode names and values as "
            "UTF-8 before URL-encoding them."
        ) from None


def json_pairs(body: bytes) -> list[tuple[str, str]]:
    """A JSON object of parameters; numbers and booleans become text, null is no change."""
    document = json_body(body, "The JSON body cannot be parsed; send a JSON object.")
    if not isinstance(document, dict):
        raise BadRequest("The JSON body must be an object of parameter names and values.")
    pairs = []
    for name, value in document.items():
        text = "" if value is None else scalar_text(value)
        if text is None:
            raise BadRequest(f"The value of {name!r} must be text, a number or a boolean.")
        pairs.append((name, text))
    return pairs


def parse_update(pairs: list[tuple[str, str]]) -> tuple[KeyKind, str, dict[str, str]]:
    """The id and the attributes to set; names are case-sensitive, empty values are skipped."""
    ids: dict[KeyKind, str] = {}
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in ID_PARAMETERS:
            ids[ID_PARAMETERS[name]] = value
        elif name.startswith(ATTRIBUTE_PREFIX):
            attribute = name[len(ATTRIBUTE_PREFIX) :]
            if not attribute or attribute.startswith(ATTRIBUTE_PREFIX):
                raise BadRequest(
                    f"The parameter {name!r} does not name an attribute: write "
                    "profile.<name>, with one `profile.` prefix."
                )
            if value:
                values[attribute] = value
            else:
                values.pop(attribute, None)
    given = {kind: identifier for kind, identifier in ids.items() if identifier}
    if len(given) != 1:
        raise BadRequest(
            "Name the profile with exactly one of mboxPC (Target visitor id) and "
            "mbox3rdPartyId (your own id), e.g. ?mbox3rdPartyId=crm-1&profile.tier=gold."
        )
    ((kind, identifier),) = given.items()
    problem = check_id(kind, identifier)
    if problem:
        raise BadRequest(f"Invalid {PARAMETER_OF[kind]}: {problem}.")
    return kind, identifier, values


def update_operation(method: str) -> Schema:
    """The OpenAPI operation of the single update by GET, or by POST with a body."""
    extra: Schema = {}
    if method == "post":
        extra["requestBody"] = {
            "description": "The same parameters, form-encoded (or, leniently, a JSON object).",
            "content": {
                "application/x-www-form-urlencoded": {"schema": {"type": "string"}},
                JSON: {"schema": {"type": "object", "additionalProperties": True}},
            },
        }
    return operation(
        TARGET,
        "Single profile update: set profile.<name>=<value> attributes of one existing profile, "
        "applied before the reply. The literal path /m2/client/profile/update takes the client "
        "from ?client=, the Host header's first label or imsOrgId, then a client named client, "
        "then the server's default_client.",
        [
            CLIENT,
            query_param("mboxPC", "The profile's tntId (or mbox3rdPartyId instead)."),
            query_param("mbox3rdPartyId", "Your own id of the profile (or mboxPC instead)."),
            *CLIENT_FROM_OUTSIDE,
        ],
        {
            "200": reply("Applied.", XML, ref("XmlUpdated")),
            **error_replies(XML, 400, *REFUSALS, 413, 507),
        },
        security=TOKEN_IF_REQUIRED,
        **extra,
    )


routes = [
    ApiRoute(
        "/m2/{client}/profile/update",
        update,
        methods=["GET", "POST"],
        # The literal /m2/client/…: the client a request names from outside the path.
        context=client_in_path_or_named,
        operations={"get": update_operation("get"), "post": update_operation("post")},
    )
]
