"""Target's Bulk Profile Update API: ``batchUpdate`` (v1 and v2) and ``batchStatus``.

Two profilebase extensions ride on ``batchUpdate`` (docs/client.md): the
``Idempotency-Key`` header, and ``?dryRun=true``, which validates the batch
exactly as a real one and answers with a JSON report, writing nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from profilebase.errors import BadRequest, BatchRejected, BatchTooLarge, NotFound
from profilebase.server import dry_run, quota
from profilebase.server.batches import state_of
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.storage.base import Store
from profilebase.server.web import compression, xml
from profilebase.server.web.context import ClientContext, client_in_path, with_headers
from profilebase.server.web.openapi import (
    CLIENT,
    IGNORED,
    JSON,
    REFUSALS,
    TARGET,
    TOKEN_IF_REQUIRED,
    XML,
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

FAILED_ROWS_PAGE = 10_000


async def batch_update(request: Request, context: ClientContext) -> Response:
    """Accept a batch; every reply to an authorized caller carries the quota headers."""
    return await with_headers(accept(request, context), lambda: quota_headers(context))


async def quota_headers(context: ClientContext) -> dict[str, str]:
    """``X-RateLimit-*`` for the client's rolling daily row quota, as it stands now."""
    now = context.clock()
    recent = await run_in_threadpool(
        context.store.recent_batches, context.client.id, now - quota.DAY_MS
    )
    return quota.rate_limit_headers(recent, context.limits.rows_per_day, now)


async def accept(request: Request, context: ClientContext) -> Response:
    """Stream the body through the intake, store it, reply with its status URL.

    The quotas are checked before the body is read (to refuse early) and again in
    the transaction that stores the batch (to be exact under concurrency). The
    early check is left out for a dry run, whose report forecasts the quotas, and
    for a request with an ``Idempotency-Key``: it may repeat a batch already
    accepted and counted, which the store answers before its own check.
    """
    version = 2 if "/v2/" in request.url.path else 1
    store, clock, client, limits = context.store, context.clock, context.client, context.limits
    dry = is_dry_run(request)
    key = None if dry else idempotency_key(request)
    if not dry and key is None:
        now = clock()
        recent = await run_in_threadpool(store.recent_batches, client.id, now - quota.DAY_MS)
        quota.check_batch(client.code, recent, None, limits, now)
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    coding = compression.content_coding(request.headers.get("content-encoding", ""))
    declared = request.headers.get("content-length", "")
    if not multipart and declared.isdigit() and int(declared) >= limits.max_batch_bytes:
        # Refuse before reading a byte of the body.
        raise BatchTooLarge(
            f"The batch body is {int(declared):,} bytes; it must be smaller than "
            f"{limits.max_batch_bytes:,} bytes (max_batch_bytes). Split the file into "
            "several batches."
        )
    intake = Intake(
        limits, context.settings.unit_rows, prefix_optional=multipart, digest=key is not None
    )
    try:
        body: AsyncIterator[bytes] = request.stream()
        if coding == compression.GZIP:
            body = compression.gunzip(body, limits.max_batch_bytes)
        chunks = multipart_field(body, content_type) if multipart else body
        async for chunk in chunks:
            with compression.sizes_decompressed(coding):
                intake.feed(chunk)
        with compression.sizes_decompressed(coding):
            read = intake.finish()
    except BaseException:
        intake.units.close()
        raise
    if dry:
        report = await run_in_threadpool(
            dry_run.check, store, client, version, read, limits, clock()
        )
        return JsonResponse(dry_run.report_json(report))
    seq, batch_id = await run_in_threadpool(
        store_batch, store, client, version, read, limits, clock(), key
    )
    context.metrics.batch_accepted(client.code, batch_id, read.rows)
    base = str(request.base_url).rstrip("/")
    v2 = "/v2" if version == 2 else ""
    status_url = f"{base}/m2/{client.code}{v2}/profile/batchStatus?batchId={batch_id}"
    return xml.xml_response(xml.submitted(status_url))


def is_dry_run(request: Request) -> bool:
    """True for ``?dryRun=true`` (extension); anything else but ``false`` is refused."""
    value = query(request, "dryRun", "false").strip().lower()
    if value not in {"true", "false"}:
        raise BadRequest(f"dryRun must be true or false, got {value!r}.")
    return value == "true"


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header (extension): 1 to 255 printable ASCII characters."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= 255 or not all(" " < ch <= "~" for ch in key):
        raise BadRequest(
            "The Idempotency-Key header must be 1 to 255 printable ASCII characters "
            "without spaces, e.g. a UUID."
        )
    return key


class _FieldCollector:
    """Callbacks for python-multipart that keep the data of one named field."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.header_name = b""
        self.header_value = b""
        self.current: str | None = None
        self.found = False
        self.data: list[bytes] = []

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
        }

    def on_part_begin(self) -> None:
        self.current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            _, options = parse_options_header(self.header_value)
            self.current = options.get(b"name", b"").decode("utf-8", "replace")
        self.header_name = self.header_value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current == self.field:
            self.found = True
            self.data.append(data[start:end])

    def take(self) -> list[bytes]:
        data, self.data = self.data, []
        return data


async def multipart_field(
    body: AsyncIterator[bytes], content_type: str, field: str = "batch"
) -> AsyncIterator[bytes]:
    """Yield the bytes of one field of a multipart ``body`` as they arrive."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BatchRejected(
            "The multipart body has no boundary in its Content-Type; let your HTTP client "
            "build the multipart request (e.g. curl -F batch=@file.txt)."
        )
    collector = _FieldCollector(field)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
            for piece in collector.take():
                yield piece
        parser.finalize()
    except MultipartParseError:
        raise BatchRejected(
            "The multipart body is malformed (a part's headers or boundary cannot be read); "
            "let your HTTP client build it (e.g. curl -F batch=@file.txt), or send the batch "
            "file itself as the body."
        ) from None
    for piece in collector.take():
        yield piece
    if not collector.found:
        raise BatchRejected(
            f"The multipart upload has no field named {field!r}: send the batch file as the "
            f"field `{field}` (e.g. curl -F {field}=@batch.txt URL)."
        )


async def batch_status(request: Request, context: ClientContext) -> Response:
    """Target's batchStatus; extra parameters such as m2Node or mboxPC are ignored."""
    client, store, settings = context.client, context.store, context.settings
    batch_id = query(request, "batchId", "").strip()
    if not batch_id:
        raise BadRequest(
            "The batchId query parameter is missing: use the batchStatus URL that "
            "batchUpdate returned, e.g. ?batchId=demo-1700000000000-1."
        )
    batch = await run_in_threadpool(store.get_batch, client.id, batch_id)
    if batch is None:
        raise NotFound(
            f"No batch {batch_id!r} for client {client.code!r}: check the batch id, or the "
            "status has expired (statuses are kept "
            f"{settings.status_retention_days:g} days)."
        )
    details = query(request, "showDetails", "").lower() == "true"
    state = state_of(batch, context.clock(), settings.stuck_after_seconds, context.limits)
    parts = xml.batch_status(batch, state.target_status, details)
    if not (details and batch.version >= 2 and batch.counts.failed):
        return xml.xml_response(parts)
    return StreamingResponse(
        stream_with_failures(store, batch.seq, parts), media_type=xml.MEDIA_TYPE
    )


async def stream_with_failures(
    store: Store, batch_seq: int, parts: list[str]
) -> AsyncIterator[str]:
    """The status document with one <profile> per failed row, read page by page."""
    yield "<response>" + "".join(parts)
    after = 0
    while True:
        page = await run_in_threadpool(store.failed_rows, batch_seq, after, FAILED_ROWS_PAGE)
        if not page:
            break
        yield "".join(xml.failed_profile(row) for row in page)
        after = page[-1].line
    yield "</response>"


def update_operation(version: int) -> Schema:
    """The OpenAPI operation of batchUpdate v1 or v2."""
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
            **error_replies(XML, 400, *REFUSALS, 409, 413, 415, 507),
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


def status_operation() -> Schema:
    """The OpenAPI operation of batchStatus (v1 and v2 alike)."""
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
            query_param(
                "m2Node", "Accepted and ignored (Target routing hint).", None, **{IGNORED: True}
            ),
            query_param(
                "mboxPC", "Accepted and ignored (Target routing hint).", None, **{IGNORED: True}
            ),
        ],
        {
            "200": reply("The status.", XML, ref("XmlBatchStatus")),
            **error_replies(XML, 400, *REFUSALS),
        },
        security=TOKEN_IF_REQUIRED,
    )


routes = [
    ApiRoute(
        "/m2/{client}/profile/batchUpdate",
        batch_update,
        methods=["POST"],
        context=client_in_path,
        operation=update_operation(1),
    ),
    ApiRoute(
        "/m2/{client}/v2/profile/batchUpdate",
        batch_update,
        methods=["POST"],
        context=client_in_path,
        operation=update_operation(2),
    ),
    ApiRoute(
        "/m2/{client}/profile/batchStatus",
        batch_status,
        methods=["GET"],
        context=client_in_path,
        operation=status_operation(),
    ),
    ApiRoute(
        "/m2/{client}/v2/profile/batchStatus",
        batch_status,
        methods=["GET"],
        context=client_in_path,
        operation=status_operation(),
    ),
]
