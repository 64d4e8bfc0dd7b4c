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
  streamed as JSONL or CSV.

Each of them resolves its client with ``web.context.resolve_client``, as
Target's routes do: a client that requires authorization needs its own token
here too, and another client's batch ids are "not found".
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from profilebase import __version__, batchfile
from profilebase.config import client_limits
from profilebase.dry_run import limits_json
from profilebase.errors import BadRequest, NotFound
from profilebase.models import Batch, BatchState, Client, FailedRow, Limits, from_ms, iso_ms
from profilebase.storage.base import Store, UnitsSummary
from profilebase.storage.quota import DAY_MS
from profilebase.web import openapi
from profilebase.web.bulk import effective_state
from profilebase.web.context import clock_of, resolve_client, settings_of, store_of

PREFIX = "/profilebase/v1"
PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
STREAM_PAGE = 5000


async def client_info(request: Request) -> Response:
    """The client's limits and quota use, and the extensions this server offers."""
    client = await resolve_client(request)
    limits = client_limits(settings_of(request), client.limits)
    used = await run_in_threadpool(
        store_of(request).rows_accepted_since, client.id, clock_of(request)() - DAY_MS + 1
    )
    return JSONResponse(
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
                "dryRun": True,
                "idempotencyKey": True,
                "profileExport": f"/rest/v1/profiles?client={client.code}&format=jsonl",
                "profileDelete": True,
                "writtenBy": True,
            },
        }
    )


async def find_batch(request: Request) -> tuple[Client, Batch]:
    client = await resolve_client(request)
    batch_id = request.path_params["batch_id"]
    batch = await run_in_threadpool(store_of(request).get_batch, client.id, batch_id)
    if batch is None:
        raise NotFound(
            f"No batch {batch_id!r} for client {client.code!r}: check the batch id, or the "
            "status has expired (statuses are kept "
            f"{settings_of(request).status_retention_days:g} days)."
        )
    return client, batch


@dataclass(frozen=True)
class Standing:
    """A batch's state in the extension's five words, the reason where one helps, and,
    for a throttled batch, when it may go on (ms)."""

    state: BatchState
    reason: str | None = None
    until: int | None = None


def extended_state(
    batch: Batch, units: UnitsSummary, now: int, stuck_after_seconds: float, limits: Limits
) -> Standing:
    """Where the batch stands, judged with its client's ``limits``.

    1. Complete is complete.
    2. Throttled by pacing: the client's ``ingest_rows_per_second`` applies now and
       its next unit waits until ``throttled_until`` (``bulk.effective_state``, which
       also keeps such a batch from counting as stuck).
    3. Stuck follows the rule of Target's batchStatus (no progress for
       ``stuck_after_seconds``); the reason is the last error, or that no worker ran.
    4. Throttled by a retry: nothing runs and a unit waits for its retry after a failure
       ("waiting: " and why).
    5. Queued (with the work ahead of it) or processing.
    """
    if batch.state is BatchState.COMPLETE:
        return Standing(BatchState.COMPLETE)
    state = effective_state(batch, now, stuck_after_seconds, limits)
    if state is BatchState.THROTTLED and batch.throttled_until is not None:
        until = int(batch.throttled_until.timestamp() * 1000)
        return Standing(
            BatchState.THROTTLED,
            f"client {batch.client_code!r} is paced to {limits.ingest_rate(from_ms(now)):,} "
            f"rows per second (ingest_rows_per_second) during {limits.business_hours!r} "
            f"(business_hours); its next unit may start at {iso_ms_of(until)}",
            until,
        )
    if state is BatchState.STUCK:
        if units.last_error:
            return Standing(
                BatchState.STUCK,
                f"no progress for over {stuck_after_seconds:g} s; "
                f"the last attempt failed: {units.last_error}",
            )
        return Standing(
            BatchState.STUCK,
            f"no progress for over {stuck_after_seconds:g} s and no error recorded: is a "
            "worker running (profilebase serve --workers 1 or more)?",
        )
    if units.retrying and not units.running:
        # The worker stores a sentence for users (docs/design.md#when-applying-a-unit-fails).
        retry_at = (
            "" if units.retry_at_ms is None else f"; next attempt at {iso_ms_of(units.retry_at_ms)}"
        )
        return Standing(
            BatchState.THROTTLED,
            f"waiting: {units.last_error or 'an attempt failed'}{retry_at}",
            units.retry_at_ms,
        )
    if batch.state is BatchState.QUEUED:
        if units.units_ahead:
            return Standing(
                BatchState.QUEUED,
                f"{units.units_ahead} unit(s) of earlier batches are ahead of this one",
            )
        return Standing(BatchState.QUEUED)
    return Standing(BatchState.PROCESSING)


def iso_ms_of(ms: int) -> str:
    return iso_ms(from_ms(ms))


def rows_per_second(batch: Batch, now: int) -> float | None:
    """Rows consumed per second since the first unit was claimed (to the finish, if any)."""
    if batch.started_at is None or not batch.counts.consumed:
        return None
    end = batch.finished_at.timestamp() if batch.finished_at else now / 1000
    elapsed = end - batch.started_at.timestamp()
    if elapsed <= 0:
        return None
    return round(batch.counts.consumed / elapsed, 1)


def status_json(
    request: Request, batch: Batch, units: UnitsSummary, limits: Limits, now: int
) -> dict[str, Any]:
    standing = extended_state(batch, units, now, settings_of(request).stuck_after_seconds, limits)
    base = str(request.base_url).rstrip("/")
    v2 = "/v2" if batch.version >= 2 else ""
    counts = batch.counts
    return {
        "batchId": batch.batch_id,
        "client": batch.client_code,
        "version": batch.version,
        "key": str(batch.key_kind),
        "attributes": list(batch.names),
        "status": standing.state.target_status,
        "state": str(standing.state),
        "reason": standing.reason,
        "throttledUntil": None if standing.until is None else iso_ms_of(standing.until),
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


async def batch_status(request: Request) -> Response:
    """JSON batch status: everything Target's XML has, plus state, times, rate and reason."""
    client, batch = await find_batch(request)
    now = clock_of(request)()
    units = await run_in_threadpool(store_of(request).units_summary, batch.seq, now)
    limits = client_limits(settings_of(request), client.limits)
    return JSONResponse(status_json(request, batch, units, limits, now))


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
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


async def failures(request: Request) -> Response:
    """Failed rows: a JSON page (``after``, ``limit``), or all of them as JSONL or CSV."""
    _, batch = await find_batch(request)
    store = store_of(request)
    after = int_param(request, "after", 0, 0, 10**12)
    form = request.query_params.get("format", "json")
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
    return JSONResponse(
        {
            "batchId": batch.batch_id,
            "columns": columns,
            "failedUpdates": batch.counts.failed,
            "failures": [failure_json(row, columns) for row in page],
            "nextAfter": next_after,
        }
    )


async def openapi_document(request: Request) -> Response:
    """The OpenAPI description of every endpoint, Target's and profilebase's own."""
    return JSONResponse(openapi.document(__version__))


routes = [
    Route("/openapi.json", openapi_document, methods=["GET"]),
    Route(PREFIX + "/clients/{client}", client_info, methods=["GET"]),
    Route(PREFIX + "/clients/{client}/batches/{batch_id}", batch_status, methods=["GET"]),
    Route(PREFIX + "/clients/{client}/batches/{batch_id}/failures", failures, methods=["GET"]),
]
