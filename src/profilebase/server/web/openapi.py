"""The OpenAPI 3.1 document served at ``/openapi.json``, generated from the routes.

Each API route is an ``ApiRoute`` that declares, where it is defined, its operation
(summary, parameters, body, replies, security, tag) and the context its handler needs
(``web.context``: whether it serves a client, and how it finds it); ``document`` walks the app's
routes and gathers them, so the document cannot drift from what is served. Routes
that are not API (the dashboard, ``/metrics``) are plain ``Route``s with
``include_in_schema=False`` and stay out. This module holds the builders those
declarations use and the named schemas they share (``components/schemas``).

Operations tagged ``EXTENSION`` are profilebase's own and marked
``x-profilebase-extension: true``. Every operation on a client's data declares the two
token spellings as optional security (they are needed only when the client requires
authorization); the token endpoints declare HTTP Basic.

Handlers read the query parameters they document with ``query(request, name)``: it
refuses a name the route's operation does not declare, and notes each one read, so
that tests/test_openapi.py can prove every documented parameter is read.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from profilebase.ids import MAX_PC_ID_LENGTH, MAX_THIRD_PARTY_ID_LENGTH

TARGET = "Target-compatible"
EXTENSION = "profilebase extensions"
XML = "application/xml"
JSON = "application/json"

Schema = dict[str, Any]
#: What a route's ``context`` gives its handler.
C = TypeVar("C")


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


def error_replies(media_type: str, *statuses: int) -> dict[str, Schema]:
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
BATCH_ID = path_param("batch_id", "The batch id that batchUpdate returned.")


#: A parameter that is accepted and deliberately ignored (Target's routing hints): the
#: test that every documented parameter is read passes it over.
IGNORED = "x-profilebase-ignored"
#: Where ``query`` notes the names a request's handler read (tests look at it).
READ_KEY = "profilebase.query_read"
#: The methods Starlette answers for GET without a handler of their own.
SAME_AS = {"HEAD": "GET"}


class ApiRoute(Route):
    """A route of the API: its handler, the context the handler needs, and the OpenAPI
    operation of each of its methods.

    ``context`` builds what the handler gets beside the request, before it runs (one of
    ``web.context``'s: the app's context, or a client's, found and authorized);
    ``handler(request, context(request))`` answers. ``operation`` is one operation for
    every method of the route; ``operations`` one per lower-case method name, for routes
    whose methods differ (a body on POST only).
    """

    def __init__(
        self,
        path: str,
        handler: Callable[[Request, C], Awaitable[Response]],
        *,
        methods: Sequence[str],
        context: Callable[[Request], Awaitable[C]],
        operation: Schema | None = None,
        operations: Mapping[str, Schema] | None = None,
    ) -> None:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            return await handler(request, await context(request))

        super().__init__(path, endpoint, methods=list(methods))
        self.handler = handler
        self.context = context
        if (operation is None) == (operations is None):
            raise TypeError("give an ApiRoute either operation= or operations=")
        self.operations: dict[str, Schema] = (
            {method.lower(): operation for method in methods}
            if operation is not None
            else dict(operations or {})
        )
        if set(self.operations) != {method.lower() for method in methods}:
            raise TypeError(f"{path}: one operation per method {sorted(methods)}")
        self.query_names: dict[str, frozenset[str]] = {
            method.upper(): frozenset(
                p["name"] for p in op.get("parameters", []) if p["in"] == "query"
            )
            for method, op in self.operations.items()
        }


class UndeclaredParameter(RuntimeError):
    """A handler read a query parameter its route's operation does not document."""


@overload
def query(request: Request, name: str) -> str | None: ...
@overload
def query(request: Request, name: str, default: str) -> str: ...
def query(request: Request, name: str, default: str | None = None) -> str | None:
    """The query parameter ``name`` as sent, else ``default``; ``name`` must be one the route's
    operation declares, so that the document lists every parameter a handler reads."""
    declared(request, name)
    return query_params(request).get(name, default)


#: Query strings parsed lately (``query_params``); past ``QUERIES_MOST`` it starts again
#: empty. Shared by every thread (a request's client may be found in a worker thread): each
#: dict operation is atomic, and a race at worst clears it once more.
_QUERIES: dict[bytes, QueryParams] = {}
QUERIES_MOST = 256
#: Longest query string kept parsed: the repeated ones (``?client=acme``) are short, and
#: the cache stays under about a megabyte whatever the strings hold.
QUERY_KEPT_BYTES = 128


def query_params(request: Request) -> QueryParams:
    """``request.query_params``, parsed once per distinct short query string: most calls of a
    site send the same one (a fetch's ``?client=acme``), and parsing is most of reading it."""
    raw: bytes = request.scope["query_string"]
    parsed = _QUERIES.get(raw)
    if parsed is None:
        parsed = request.query_params
        if len(raw) <= QUERY_KEPT_BYTES:
            if len(_QUERIES) >= QUERIES_MOST:
                _QUERIES.clear()
            _QUERIES[raw] = parsed
    return parsed


def declared(request: Request, name: str) -> None:
    """Check the route's operation declares the query parameter ``name``; note it read.

    ``query`` calls it; a handler that takes parameters from elsewhere too (the single
    update reads the query string and the form body as one) calls it for each it reads.
    """
    route = request.scope.get("route")
    method = SAME_AS.get(request.method, request.method)
    names = route.query_names.get(method) if isinstance(route, ApiRoute) else None
    if names is None or name not in names:
        raise UndeclaredParameter(f"{request.url.path} reads {name!r}, which it does not declare")
    request.scope.setdefault(READ_KEY, set()).add(name)


def paths(routes: Sequence[BaseRoute]) -> dict[str, Schema]:
    """The operations the API routes declare, by path and method, in the routes' order."""
    found: dict[str, Schema] = {}
    for route in routes:
        if isinstance(route, ApiRoute) and route.include_in_schema:
            found.setdefault(route.path, {}).update(route.operations)
    return found


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


def document(routes: Sequence[BaseRoute], version: str) -> Schema:
    """The whole document for an app's ``routes``."""
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
        "paths": paths(routes),
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "accessToken": {"type": "apiKey", "in": "header", "name": "access_token"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }
