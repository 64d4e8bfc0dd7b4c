"""Profiles by id: Target's fetch, plus delete and export (beyond Target).

``/rest/v1/profiles/{pcId}``, ``/rest/v1/profiles/thirdPartyId/{id}`` and
``/rest/v1/profiles/marketingCloudVisitorId/{ECID}`` answer GET (fetch) and DELETE;
``/rest/v1/profiles`` streams every profile of a client. The id in the path is matched
as sent, so a pcId holding ``/`` (sent as ``%2F``) is one path segment, and checked by
the same rule as every other id.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator

from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match
from starlette.types import Scope

from profilebase import ids
from profilebase.errors import BadRequest, NotFound
from profilebase.models import KeyKind, Profile
from profilebase.server import export
from profilebase.server.storage.base import ProfileExport, WouldWait
from profilebase.server.storage.links import ecid_key
from profilebase.server.storage.records import ProfileRecord
from profilebase.server.web.context import (
    ClientContext,
    client_named,
    client_named_checked_in_thread,
)
from profilebase.server.web.fetch_replies import ARRIVED
from profilebase.server.web.openapi import (
    CLIENT_FROM_OUTSIDE,
    EXTENSION,
    JSON,
    REFUSALS,
    TARGET,
    TOKEN_IF_REQUIRED,
    ApiRoute,
    Schema,
    error_replies,
    id_schema,
    operation,
    path_param,
    query,
    query_param,
    ref,
    reply,
)
from profilebase.server.web.responses import JsonBytesResponse, JsonResponse, json_bytes

#: Profiles read per database round trip while exporting.
EXPORT_PAGE = 500
FORMATS = {"batch": "text/plain; charset=utf-8", "jsonl": "application/x-ndjson"}
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class RawPathRoute(ApiRoute):
    """A route matched against the path as the client sent it, before percent-decoding.

    Servers decode ``%2F`` to ``/`` before routing, which would split an id holding a
    ``/`` into two segments; here each ``{name}`` matches one segment as sent and keeps
    its escapes, and ``path_id`` decodes it.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        raw = scope.get("raw_path")
        if raw is None:  # a server that keeps no raw path: escape the decoded one again
            path = urllib.parse.quote(scope["path"], safe="/")
        else:
            path = raw.split(b"?", 1)[0].decode("latin-1")
        root = scope.get("root_path", "")
        if root:
            root = urllib.parse.quote(root, safe="/")
            if path.startswith(root + "/"):
                path = path[len(root) :]
        found = self.path_regex.match(path)
        if found is None:
            return Match.NONE, {}
        params = dict(scope.get("path_params", {}))
        for name, value in found.groupdict().items():
            params[name] = self.param_convertors[name].convert(value)
        child = {"endpoint": self.endpoint, "path_params": params}
        if self.methods is not None and scope["method"] not in self.methods:
            return Match.PARTIAL, child
        return Match.FULL, child


def not_found(client_code: str, named: str) -> NotFound:
    """Target's 404 message for an unknown (or expired) profile; ``named`` is ``what=id``."""
    return NotFound(f"No profile found for client {client_code} with {named}")


def identify(request: Request) -> tuple[str, str]:
    """The key the path names a profile by, and the id as Target's 404 names it; the id
    decoded and checked by the id rule (400 if broken)."""
    params = request.path_params
    if "third_party_id" in params:
        identifier = path_id(KeyKind.THIRD_PARTY_ID, params["third_party_id"])
        return KeyKind.THIRD_PARTY_ID.key(identifier), f"third party id={identifier}"
    if "ecid" in params:
        ecid = decode_segment("marketingCloudVisitorId", params["ecid"])
        return ecid_key(ecid), f"marketingCloudVisitorId={ecid}"
    identifier = path_id(KeyKind.PC_ID, params["pc_id"])
    return KeyKind.PC_ID.key(identifier), f"mboxPC={identifier}"


def decode_segment(name: str, raw: str) -> str:
    """Decode one path segment as sent (``%XX`` is a byte of UTF-8; ``+`` is itself)."""
    if _BAD_PERCENT.search(raw):
        raise BadRequest(
            f"The {name} in the path has an invalid percent-encoding: '%' must be followed by "
            "two hex digits (encode a literal '%' as %25)."
        )
    try:
        return urllib.parse.unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(
            f"The {name} in the path is not valid UTF-8 once percent-decoded: percent-encode "
            "the UTF-8 bytes of the id (ü as %C3%BC)."
        ) from None


def path_id(kind: KeyKind, raw: str) -> str:
    """A pcId or thirdPartyId from the path, decoded and checked by the id rule."""
    identifier = decode_segment(str(kind), raw)
    problem = ids.check_id(kind, identifier)
    if problem:
        raise BadRequest(f"Invalid {kind} in the path: {problem}.")
    return identifier


async def fetch(request: Request, context: ClientContext) -> Response:
    """Target's fetch shape; each attribute adds ``writtenBy``, the write its value came from.

    On the event loop when nothing is left to check and the store can read the profile
    without waiting (``fetch_nowait``: SQLite) or await it there (``fetch_async``:
    PostgreSQL); otherwise everything, the token check first, in one trip to a thread
    (``in_thread``)."""
    if context.pending is None:
        try:
            return fetch_nowait(request, context)
        except WouldWait:
            pass
        try:
            return await fetch_async(request, context)
        except WouldWait:
            pass
    return await context.in_thread(read_profile, request, context)


async def fetch_async(request: Request, context: ClientContext) -> Response:
    """The fetch awaited on the event loop (PostgreSQL): the reply kept since nothing was
    committed (``FetchReplies``, checked with ``changes_async``), else the profile read
    there; ``WouldWait`` if the store cannot, or its driver failed: the caller reads from a
    thread."""
    client, store, replies = context.client, context.store, context.fetch_replies
    before = context.limits.expire_before_ms(context.clock())
    if not replies.most_bytes:
        key, named = identify(request)
        record = await store.get_profile_async(client.id, key, before)
        context.metrics.fetch_read.inc()
        return record_reply(record, client.code, named)
    await replies.refresh_async(request.scope.get(ARRIVED), store.changes_async)
    body = kept_reply(request, context, before)
    if body is None:
        key, named = identify(request)
        # Another fetch's check may answer a commit while this one reads: its reply is
        # then sent, not kept (it may not show that commit).
        generation = replies.generation
        record = await store.get_profile_async(client.id, key, before)
        body = keep_reply(request, context, named, record, generation)
    return JsonBytesResponse(body)


def fetch_nowait(request: Request, context: ClientContext) -> Response:
    """The fetch on the event loop: the reply kept since nothing was committed
    (``FetchReplies``, by the path as sent), else the profile read without waiting
    (``WouldWait`` if it can't)."""
    client, store, replies = context.client, context.store, context.fetch_replies
    before = context.limits.expire_before_ms(context.clock())
    if not replies.most_bytes:
        key, named = identify(request)
        record = store.get_profile_nowait(client.id, key, before)
        context.metrics.fetch_read.inc()
        return record_reply(record, client.code, named)
    replies.refresh(request.scope.get(ARRIVED), store.changes_nowait)
    body = kept_reply(request, context, before)
    if body is None:
        key, named = identify(request)
        record = store.get_profile_nowait(client.id, key, before)
        body = keep_reply(request, context, named, record, replies.generation)
    return JsonBytesResponse(body)


def kept_reply(request: Request, context: ClientContext, before: int) -> bytes | None:
    """The reply kept for the request's path, if any (counted as such); after a refresh."""
    path = request.scope.get("raw_path") or request.scope["path"].encode()
    body = context.fetch_replies.get(context.client.id, path, before)
    if body is not None:
        context.metrics.fetch_kept.inc()
    return body


def keep_reply(
    request: Request,
    context: ClientContext,
    named: str,
    record: ProfileRecord | None,
    generation: int,
) -> bytes:
    """The reply body of the profile ``record`` holds, just read (counted as such), kept
    for the path if no check answered a change since the read began (``generation``);
    ``not_found`` if there is none."""
    context.metrics.fetch_read.inc()
    if record is None:
        raise not_found(context.client.code, named)
    body = json_bytes(export.fetch_document(record))
    path = request.scope.get("raw_path") or request.scope["path"].encode()
    context.fetch_replies.put(context.client.id, path, record.modified_ms, body, generation)
    return body


def read_profile(request: Request, context: ClientContext) -> Response:
    client = context.client
    key, named = identify(request)
    before = context.limits.expire_before_ms(context.clock())
    return reply_of(context.store.get_profile(client.id, key, before), client.code, named)


def reply_of(profile: Profile | None, client_code: str, named: str) -> Response:
    """The fetch's reply: the profile in Target's shape, or its 404."""
    if profile is None:
        raise not_found(client_code, named)
    return JsonResponse(export.profile_json(profile))


def record_reply(record: ProfileRecord | None, client_code: str, named: str) -> Response:
    """``reply_of`` the profile ``record`` holds."""
    if record is None:
        raise not_found(client_code, named)
    return JsonBytesResponse(json_bytes(export.fetch_document(record)))


async def delete(request: Request, context: ClientContext) -> Response:
    """Delete the profile with every id linked to it: 204, or 404 if there is none."""
    client = context.client
    key, named = identify(request)
    now = context.clock()
    deleted = await context.write_now(
        context.store.delete_profile, client.id, key, now, context.limits.expire_before_ms(now)
    )
    if not deleted:
        raise not_found(client.code, named)
    return Response(status_code=204)


async def export_profiles(request: Request, context: ClientContext) -> Response:
    """Stream every profile of the client, a page at a time, from one consistent snapshot.

    A batch export reads the snapshot twice: first for the header's attribute names and
    the count of profiles it cannot key (sent as a reply header), then for the rows.
    """
    client = context.client
    form = query(request, "format", "jsonl")
    if form not in FORMATS:
        raise BadRequest(f"format must be batch or jsonl, got {form!r}.")
    key = query(request, "key")
    if key is not None and form != "batch":
        raise BadRequest("key applies to format=batch only.")
    try:
        key_kind = KeyKind(key or KeyKind.PC_ID)
    except ValueError:
        raise BadRequest(f"key must be pcId or thirdPartyId, got {key!r}.") from None
    before = context.limits.expire_before_ms(context.clock())
    suffix = "txt" if form == "batch" else "jsonl"
    headers = {"content-disposition": f'attachment; filename="{client.code}-profiles.{suffix}"'}
    snapshot = await run_in_threadpool(context.store.open_export, client.id, None, before)
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


RULE = (
    " Percent-encode it (a `/` as %2F); see the id rule in docs/profiles.md: an id "
    "no endpoint stores is refused with 400 and the reason."
)
PC_ID = path_param(
    "pc_id", "Target's visitor id (tntId, mboxPC)." + RULE, id_schema(ids.MAX_PC_ID_LENGTH)
)
THIRD_PARTY_ID = path_param(
    "third_party_id",
    "Your own id (mbox3rdPartyId), without `+` or `/`." + RULE,
    id_schema(ids.MAX_THIRD_PARTY_ID_LENGTH),
)
ECID = path_param(
    "ecid",
    "An Experience Cloud ID (marketingCloudVisitorId) a page call linked to the profile.",
)


def fetch_and_delete(param: Schema) -> dict[str, Schema]:
    """The OpenAPI operations of fetch (Target's) and delete (an extension) by one id."""
    return {
        "get": operation(
            TARGET,
            "Fetch a profile with every attribute written to it.",
            [param, *CLIENT_FROM_OUTSIDE],
            {
                "200": reply("The profile.", JSON, ref("Profile")),
                **error_replies(JSON, 400, *REFUSALS),
            },
            security=TOKEN_IF_REQUIRED,
        ),
        "delete": operation(
            EXTENSION,
            "Delete the profile this id finds, with its thirdPartyId and every linked tntId, "
            "ECID and customer id.",
            [param, *CLIENT_FROM_OUTSIDE],
            {"204": {"description": "Deleted."}, **error_replies(JSON, 400, *REFUSALS, 507)},
            security=TOKEN_IF_REQUIRED,
        ),
    }


EXPORT = operation(
    EXTENSION,
    "Export every profile of the client, streamed from one snapshot: JSON lines, or "
    "a v2 batch file that posts back to the same attribute values.",
    [
        *CLIENT_FROM_OUTSIDE,
        query_param(
            "format",
            "jsonl (fetch-shaped objects with their ids) or batch.",
            {"type": "string", "enum": ["jsonl", "batch"], "default": "jsonl"},
        ),
        query_param(
            "key",
            "format=batch only: one row per tntId (pcId) or per thirdPartyId.",
            {"type": "string", "enum": ["pcId", "thirdPartyId"], "default": "pcId"},
        ),
    ],
    {
        "200": {
            "description": "The profiles.",
            "content": {
                "application/x-ndjson": {"schema": ref("Profile")},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        **error_replies(JSON, 400, *REFUSALS),
    },
    security=TOKEN_IF_REQUIRED,
)


def by_id(path: str, param: Schema) -> list[ApiRoute]:
    """Fetch and delete of the profile a path's id finds, matched on the raw path."""
    operations = fetch_and_delete(param)
    return [
        RawPathRoute(
            path,
            fetch,
            methods=["GET"],
            context=client_named_checked_in_thread,
            operation=operations["get"],
        ),
        RawPathRoute(
            path, delete, methods=["DELETE"], context=client_named, operation=operations["delete"]
        ),
    ]


#: Fetch and delete by id: served by the short way in (web/front.py).
by_id_routes = [
    *by_id("/rest/v1/profiles/thirdPartyId/{third_party_id}", THIRD_PARTY_ID),
    *by_id("/rest/v1/profiles/marketingCloudVisitorId/{ecid}", ECID),
    *by_id("/rest/v1/profiles/{pc_id}", PC_ID),
]
routes = [
    ApiRoute(
        "/rest/v1/profiles",
        export_profiles,
        methods=["GET"],
        context=client_named,
        operation=EXPORT,
    ),
    *by_id_routes,
]
