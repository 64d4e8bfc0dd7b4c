"""profilebase's own endpoints, beyond Target's API, under ``/profilebase/v1``.

Target's paths stay exactly Target's; everything profilebase adds lives in this
namespace (plus ``/openapi.json``, and the ``dryRun`` flag and
``Idempotency-Key`` header of ``batchUpdate``, handled in ``bulk.py``), so a
client can tell the two apart and a pipeline written for Target never depends
on them by accident:

- ``GET /profilebase/v1/clients/{client}``: the client's limits and quota, and
  which extensions this server has (clients use it to detect profilebase);
- ``GET /profilebase/v1/clients/{client}/batches/{batchId}``: batch status as
  JSON, with the state, times, rate and, when stuck or throttled, the reason;
- ``GET /profilebase/v1/clients/{client}/batches/{batchId}/failures``: the
  failed rows with line, id, reason and original cells, paged as JSON or
  streamed as JSONL or CSV;
- ``GET /profilebase/v1/clients/{client}/batches``: the client's batches,
  newest first, as JSON statuses (``?unfinished=true``: only those not done);
- ``POST /profilebase/v1/clients/{client}/batches/{batchId}/cancel``: stop a
  batch; rows not yet applied fail with reason ``cancelled``;
- ``POST /profilebase/v1/clients/{client}/imports``: import profiles from JSON
  lines (``profile_import.py``), as a batch of its own.

Each of them takes its client from the path (``web.context.client_in_path``), as
Target's routes do: a client that requires authorization needs its own token
here too, and another client's batch ids are "not found".
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from profilebase import __version__, batchfile
from profilebase.errors import BadRequest, BatchTooLarge, NotFound
from profilebase.models import Batch, FailedRow, iso_ms, iso_ms_of
from profilebase.server import profile_import
from profilebase.server.batches import rows_per_second, standing
from profilebase.server.dry_run import limits_json
from profilebase.server.quota import DAY_MS
from profilebase.server.storage.base import Store, UnitsSummary
from profilebase.server.storage.batch_control import Cancellation
from profilebase.server.web import compression, openapi
from profilebase.server.web.bulk import idempotency_key
from profilebase.server.web.context import (
    ClientContext,
    Context,
    address_of,
    app_context,
    client_in_path,
    json_body,
    presented_tokens,
    read_body,
)
from profilebase.server.web.openapi import (
    BATCH_ID,
    CLIENT,
    EXTENSION,
    JSON,
    REFUSALS,
    TOKEN_IF_REQUIRED,
    ApiRoute,
    error_replies,
    operation,
    query,
    query_param,
    ref,
    reply,
)
from profilebase.server.web.responses import JsonResponse

PREFIX = "/profilebase/v1"
#: Most batches one list returns.
MAX_LISTED = 1000
#: Batches listed when ``limit`` is not given.
LISTED = 50
#: A cancel request's body is a small JSON object at most.
MAX_CANCEL_BODY = 4096
MAX_BY = 200
PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
STREAM_PAGE = 5000


async def client_info(request: Request, context: ClientContext) -> Response:
    """The client's limits and quota use, and the extensions this server offers."""
    client, limits = context.client, context.limits
    used = await run_in_threadpool(
        context.store.rows_accepted_since, client.id, context.clock() - DAY_MS + 1
    )
    return JsonResponse(
        {
            "server": "profilebase",
            "version": __version__,
            "client": client.code,
            "limits": limits_json(limits),
            "quota": {
                "rowsPerDay": limits.rows_per_day,
                "usedLast24h": used,
                "remaining": max(0, limits.rows_per_day - used),
            },
            "extensions": {
                "batchStatus": f"{PREFIX}/clients/{client.code}/batches/{{batchId}}",
                "failures": f"{PREFIX}/clients/{client.code}/batches/{{batchId}}/failures",
                "batchList": f"{PREFIX}/clients/{client.code}/batches",
                "cancel": f"{PREFIX}/clients/{client.code}/batches/{{batchId}}/cancel",
                "profileImport": f"{PREFIX}/clients/{client.code}/imports",
                "profileImportGzip": True,
                "dryRun": True,
                "idempotencyKey": True,
                "profileExport": f"/rest/v1/profiles?client={client.code}&format=jsonl",
                "profileDelete": True,
                "writtenBy": True,
            },
        }
    )


async def find_batch(request: Request, context: ClientContext) -> Batch:
    """The client's batch the path names (404 if it has none)."""
    client = context.client
    batch_id = request.path_params["batch_id"]
    batch = await run_in_threadpool(context.store.get_batch, client.id, batch_id)
    if batch is None:
        raise NotFound(
            f"No batch {batch_id!r} for client {client.code!r}: check the batch id, or the "
            "status has expired (statuses are kept "
            f"{context.settings.status_retention_days:g} days)."
        )
    return batch


def status_json(
    request: Request,
    context: ClientContext,
    batch: Batch,
    units: UnitsSummary,
    now: int,
    cancellation: Cancellation | None = None,
) -> dict[str, Any]:
    stuck_after = context.settings.stuck_after_seconds
    where = standing(batch, units, now, stuck_after, context.limits)
    base = str(request.base_url).rstrip("/")
    v2 = "/v2" if batch.version >= 2 else ""
    counts = batch.counts
    return {
        "batchId": batch.batch_id,
        "client": batch.client_code,
        "version": batch.version,
        "key": str(batch.key_kind),
        "attributes": list(batch.names),
        "status": where.state.target_status,
        "state": str(where.state),
        "reason": where.reason,
        "throttledUntil": None if where.until is None else iso_ms_of(where.until),
        "batchSize": batch.batch_size,
        "consumedCount": counts.consumed,
        "successfulUpdates": counts.successful,
        "profilesNotFound": counts.not_found,
        "failedUpdates": counts.failed,
        "acceptedAt": iso_ms(batch.accepted_at),
        "startedAt": None if batch.started_at is None else iso_ms(batch.started_at),
        "finishedAt": None if batch.finished_at is None else iso_ms(batch.finished_at),
        "lastProgressAt": iso_ms(batch.last_progress_at),
        "rowsPerSecond": rows_per_second(batch, now),
        "cancelled": None
        if cancellation is None
        else {"at": iso_ms(cancellation.at), "by": cancellation.by},
        "units": {
            "total": batch.units_total,
            "done": units.done,
            "running": units.running,
            "pending": units.pending,
        },
        "links": {
            "failures": f"{base}{PREFIX}/clients/{batch.client_code}/batches/"
            f"{batch.batch_id}/failures",
            "batchStatus": f"{base}/m2/{batch.client_code}{v2}/profile/batchStatus"
            f"?batchId={batch.batch_id}",
        },
    }


async def batch_status(request: Request, context: ClientContext) -> Response:
    """JSON batch status: everything Target's XML has, plus state, times, rate and reason."""
    batch = await find_batch(request, context)
    return JsonResponse(await full_status(request, context, batch))


async def full_status(request: Request, context: ClientContext, batch: Batch) -> dict[str, Any]:
    """The JSON status of one batch, its units and cancellation read now."""
    store = context.store
    now = context.clock()
    units = await run_in_threadpool(store.units_summary, batch.seq, now)
    cancellation = await run_in_threadpool(store.batch_cancellation, batch.seq)
    return status_json(request, context, batch, units, now, cancellation)


async def list_batches(request: Request, context: ClientContext) -> Response:
    """The client's batches, newest first: ``limit`` (1-1000, default 50) and, with
    ``unfinished=true``, only those not complete yet."""
    client = context.client
    limit = int_param(request, "limit", LISTED, 1, MAX_LISTED)
    unfinished = bool_param(request, "unfinished")
    listed = await run_in_threadpool(context.store.batch_listings, client.id, limit, unfinished)
    return JsonResponse(
        {
            "client": client.code,
            "batches": [await full_status(request, context, item.batch) for item in listed],
        }
    )


def bool_param(request: Request, name: str) -> bool:
    raw = query(request, name, "false").strip().lower()
    if raw not in {"true", "false"}:
        raise BadRequest(f"The {name} parameter must be true or false, got {raw!r}.")
    return raw == "true"


async def cancel_batch(request: Request, context: ClientContext) -> Response:
    """Stop a batch: rows not yet applied fail with reason ``cancelled``; nothing applied is
    undone. The JSON body may say who asks (``{"by": "alice"}``); the server adds the
    caller's address and, if one was sent, the token's last four characters."""
    client, store = context.client, context.store
    batch = await find_batch(request, context)
    body = await read_body(request, MAX_CANCEL_BODY, "a cancel request's body")
    by = caller(request, requested_by(body))
    outcome = await run_in_threadpool(
        store.cancel_batch, client.id, batch.batch_id, by, context.clock()
    )
    if outcome is None:  # purged in between
        raise NotFound(f"No batch {batch.batch_id!r} for client {client.code!r}.")
    fresh = await run_in_threadpool(store.get_batch, client.id, batch.batch_id)
    status = await full_status(request, context, fresh or batch)
    status["rowsCancelled"] = outcome.rows_cancelled
    status["alreadyCancelled"] = outcome.already
    return JsonResponse(status)


async def import_profiles(request: Request, context: ClientContext) -> Response:
    """Accept JSON lines of profiles as an import (a batch of version 3): 202 with its batch
    id; workers apply it. Within the client's batch limits and quotas; an
    ``Idempotency-Key`` and ``Content-Encoding: gzip`` work as on ``batchUpdate`` (the
    limits count the body decompressed)."""
    client, limits = context.client, context.limits
    key = idempotency_key(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) >= limits.max_batch_bytes:
        raise BatchTooLarge(
            f"The import is {int(declared):,} bytes; one request must be smaller than "
            f"{limits.max_batch_bytes:,} bytes (max_batch_bytes). Send the file in parts "
            "(profilebase import does)."
        )
    coding = compression.content_coding(request.headers.get("content-encoding", ""))
    body: AsyncIterator[bytes] = request.stream()
    if coding == compression.GZIP:
        body = compression.gunzip(body, limits.max_batch_bytes)
    with compression.sizes_decompressed(coding):
        intake = await profile_import.read(
            body, limits, context.settings.unit_rows, digest=key is not None
        )
    _, batch_id = await run_in_threadpool(
        profile_import.accept, context.store, client, intake, limits, context.clock(), key
    )
    base = str(request.base_url).rstrip("/")
    return JsonResponse(
        {
            "batchId": batch_id,
            "rows": intake.rows,
            "batchStatus": f"{base}{PREFIX}/clients/{client.code}/batches/{batch_id}",
        },
        status_code=202,
    )


def requested_by(body: bytes) -> str:
    """The ``by`` of a cancel request's JSON body ("" when there is no body)."""
    if not body.strip():
        return ""
    document = json_body(
        body, 'The body of a cancel request must be JSON, e.g. {"by": "alice"}, or empty.'
    )
    if not isinstance(document, dict):
        raise BadRequest('The body of a cancel request must be a JSON object: {"by": "alice"}.')
    by = document.get("by", "")
    if not isinstance(by, str) or len(by) > MAX_BY or not by.isprintable():
        raise BadRequest(
            f'"by" must be printable text of at most {MAX_BY} characters: who asks to cancel.'
        )
    return by.strip()


def caller(request: Request, by: str) -> str:
    """Who cancelled, as recorded: what the caller said, its address and token."""
    shown = [f", token ...{token.value[-4:]}" for token in presented_tokens(request)]
    seen = f"API from {address_of(request)}" + "".join(shown)
    return f"{by} ({seen})" if by else seen


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = query(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"The {name} parameter must be a whole number, got {raw!r}.") from None
    if not low <= value <= high:
        raise BadRequest(f"The {name} parameter must be between {low} and {high}, got {value}.")
    return value


def columns_of(batch: Batch) -> list[str]:
    return [str(batch.key_kind), *batch.names]


def cells_of(row: FailedRow) -> list[str]:
    """The row's original cells, each decoded if it can be (as it was sent otherwise)."""
    if not row.raw:
        return []
    cells = []
    for raw in row.raw.split(","):
        try:
            cells.append(batchfile.decode_cell(raw.encode("utf-8")))
        except batchfile.CellError:
            cells.append(raw)
    return cells


def failure_json(row: FailedRow, columns: list[str]) -> dict[str, Any]:
    cells = cells_of(row)
    return {
        "line": row.line,
        "id": row.id,
        "reason": row.reason,
        "cells": dict(zip(columns, cells, strict=False)),
        "extraCells": cells[len(columns) :],
        "raw": row.raw,
    }


def all_failures(store: Store, batch_seq: int, after: int) -> Iterator[FailedRow]:
    """Every failed row after line ``after``, read page by page."""
    while True:
        page = store.failed_rows(batch_seq, after, STREAM_PAGE)
        yield from page
        if len(page) < STREAM_PAGE:
            return
        after = page[-1].line


def jsonl_lines(rows: Iterator[FailedRow], columns: list[str]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(failure_json(row, columns), ensure_ascii=False) + "\n"


def csv_lines(rows: Iterator[FailedRow], columns: list[str]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["line", "id", "reason", *columns])
    for row in rows:
        writer.writerow([row.line, row.id, row.reason, *cells_of(row)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


async def failures(request: Request, context: ClientContext) -> Response:
    """Failed rows: a JSON page (``after``, ``limit``), or all of them as JSONL or CSV."""
    batch = await find_batch(request, context)
    store = context.store
    after = int_param(request, "after", 0, 0, 10**12)
    form = query(request, "format", "json")
    columns = columns_of(batch)
    if form == "jsonl":
        rows = all_failures(store, batch.seq, after)
        return StreamingResponse(jsonl_lines(rows, columns), media_type="application/x-ndjson")
    if form == "csv":
        rows = all_failures(store, batch.seq, after)
        return StreamingResponse(csv_lines(rows, columns), media_type="text/csv; charset=utf-8")
    if form != "json":
        raise BadRequest(f"The format parameter must be json, jsonl or csv, got {form!r}.")
    limit = int_param(request, "limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
    page = await run_in_threadpool(store.failed_rows, batch.seq, after, limit)
    next_after = page[-1].line if len(page) == limit else None
    return JsonResponse(
        {
            "batchId": batch.batch_id,
            "columns": columns,
            "failedUpdates": batch.counts.failed,
            "failures": [failure_json(row, columns) for row in page],
            "nextAfter": next_after,
        }
    )


async def openapi_document(request: Request, context: Context) -> Response:
    """The OpenAPI description of every endpoint, Target's and profilebase's own."""
    return JsonResponse(openapi.document(request.app.routes, __version__))


DOCUMENT = operation(
    EXTENSION,
    "This document.",
    [],
    {"200": reply("OpenAPI 3.1.", JSON, {"type": "object"})},
)
CLIENT_INFO = operation(
    EXTENSION,
    "The client's limits, quota use and this server's extensions.",
    [CLIENT],
    {
        "200": reply("Limits and quota.", JSON, ref("ClientInfo")),
        **error_replies(JSON, *REFUSALS),
    },
    security=TOKEN_IF_REQUIRED,
)
STATUS = operation(
    EXTENSION,
    "Batch status as JSON: Target's fields plus state, times, rate, reason.",
    [CLIENT, BATCH_ID],
    {
        "200": reply("The status.", JSON, ref("BatchStatus")),
        **error_replies(JSON, *REFUSALS),
    },
    security=TOKEN_IF_REQUIRED,
)
FAILURES = operation(
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
        query_param("after", "Only rows after this line.", {"type": "integer", "default": 0}),
        query_param(
            "limit",
            f"Rows per JSON page (1 to {MAX_PAGE_SIZE}).",
            {"type": "integer", "default": PAGE_SIZE, "minimum": 1, "maximum": MAX_PAGE_SIZE},
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
        **error_replies(JSON, 400, *REFUSALS),
    },
    security=TOKEN_IF_REQUIRED,
)
LIST = operation(
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
            f"At most this many (1 to {MAX_LISTED}).",
            {"type": "integer", "default": LISTED, "minimum": 1, "maximum": MAX_LISTED},
        ),
    ],
    {
        "200": reply("The batches.", JSON, ref("BatchList")),
        **error_replies(JSON, 400, *REFUSALS),
    },
    security=TOKEN_IF_REQUIRED,
)
CANCEL = operation(
    EXTENSION,
    "Cancel a batch: rows not yet applied fail with reason `cancelled` and the batch "
    "completes; rows already applied stay. Cancelling it again changes nothing.",
    [CLIENT, BATCH_ID],
    {
        "200": reply("The status after the cancel.", JSON, ref("BatchStatus")),
        **error_replies(JSON, 400, *REFUSALS, 409, 413),
    },
    security=TOKEN_IF_REQUIRED,
    requestBody={
        "required": False,
        "description": "Optional: who asks, recorded with the caller's address.",
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "properties": {"by": {"type": "string", "maxLength": MAX_BY}},
                }
            }
        },
    },
)
IMPORT = operation(
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
        **error_replies(JSON, 400, *REFUSALS, 409, 413),
    },
    security=TOKEN_IF_REQUIRED,
    requestBody={
        "required": True,
        "description": "One profile per line: visitorId, thirdPartyId, tntIds, "
        "modifiedAt, profileAttributes {name: {value, modifiedAt}}.",
        "content": {"application/x-ndjson": {"schema": ref("Profile")}},
    },
)

routes = [
    ApiRoute(
        "/openapi.json",
        openapi_document,
        methods=["GET"],
        context=app_context,
        operation=DOCUMENT,
    ),
    ApiRoute(
        PREFIX + "/clients/{client}",
        client_info,
        methods=["GET"],
        context=client_in_path,
        operation=CLIENT_INFO,
    ),
    ApiRoute(
        PREFIX + "/clients/{client}/batches",
        list_batches,
        methods=["GET"],
        context=client_in_path,
        operation=LIST,
    ),
    ApiRoute(
        PREFIX + "/clients/{client}/batches/{batch_id}",
        batch_status,
        methods=["GET"],
        context=client_in_path,
        operation=STATUS,
    ),
    ApiRoute(
        PREFIX + "/clients/{client}/batches/{batch_id}/cancel",
        cancel_batch,
        methods=["POST"],
        context=client_in_path,
        operation=CANCEL,
    ),
    ApiRoute(
        PREFIX + "/clients/{client}/batches/{batch_id}/failures",
        failures,
        methods=["GET"],
        context=client_in_path,
        operation=FAILURES,
    ),
    ApiRoute(
        PREFIX + "/clients/{client}/imports",
        import_profiles,
        methods=["POST"],
        context=client_in_path,
        operation=IMPORT,
    ),
]
