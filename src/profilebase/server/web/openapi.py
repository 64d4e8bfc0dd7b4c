"""The OpenAPI 3.1 document served at ``/openapi.json``.

It describes every endpoint: Target's, whose shapes follow Target's
documentation, and profilebase's own, each marked ``x-profilebase-extension:
true`` and tagged "profilebase extensions". tests/test_openapi.py checks that
every route of the app is described here and nothing else is.

Every operation on a client's data declares the two token spellings as
optional security (they are needed only when the client requires
authorization); the token endpoints declare HTTP Basic.
"""

from __future__ import annotations

from typing import Any

from profilebase.ids import MAX_PC_ID_LENGTH, MAX_THIRD_PARTY_ID_LENGTH

TARGET = "Target-compatible"
EXTENSION = "profilebase extensions"
XML = "application/xml"
JSON = "application/json"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def path_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema or {"type": "string"},
        "description": description,
    }


def id_schema(longest: int) -> Schema:
    """An id as the id rule (docs/profiles.md#ids) bounds it; the rest of the rule is prose."""
    return {"type": "string", "minLength": 1, "maxLength": longest}


def query_param(name: str, description: str, schema: Schema | None = None, **extra: Any) -> Schema:
    return {
        "name": name,
        "in": "query",
        "schema": schema or {"type": "string"},
        "description": description,
        **extra,
    }


def reply(description: str, media_type: str, schema: Schema) -> Schema:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def errors(media_type: str, *statuses: int) -> dict[str, Schema]:
    schema = ref("XmlFailure") if media_type == XML else ref("JsonError")
    words = {
        400: "Malformed request",
        401: "Credentials missing where the client requires them",
        403: "Credentials wrong, expired, revoked or another client's; or the client is disabled",
        404: "Unknown client, batch or profile",
        409: "Idempotency-Key reused for another body",
        413: "Too large: the batch, the request, or the profile it would make",
        415: "A Content-Encoding other than gzip or identity",
        429: "A quota or rate is used up, or this address failed authentication too often "
        "(Retry-After says when to retry)",
        500: "Internal error; the message quotes an error id that the server log carries",
        503: "The database is unavailable or busy; nothing was changed (Retry-After says when "
        "to retry)",
        507: "The database has no room to write; nothing was changed",
    }
    # Every operation that reaches the database may meet a failure or an outage of it.
    return {str(s): reply(words[s], media_type, schema) for s in (*statuses, 500, 503)}


def operation(
    tag: str, summary: str, parameters: list[Schema], responses: dict[str, Schema], **extra: Any
) -> Schema:
    op: Schema = {
        "tags": [tag],
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
        **extra,
    }
    if tag == EXTENSION:
        op["x-profilebase-extension"] = True
    return op


#: A token, either spelling, when the client requires authorization; nothing otherwise.
TOKEN_IF_REQUIRED: list[Schema] = [{"bearer": []}, {"accessToken": []}, {}]
BASIC: list[Schema] = [{"basic": []}]
#: The refusals every operation on a client's data may answer with.
REFUSALS = (401, 403, 404, 429)

#: A client code: 1 to 64 of a-z, 0-9, `_` and `-` (errors.InvalidClientCode).
CLIENT_CODE: Schema = {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}
CLIENT = path_param("client", "The client code (tenant).", CLIENT_CODE)
#: How a route that takes its client from outside the path finds it (docs/clients.md).
CLIENT_FROM_OUTSIDE: list[Schema] = [
    query_param(
        "client",
        "The client code. Without it: the client the Host header's first label names, else "
        "the client whose organization id is imsOrgId, else the server's default_client.",
        CLIENT_CODE,
    ),
    query_param(
        "imsOrgId",
        "The Adobe organization id (…@AdobeOrg) Target's SDKs send: names the client that has "
        "it (`profilebase clients set CODE --org-id …`) when neither client= nor Host does.",
    ),
]
#: delivery.SESSION_ID: printable ASCII without space, `?`, `{`, `}` or `/`.
SESSION_ID: Schema = {"type": "string", "pattern": "^[!-.0->@-z|~]{1,128}$"}
PROFILE_API: Schema = {"type": "string", "enum": ["profile_api"]}
BATCH_ID = path_param("batch_id", "The batch id that batchUpdate returned.")


def batch_update(version: int) -> Schema:
    creates = "creates missing profiles" if version == 2 else "updates existing profiles only"
    return operation(
        TARGET,
        f"Bulk Profile Update v{version}: queue a batch= CSV body; {creates}.",
        [
            CLIENT,
            query_param(
                "dryRun",
                "Extension: validate exactly as a real batch and answer with a JSON report, "
                "writing nothing.",
                {"type": "boolean", "default": False},
                **{"x-profilebase-extension": True},
            ),
            {
                "name": "Idempotency-Key",
                "in": "header",
                "schema": {"type": "string", "maxLength": 255},
                "description": "Extension: a key already accepted for this client returns the "
                "original batch and is not applied again (kept at least 24 hours).",
                "x-profilebase-extension": True,
            },
        ],
        {
            "200": {
                "description": "Queued (XML), or the dry-run report (JSON).",
                "content": {
                    XML: {"schema": ref("XmlSubmitted")},
                    JSON: {"schema": ref("DryRunReport")},
                },
            },
            **errors(XML, 400, *REFUSALS, 409, 413, 415, 507),
        },
        security=TOKEN_IF_REQUIRED,
        requestBody={
            "required": True,
            "description": "batch= then the header (pcId or thirdPartyId, then attribute "
            "names) and one line per profile; every cell URL-encoded UTF-8. Also accepted "
            "as the multipart field `batch`, and (extension) compressed with "
            "`Content-Encoding: gzip`, the limits counting it decompressed.",
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "string"},
                    "example": "batch=thirdPartyId,tier,city\ncrm-1,gold,M%C3%BCnchen\n"
                    "crm-2,silver\n",
                },
                "multipart/form-data": {"schema": {"type": "object"}},
            },
        },
    )


def batch_status() -> Schema:
    return operation(
        TARGET,
        "Batch status: complete, incomplete or stuck; counts and failed ids with showDetails.",
        [
            CLIENT,
            query_param("batchId", "The batch id.", required=True),
            query_param(
                "showDetails",
                "true adds the counts (and, for v2, failed profiles).",
                {"type": "boolean"},
            ),
            query_param("m2Node", "Accepted and ignored (Target routing hint)."),
            query_param("mboxPC", "Accepted and ignored (Target routing hint)."),
        ],
        {"200": reply("The status.", XML, ref("XmlBatchStatus")), **errors(XML, 400, *REFUSALS)},
        security=TOKEN_IF_REQUIRED,
    )


def profile_fetch(param: Schema) -> Schema:
    return operation(
        TARGET,
        "Fetch a profile with every attribute written to it.",
        [param, *CLIENT_FROM_OUTSIDE],
        {"200": reply("The profile.", JSON, ref("Profile")), **errors(JSON, 400, *REFUSALS)},
        security=TOKEN_IF_REQUIRED,
    )


SCOPE = query_param("scope", "profile_api, the one scope profilebase issues.", PROFILE_API)


def token() -> Schema:
    scope = query_param("authorizationScope", "profile_api (or give it as scope).", PROFILE_API)
    return {
        "post": operation(
            TARGET,
            "Create the client's profile API token; the previous one is revoked (after "
            "token_grace_seconds).",
            [CLIENT, scope, SCOPE],
            {
                "201": reply("The new token.", JSON, ref("Token")),
                **errors(JSON, 400, *REFUSALS, 507),
            },
            security=BASIC,
        ),
        "get": operation(
            TARGET,
            "Retrieve the client's active token: the token, its type, scope and the seconds it "
            "has left (the server derives it again from its secret); 404 when there is none.",
            [CLIENT, scope, SCOPE],
            {
                "200": reply("The active token.", JSON, ref("Token")),
                **errors(JSON, 400, *REFUSALS),
            },
            security=BASIC,
        ),
    }


def legacy_token() -> Schema:
    return operation(
        TARGET,
        "Target Classic's token call: a new profile API token, in snake_case, with its "
        "shorter lifetime (legacy_token_ttl_seconds).",
        [*CLIENT_FROM_OUTSIDE, {**SCOPE, "required": True}],
        {
            "200": reply("The new token.", JSON, ref("LegacyToken")),
            **errors(JSON, 400, *REFUSALS),
        },
        security=BASIC,
    )


def single_update(method: str) -> Schema:
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
            **errors(XML, 400, *REFUSALS, 413, 507),
        },
        security=TOKEN_IF_REQUIRED,
        **extra,
    )


def profile_delete(param: Schema) -> Schema:
    return operation(
        EXTENSION,
        "Delete the profile this id finds, with its thirdPartyId and every linked tntId, "
        "ECID and customer id.",
        [param, *CLIENT_FROM_OUTSIDE],
        {"204": {"description": "Deleted."}, **errors(JSON, 400, *REFUSALS, 507)},
        security=TOKEN_IF_REQUIRED,
    )


def paths() -> dict[str, Schema]:
    ext = "/profilebase/v1/clients/{client}"
    rule = (
        " Percent-encode it (a `/` as %2F); see the id rule in docs/profiles.md: an id "
        "no endpoint stores is refused with 400 and the reason."
    )
    pc_id = path_param(
        "pc_id", "Target's visitor id (tntId, mboxPC)." + rule, id_schema(MAX_PC_ID_LENGTH)
    )
    third_party_id = path_param(
        "third_party_id",
        "Your own id (mbox3rdPartyId), without `+` or `/`." + rule,
        id_schema(MAX_THIRD_PARTY_ID_LENGTH),
    )
    ecid = path_param(
        "ecid",
        "An Experience Cloud ID (marketingCloudVisitorId) a page call linked to the profile.",
    )
    return {
        "/healthz": {
            "get": operation(
                TARGET,
                "Liveness: 200 while the server serves HTTP, whatever the database's state "
                "(profilebase's; Target has none).",
                [],
                {"200": reply("Up.", JSON, {"type": "object"})},
            )
        },
        "/readyz": {
            "get": operation(
                TARGET,
                "Readiness: 200 when the database answers and its schema is up to date; 503 "
                "with Retry-After otherwise (profilebase's; Target has none).",
                [],
                {
                    "200": reply("Ready.", JSON, {"type": "object"}),
                    "503": reply(
                        "The database is unreachable, or migrations are missing.",
                        JSON,
                        ref("JsonError"),
                    ),
                },
            )
        },
        "/m2/{client}/profile/batchUpdate": {"post": batch_update(1)},
        "/m2/{client}/v2/profile/batchUpdate": {"post": batch_update(2)},
        "/m2/{client}/profile/batchStatus": {"get": batch_status()},
        "/m2/{client}/v2/profile/batchStatus": {"get": batch_status()},
        "/m2/{client}/profile/update": {
            "get": single_update("get"),
            "post": single_update("post"),
        },
        "/rest/v1/delivery": {
            "post": operation(
                TARGET,
                "Delivery API, profile side: create or link the visitor's profile and apply its "
                "profileParameters; no offers are decided. No credentials, as Target's (page "
                "calls come from browsers), even for a client whose profile APIs require a "
                "token.",
                [
                    *CLIENT_FROM_OUTSIDE,
                    query_param(
                        "sessionId",
                        "1-128 printable characters, no space, ?, {, } or /.",
                        SESSION_ID,
                        required=True,
                    ),
                ],
                {
                    "200": reply("Target's envelope, no content.", JSON, ref("DeliveryResponse")),
                    **errors(JSON, 400, 403, 404, 413, 507),
                },
                requestBody={
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": ref("DeliveryRequest"),
                            "example": {
                                "id": {"thirdPartyId": "crm-1"},
                                "execute": {"pageLoad": {"profileParameters": {"tier": "gold"}}},
                            },
                        }
                    },
                },
            )
        },
        "/rest/v1/profiles": {
            "get": operation(
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
                    **errors(JSON, 400, *REFUSALS),
                },
                security=TOKEN_IF_REQUIRED,
            )
        },
        "/rest/v1/profiles/{pc_id}": {
            "get": profile_fetch(pc_id),
            "delete": profile_delete(pc_id),
        },
        "/rest/v1/profiles/thirdPartyId/{third_party_id}": {
            "get": profile_fetch(third_party_id),
            "delete": profile_delete(third_party_id),
        },
        "/rest/v1/profiles/marketingCloudVisitorId/{ecid}": {
            "get": profile_fetch(ecid),
            "delete": profile_delete(ecid),
        },
        "/{client}/target/authentication/token": token(),
        "/admin/rest/v1/authentication/token": {
            "get": legacy_token(),
            "post": legacy_token(),
        },
        "/openapi.json": {
            "get": operation(
                EXTENSION,
                "This document.",
                [],
                {"200": reply("OpenAPI 3.1.", JSON, {"type": "object"})},
            )
        },
        ext: {
            "get": operation(
                EXTENSION,
                "The client's limits, quota use and this server's extensions.",
                [CLIENT],
                {
                    "200": reply("Limits and quota.", JSON, ref("ClientInfo")),
                    **errors(JSON, *REFUSALS),
                },
                security=TOKEN_IF_REQUIRED,
            )
        },
        ext + "/batches/{batch_id}": {
            "get": operation(
                EXTENSION,
                "Batch status as JSON: Target's fields plus state, times, rate, reason.",
                [CLIENT, BATCH_ID],
                {
                    "200": reply("The status.", JSON, ref("BatchStatus")),
                    **errors(JSON, *REFUSALS),
                },
                security=TOKEN_IF_REQUIRED,
            )
        },
        ext + "/batches/{batch_id}/failures": {
            "get": operation(
                EXTENSION,
                "Failed rows: line, id, reason and original cells.",
                [
                    CLIENT,
                    BATCH_ID,
                    query_param(
                        "format",
                        "json (paged), jsonl or csv (streamed, all rows).",
                        {"type": "string", "enum": ["json", "jsonl", "csv"], "default": "json"},
                    ),
                    query_param(
                        "after", "Only rows after this line.", {"type": "integer", "default": 0}
                    ),
                    query_param(
                        "limit",
                        "Rows per JSON page (1 to 10000).",
                        {"type": "integer", "default": 1000},
                    ),
                ],
                {
                    "200": {
                        "description": "Failed rows.",
                        "content": {
                            JSON: {"schema": ref("FailurePage")},
                            "application/x-ndjson": {"schema": ref("Failure")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **errors(JSON, 400, *REFUSALS),
                },
                security=TOKEN_IF_REQUIRED,
            )
        },
        **operation_paths(ext),
    }


def operation_paths(ext: str) -> dict[str, Schema]:
    """The operator's extensions: list and cancel batches, import profiles."""
    return {
        ext + "/batches": {
            "get": operation(
                EXTENSION,
                "The client's batches whose status is kept, newest first, as JSON statuses.",
                [
                    CLIENT,
                    query_param(
                        "unfinished",
                        "true: only batches not complete yet (queued, running, paced, stuck).",
                        {"type": "boolean", "default": False},
                    ),
                    query_param(
                        "limit",
                        "At most this many (1 to 1000).",
                        {"type": "integer", "default": 50},
                    ),
                ],
                {
                    "200": reply("The batches.", JSON, ref("BatchList")),
                    **errors(JSON, 400, *REFUSALS),
                },
                security=TOKEN_IF_REQUIRED,
            )
        },
        ext + "/batches/{batch_id}/cancel": {
            "post": operation(
                EXTENSION,
                "Cancel a batch: rows not yet applied fail with reason `cancelled` and the batch "
                "completes; rows already applied stay. Cancelling it again changes nothing.",
                [CLIENT, BATCH_ID],
                {
                    "200": reply("The status after the cancel.", JSON, ref("BatchStatus")),
                    **errors(JSON, 400, *REFUSALS, 409),
                },
                security=TOKEN_IF_REQUIRED,
                requestBody={
                    "required": False,
                    "description": "Optional: who asks, recorded with the caller's address.",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"by": {"type": "string", "maxLength": 200}},
                            }
                        }
                    },
                },
            )
        },
        ext + "/imports": {
            "post": operation(
                EXTENSION,
                "Import profiles from JSON lines (what the jsonl export writes): accepted as a "
                "batch of its own (version 3) that workers apply; follow it with its status.",
                [
                    CLIENT,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                        "description": "A key already accepted for this client returns the "
                        "import first accepted under it, not applied again.",
                    },
                ],
                {
                    "202": reply("Accepted.", JSON, ref("ImportAccepted")),
                    **errors(JSON, 400, *REFUSALS, 409, 413),
                },
                security=TOKEN_IF_REQUIRED,
                requestBody={
                    "required": True,
                    "description": "One profile per line: visitorId, thirdPartyId, tntIds, "
                    "modifiedAt, profileAttributes {name: {value, modifiedAt}}.",
                    "content": {"application/x-ndjson": {"schema": ref("Profile")}},
                },
            )
        },
    }


def schemas() -> dict[str, Schema]:
    text, integer = {"type": "string"}, {"type": "integer"}
    nullable_text = {"type": ["string", "null"]}
    token = {
        "tokenType": {"const": "bearer"},
        "scope": {"const": "profile_api"},
        "expiresIn": integer,
    }
    with_parameters = {
        "type": "object",
        "properties": {"profileParameters": ref("ProfileParameters")},
    }
    mboxes = {"type": "array", "maxItems": 50, "items": with_parameters}
    failure = {
        "type": "object",
        "properties": {
            "line": integer,
            "id": text,
            "reason": text,
            "raw": text,
            "cells": {"type": "object", "additionalProperties": text},
            "extraCells": {"type": "array", "items": text},
        },
    }
    return {
        "XmlSubmitted": {
            "type": "string",
            "description": "<response><success>true</success><batchStatus>URL</batchStatus>"
            "<message>Batch submitted for processing</message></response>",
        },
        "XmlBatchStatus": {
            "type": "string",
            "description": "<response><batchId/><status/><batchSize/>[<consumedCount/>"
            "<successfulUpdates/><profilesNotFound/><failedUpdates/>][<profile><id/><status>failed</status>"
            "</profile>…]</response>",
        },
        "XmlFailure": {
            "type": "string",
            "description": "<response><success>false</success>[<batchStatus/>]"
            "<message>why</message></response>",
        },
        "XmlUpdated": {
            "type": "string",
            "description": "<response><success>true</success><pcId>tntId or empty</pcId>"
            "<message>Request successfully submitted</message></response>",
        },
        "JsonError": {"type": "object", "properties": {"status": integer, "message": text}},
        "Profile": {
            "type": "object",
            "properties": {
                "client": text,
                "visitorId": text,
                "modifiedAt": text,
                "profileAttributes": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "value": text,
                            "modifiedAt": text,
                            "writtenBy": {
                                "type": "object",
                                "description": "Extension: the write the value came from.",
                                "properties": {
                                    "kind": {"enum": ["batch", "update", "delivery"]},
                                    "id": text,
                                    "line": integer,
                                },
                            },
                        },
                    },
                },
                "thirdPartyId": {**text, "description": "Export only: the profile's own id."},
                "tntIds": {
                    "type": "array",
                    "items": text,
                    "description": "Export only: the tntIds of the profile.",
                },
                "marketingCloudVisitorIds": {
                    "type": "array",
                    "items": text,
                    "description": "Export only: the Experience Cloud IDs linked to the profile.",
                },
                "customerIds": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"integrationCode": text, "id": text},
                    },
                    "description": "Export only: the customerIds linked to the profile.",
                },
            },
        },
        "DeliveryRequest": {
            "type": "object",
            "description": "Target's request; only the parts that touch profiles are read.",
            "properties": {
                "requestId": text,
                "id": ref("VisitorId"),
                "execute": {
                    "type": "object",
                    "properties": {"pageLoad": with_parameters, "mboxes": mboxes},
                },
                "prefetch": {
                    "type": "object",
                    "properties": {
                        "pageLoad": with_parameters,
                        "views": {"type": "array", "items": with_parameters},
                        "mboxes": mboxes,
                    },
                },
                "notifications": {"type": "array", "items": with_parameters},
            },
        },
        "ProfileParameters": {
            "type": "object",
            "description": "Attributes to set: names without `profile.`; an empty value "
            "changes nothing.",
            "maxProperties": 50,
            "propertyNames": {"minLength": 1, "maxLength": 128},
            "additionalProperties": {"type": ["string", "number", "boolean"], "maxLength": 256},
        },
        "DeliveryResponse": {
            "type": "object",
            "properties": {
                "status": integer,
                "requestId": text,
                "client": text,
                "id": ref("VisitorId"),
                "execute": {"type": "object"},
                "prefetch": {"type": "object"},
                "notifications": {"type": "array", "items": {"type": "object"}},
            },
        },
        "VisitorId": {
            "type": "object",
            "properties": {
                "tntId": id_schema(MAX_PC_ID_LENGTH),
                "thirdPartyId": id_schema(MAX_THIRD_PARTY_ID_LENGTH),
                "marketingCloudVisitorId": {
                    **text,
                    "maxLength": 128,
                    "description": "Linked to the visitor's profile; fetch finds it by this id.",
                },
                "customerIds": {
                    "type": "array",
                    "maxItems": 50,
                    "description": "Each {id, integrationCode} is linked to the visitor's profile.",
                    "items": {
                        "type": "object",
                        "required": ["id", "integrationCode"],
                        "properties": {
                            "id": {**text, "maxLength": 128},
                            "integrationCode": {**text, "maxLength": 50},
                            "authenticatedState": {
                                "enum": ["unknown", "authenticated", "logged_out"]
                            },
                        },
                    },
                },
            },
        },
        "Limits": {
            "type": "object",
            "properties": {
                "maxBatchBytes": integer,
                "maxBatchRows": integer,
                "rowsPerDay": integer,
                "maxProfileBytes": integer,
                "maxUpdateUrlBytes": integer,
                "maxUpdateBodyBytes": integer,
                "updatesPerDay": integer,
                "maxDeliveryBytes": integer,
                "profileExpiryDays": {"type": "number", "description": "0: never"},
                "tokenTtlSeconds": integer,
                "bulkRequestsPerMinute": integer,
                "ingestRowsPerSecond": integer,
                "businessHours": text,
            },
        },
        "Token": {"type": "object", "properties": {"accessToken": text, **token}},
        "LegacyToken": {
            "type": "object",
            "properties": {
                "access_token": text,
                "scope": {"const": "profile_api"},
                "expires_in": integer,
                "token_type": {"const": "bearer"},
            },
        },
        "ClientInfo": {
            "type": "object",
            "properties": {
                "server": text,
                "version": text,
                "client": text,
                "limits": ref("Limits"),
                "quota": {
                    "type": "object",
                    "properties": {
                        "rowsPerDay": integer,
                        "usedLast24h": integer,
                        "remaining": integer,
                    },
                },
                "extensions": {"type": "object"},
            },
        },
        "BatchStatus": {
            "type": "object",
            "properties": {
                "batchId": text,
                "client": text,
                "version": integer,
                "key": text,
                "attributes": {"type": "array", "items": text},
                "status": {"enum": ["complete", "incomplete", "stuck"]},
                "state": {"enum": ["queued", "processing", "throttled", "complete", "stuck"]},
                "reason": nullable_text,
                "throttledUntil": nullable_text,
                "batchSize": integer,
                "consumedCount": integer,
                "successfulUpdates": integer,
                "profilesNotFound": integer,
                "failedUpdates": integer,
                "acceptedAt": text,
                "startedAt": nullable_text,
                "finishedAt": nullable_text,
                "lastProgressAt": text,
                "rowsPerSecond": {"type": ["number", "null"]},
                "cancelled": {
                    "type": ["object", "null"],
                    "properties": {"at": text, "by": text},
                },
                "rowsCancelled": integer,
                "alreadyCancelled": {"type": "boolean"},
                "units": {"type": "object"},
                "links": {"type": "object"},
            },
        },
        "ImportAccepted": {
            "type": "object",
            "properties": {"batchId": text, "rows": integer, "batchStatus": text},
        },
        "BatchList": {
            "type": "object",
            "properties": {
                "client": text,
                "batches": {"type": "array", "items": ref("BatchStatus")},
            },
        },
        "Failure": failure,
        "FailurePage": {
            "type": "object",
            "properties": {
                "batchId": text,
                "columns": {"type": "array", "items": text},
                "failedUpdates": integer,
                "failures": {"type": "array", "items": ref("Failure")},
                "nextAfter": {"type": ["integer", "null"]},
            },
        },
        "DryRunReport": {
            "type": "object",
            "properties": {
                "dryRun": {"const": True},
                "wouldBeAccepted": {"type": "boolean"},
                "version": integer,
                "key": text,
                "attributes": {"type": "array", "items": text},
                "batchSize": integer,
                "wouldSucceed": integer,
                "wouldFail": integer,
                "failures": {"type": "array", "items": failure},
                "failuresListed": integer,
                "quota": {"type": "object"},
                "limits": ref("Limits"),
            },
        },
    }


def document(version: str) -> Schema:
    """The whole document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "profilebase",
            "version": version,
            "description": "Adobe Target's profile APIs, self-hosted. Operations tagged "
            f"'{EXTENSION}' (x-profilebase-extension: true) are profilebase's own; Target "
            "does not have them.",
        },
        "tags": [
            {"name": TARGET, "description": "Same paths and shapes as Adobe Target."},
            {"name": EXTENSION, "description": "profilebase's own additions."},
        ],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "accessToken": {"type": "apiKey", "in": "header", "name": "access_token"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }
