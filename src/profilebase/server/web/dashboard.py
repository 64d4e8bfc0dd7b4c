"""The dashboard at ``/ui``: batches, failed rows, profiles and an overview, as HTML.

Pages are rendered on the server from Jinja2 templates (``web/templates``) with
autoescaping on: ids, names and values are whatever a CSV held, and every one is
escaped. A few lines of JavaScript (``web/static/dashboard.js``) refresh the live
parts of a page; without them every page still works, only not by itself. The
Content-Security-Policy allows scripts, styles and form posts from this server only.

Who sees what (``viewer_of``):

1. An admin login (``admin_password``) sees every client.
2. A client login (its code and a valid profile API token) sees that client only:
   another client's batches and profiles are "not found", exactly like ids that do
   not exist.
3. With no login: while no client requires authorization (the default ``demo``
   setup) the dashboard is open and says so; once any client requires it, every
   page asks for a login.

Forms (login, logout, upload) carry the session's CSRF token (``web/sessions.py``).
"""

from __future__ import annotations

import csv
import functools
import io
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from profilebase.errors import (
    AccessDenied,
    BadRequest,
    ClientDisabled,
    NotFound,
    ProfilebaseError,
    RequestTooLarge,
)
from profilebase.models import DAY_MS, Batch, BatchState, Client, FailedRow, KeyKind, WriteKind
from profilebase.server.batches import rows_per_second, standing, state_of
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import client_limits
from profilebase.server.storage.base import Store
from profilebase.server.tokens import token_hash
from profilebase.server.web import charts
from profilebase.server.web.context import (
    Context,
    address_of,
    app_context,
    read_body,
    with_context,
)
from profilebase.server.web.extensions import all_failures, cells_of, columns_of
from profilebase.server.web.sessions import check_csrf, new_csrf

BATCHES_PAGE = 50
FAILURES_PAGE = 100
#: The state filter of the batch list: its own words, then the states a batch shows.
STATES = ("", "incomplete", "complete", "queued", "processing", "throttled", "stuck")
LOGIN_FORM_BYTES = 16 * 1024
#: Room for the multipart envelope around an uploaded batch file.
UPLOAD_SLACK = 64 * 1024
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@functools.cache
def templates() -> Environment:
    """The dashboard's templates, autoescaped; a missing variable is an error, not ''."""
    env = Environment(
        loader=PackageLoader("profilebase.server.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = lambda n: f"{n:,}"
    env.filters["when"] = when
    return env


def when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# -- who is looking -----------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """Who looks at the dashboard: ``open`` (no login needed), ``admin`` or ``client``;
    ``clients`` are those they may see, ``session`` their signed cookie's content."""

    role: str
    clients: tuple[Client, ...]
    session: dict[str, Any] = field(default_factory=dict)
    #: Whether the dashboard asks for a login (some client requires authorization).
    locked: bool = False

    @property
    def client_ids(self) -> list[int] | None:
        """The ids to filter reads by; None for every client."""
        return None if self.role != "client" else [c.id for c in self.clients]

    def client(self, code: str) -> Client | None:
        return next((c for c in self.clients if c.code == code), None)

    @property
    def csrf(self) -> str:
        return str(self.session.get("csrf", ""))


def token_valid(store: Store, client: Client, digest: str, now: int) -> bool:
    """Whether the token with SHA-256 ``digest`` is the client's, unexpired, unrevoked."""
    token = store.find_token(digest)
    if token is None or token.client_id != client.id:
        return False
    moment = now / 1000
    if token.revoked_at is not None and token.revoked_at.timestamp() <= moment:
        return False
    return token.expires_at.timestamp() > moment


def find_viewer(
    store: Store, session: dict[str, Any], admin_fingerprint: str | None, now: int
) -> Viewer | None:
    """The viewer a session stands for, or None if a login is needed (see the module)."""
    everyone = tuple(store.list_clients())
    locked = any(c.require_auth for c in everyone)
    if admin_fingerprint is not None and session.get("admin") == admin_fingerprint:
        return Viewer("admin", everyone, session, locked)
    code, digest = session.get("client"), session.get("token")
    if isinstance(code, str) and isinstance(digest, str):
        client = next((c for c in everyone if c.code == code), None)
        if client is not None and not client.disabled and token_valid(store, client, digest, now):
            return Viewer("client", (client,), session, locked)
    if not locked:
        return Viewer("open", everyone, session, locked)
    return None


async def viewer_of(context: Context, session: dict[str, Any]) -> Viewer | None:
    settings = context.settings
    fingerprint = None
    if settings.admin_password:
        fingerprint = context.sessions.admin_fingerprint(settings.admin_password)
    return await run_in_threadpool(
        find_viewer, context.store, session, fingerprint, context.clock()
    )


# -- rendering ----------------------------------------------------------------------------


def render(
    name: str, viewer: Viewer | None, http_status: int = 200, **context: Any
) -> HTMLResponse:
    body = templates().get_template(name).render(viewer=viewer, **context)
    return HTMLResponse(body, status_code=http_status)


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(viewer: Viewer | None, exc: ProfilebaseError) -> HTMLResponse:
    response = render("error.html", viewer, exc.status, status=exc.status, message=exc.message)
    response.headers.update(exc.headers)
    return response


Page = Callable[[Request, Context, Viewer], Awaitable[Response]]


def page(handler: Page) -> Callable[[Request], Awaitable[Response]]:
    """A dashboard page: the app's context and the viewer resolved (or a redirect to the
    login), errors shown as a page of their own, the session's CSRF token made if it has
    none yet."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        context = await app_context(request)
        sessions = context.sessions
        session, fresh = sessions.current(request)
        viewer = await viewer_of(context, session)
        if viewer is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response: Response = RedirectResponse(
                "/ui/login?" + urllib.parse.urlencode({"next": target}), status_code=303
            )
        else:
            try:
                response = await handler(request, context, viewer)
            except HTTPException as exc:  # a form the parser refused
                response = error_page(viewer, BadRequest(f"The form is invalid: {exc.detail}"))
            except ProfilebaseError as exc:
                response = error_page(viewer, exc)
        if fresh:
            sessions.write(request, response, session)
        return secured(response)

    return endpoint


def visible_client(viewer: Viewer, code: str) -> Client:
    """The client ``code`` if the viewer may see it; otherwise "not found", whether it
    exists or not, so that a client login learns nothing of other clients."""
    client = viewer.client(code)
    if client is None:
        raise NotFound(f"No client {code!r} here: check the client code.")
    return client


def printable(text: str, what: str) -> str:
    """``text`` if it holds no control character (NUL, CR...); no stored id does."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise BadRequest(f"The {what} contains a control character; no {what} does.")
    return text


def int_query(request: Request, name: str, low: int = 0, high: int = 2**62) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"The {name} parameter must be a whole number from {low}, got {raw!r}.")
    return int(raw)


# -- the overview -------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRow:
    """A batch as a list shows it."""

    batch: Batch
    state: BatchState
    percent: int
    rate: float | None
    age_seconds: int

    @property
    def accounted(self) -> int:
        return self.batch.counts.consumed


def batch_rows(context: Context, viewer: Viewer, batches: Sequence[Batch]) -> list[BatchRow]:
    settings, now = context.settings, context.clock()
    rows = []
    for batch in batches:
        client = viewer.client(batch.client_code)
        limits = client_limits(settings, client.limits if client else {})
        size = batch.batch_size
        percent = 100 if not size else min(100, batch.counts.consumed * 100 // size)
        rows.append(
            BatchRow(
                batch,
                state_of(batch, now, settings.stuck_after_seconds, limits),
                percent,
                rows_per_second(batch, now),
                max(0, now // 1000 - int(batch.accepted_at.timestamp())),
            )
        )
    return rows


@page
async def overview(request: Request, context: Context, viewer: Viewer) -> Response:
    """Rows per minute over the last hour, queue, workers, quotas and the latest batches."""
    store, now = context.store, context.clock()
    ids = viewer.client_ids

    def read() -> dict[str, Any]:
        minutes = store.rows_by_minute((now // 60_000 - 59) * 60_000, ids)
        codes = {c.code for c in viewer.clients}
        used = store.rows_accepted_by_client(now - DAY_MS + 1)
        return {
            "chart": charts.rows_per_minute(minutes, now),
            "queue": [q for q in store.queue_depth() if q.client_code in codes],
            "busy": store.workers_busy(now),
            "quotas": [
                (c, used.get(c.id, 0), context.client_limits(c).rows_per_day)
                for c in viewer.clients
            ],
            "recent": store.list_batches(ids, limit=10),
        }

    found = await run_in_threadpool(read)
    recent = batch_rows(context, viewer, found.pop("recent"))
    return render("overview.html", viewer, recent=recent, **found)


# -- batches ------------------------------------------------------------------------------


@page
async def batches(request: Request, context: Context, viewer: Viewer) -> Response:
    """Batches newest first, by client and state, a page at a time; the upload form."""
    code = request.query_params.get("client", "").strip()
    state = request.query_params.get("state", "").strip()
    if state not in STATES:
        raise BadRequest(f"Unknown state {state!r}: use one of {', '.join(STATES[1:])}.")
    before = int_query(request, "before")
    ids = [visible_client(viewer, code).id] if code else viewer.client_ids
    finished = {"": None, "complete": True}.get(state, False)
    found = await run_in_threadpool(context.store.list_batches, ids, finished, before, BATCHES_PAGE)
    rows = batch_rows(context, viewer, found)
    if state not in ("", "incomplete", "complete"):
        rows = [r for r in rows if r.state == state]
    older = found[-1].seq if len(found) == BATCHES_PAGE else None
    return render(
        "batches.html",
        viewer,
        rows=rows,
        client=code,
        state=state,
        states=STATES,
        older=older,
        live=any(r.state is not BatchState.COMPLETE for r in rows),
    )


async def find_batch(request: Request, context: Context, viewer: Viewer) -> tuple[Client, Batch]:
    client = visible_client(viewer, request.path_params["client"])
    batch_id = printable(request.path_params["batch_id"], "batch id")
    batch = await run_in_threadpool(context.store.get_batch, client.id, batch_id)
    if batch is None:
        raise NotFound(
            f"No batch {batch_id!r} for client {client.code!r}: check the batch id, or its "
            "status has expired."
        )
    return client, batch


@page
async def batch_page(request: Request, context: Context, viewer: Viewer) -> Response:
    """One batch: its timeline, counts and state, and its failed rows a page at a time."""
    after = int_query(request, "after") or 0
    client, batch = await find_batch(request, context, viewer)
    store, settings, now = context.store, context.settings, context.clock()
    units = await run_in_threadpool(store.units_summary, batch.seq, now)
    failed = await run_in_threadpool(store.failed_rows, batch.seq, after, FAILURES_PAGE)
    limits = context.client_limits(client)
    row = batch_rows(context, viewer, [batch])[0]
    return render(
        "batch.html",
        viewer,
        row=row,
        standing=standing(batch, units, now, settings.stuck_after_seconds, limits),
        units=units,
        failed=failed,
        after=after,
        more=failed[-1].line if len(failed) == FAILURES_PAGE else None,
        live=batch.state is not BatchState.COMPLETE,
    )


def fix_file(rows: Iterator[FailedRow], columns: list[str]) -> Iterator[str]:
    """Failed rows as CSV ready to fix and push again: the batch's columns (the id column
    named by its kind) with each row's original cells, and ``reason`` last, which
    ``profilebase push`` leaves out. A row with more cells than the header keeps the first
    ones; its reason says how many it had."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([*columns, "reason"])
    for row in rows:
        cells = cells_of(row) or [row.id]
        cells = (cells + [""] * len(columns))[: len(columns)]
        writer.writerow([*cells, row.reason])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


@page
async def failures_csv(request: Request, context: Context, viewer: Viewer) -> Response:
    """Every failed row of a batch as a CSV file to fix and push again."""
    _, batch = await find_batch(request, context, viewer)
    rows = all_failures(context.store, batch.seq, 0)
    return StreamingResponse(
        fix_file(rows, columns_of(batch)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{batch.batch_id}-failed.csv"'},
    )


@page
async def upload(request: Request, context: Context, viewer: Viewer) -> Response:
    """Accept a batch file from the upload form, as batchUpdate would, and show its page."""
    store, settings = context.store, context.settings
    largest = max((context.client_limits(c).max_batch_bytes for c in viewer.clients), default=0)
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise BadRequest("Send the upload form from a browser: its Content-Length is missing.")
    if int(declared) > largest + UPLOAD_SLACK:
        raise RequestTooLarge(
            f"The upload is {int(declared):,} bytes; a batch must be smaller than "
            f"{largest:,} bytes (max_batch_bytes). Split the file into several batches."
        )
    async with request.form(max_files=1, max_fields=4, max_part_size=1024) as form:
        check_csrf(request, viewer.session, form.get("csrf"))
        client = visible_client(viewer, str(form.get("client", "")))
        if client.disabled:
            raise ClientDisabled(client.code)
        version = 1 if form.get("version") == "1" else 2
        upload_file = form.get("batch")
        if not isinstance(upload_file, UploadFile):
            raise BadRequest("Choose a batch file to upload.")
        limits = context.client_limits(client)
        intake = Intake(limits, settings.unit_rows, prefix_optional=True)
        try:
            while chunk := await upload_file.read(1024 * 1024):
                intake.feed(chunk)
            read = intake.finish()
        except BaseException:
            intake.units.close()
            raise
    _, batch_id = await run_in_threadpool(
        store_batch, store, client, version, read, limits, context.clock()
    )
    context.metrics.batch_accepted(client.code, batch_id, read.rows)
    target = f"/ui/batches/{urllib.parse.quote(client.code)}/{urllib.parse.quote(batch_id)}"
    return RedirectResponse(target, status_code=303)


# -- profiles -----------------------------------------------------------------------------


@page
async def profile_page(request: Request, context: Context, viewer: Viewer) -> Response:
    """Look a profile up by any id kind; every attribute with its value, time and writer."""
    code = request.query_params.get("client", "").strip()
    kind_name = request.query_params.get("kind", str(KeyKind.THIRD_PARTY_ID))
    identifier = printable(request.query_params.get("id", ""), "id")
    kinds = [str(k) for k in KeyKind]
    if kind_name not in kinds:
        raise BadRequest(f"Unknown id kind {kind_name!r}: use one of {', '.join(kinds)}.")
    profile = None
    searched = bool(code and identifier)
    if searched:
        client = visible_client(viewer, code)
        before = context.client_limits(client).expire_before_ms(context.clock())
        profile = await run_in_threadpool(
            context.store.get_profile, client.id, KeyKind(kind_name).key(identifier), before
        )
    return render(
        "profile.html",
        viewer,
        client=code or (viewer.clients[0].code if len(viewer.clients) == 1 else ""),
        kind=kind_name,
        kinds=kinds,
        identifier=identifier,
        searched=searched,
        profile=profile,
        batch_kind=WriteKind.BATCH,
        attributes=sorted(profile.attributes.items()) if profile else [],
        ids=[id_of(key) for key in profile.ids] if profile else [],
    )


def id_of(key: str) -> tuple[str, str]:
    """(kind, id) of a stored key such as ``t:crm-1``."""
    kind = next((k for k in KeyKind if key.startswith(k.prefix)), None)
    return (str(kind), key[len(kind.prefix) :]) if kind else ("", key)


# -- logging in and out -------------------------------------------------------------------


def safe_next(target: str) -> str:
    """Where to go after logging in: a dashboard path, never another site."""
    if target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


async def small_form(request: Request) -> dict[str, str]:
    """The fields of a small url-encoded form, refused past ``LOGIN_FORM_BYTES``."""
    body = await read_body(request, LOGIN_FORM_BYTES, "the login form's size")
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=10
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form could not be read; reload the page and try again.") from None
    return dict(pairs)


async def login_page(request: Request, context: Context) -> Response:
    """The login form: the admin password, or a client's code and profile API token."""
    sessions = context.sessions
    session, fresh = sessions.current(request)
    viewer = await viewer_of(context, session)
    response = render(
        "login.html",
        viewer,
        csrf=session["csrf"],
        next=safe_next(request.query_params.get("next", "/ui")),
        admin_enabled=bool(context.settings.admin_password),
        message=None,
    )
    if fresh:
        sessions.write(request, response, session)
    return secured(response)


async def login(request: Request, context: Context) -> Response:
    """Check a login form; a good one starts a new session, a bad one counts as a failure
    of the caller's address (``auth_failures_per_minute``, as for tokens)."""
    sessions = context.sessions
    session = sessions.read(request)
    attempts, address = context.failed_attempts, address_of(request)
    target = safe_next(request.query_params.get("next", "/ui"))
    try:
        form = await small_form(request)
        target = safe_next(form.get("next", target))
        check_csrf(request, session, form.get("csrf"))
        attempts.check(address)
        data = await run_in_threadpool(check_login, context, form)
        if data is None:
            attempts.record(address)
            raise AccessDenied("Wrong password, or wrong client code or token.")
    except ProfilebaseError as exc:
        return secured(login_failed(request, context, target, exc))
    response = RedirectResponse(target, status_code=303)
    sessions.write(request, response, {"csrf": new_csrf(), **data})
    return secured(response)


def check_login(context: Context, form: dict[str, str]) -> dict[str, str] | None:
    """The session a login form earns: admin, or a client's; None if it earns none."""
    settings, store = context.settings, context.store
    password = form.get("password", "")
    if password:
        admin = settings.admin_password
        if admin and secrets.compare_digest(password.encode(), admin.encode()):
            return {"admin": context.sessions.admin_fingerprint(admin)}
        return None
    code, token = form.get("client", "").strip(), form.get("token", "").strip()
    if not code or not token:
        return None
    client = store.get_client(code)
    if client is None:
        return None
    digest = token_hash(token)
    if not token_valid(store, client, digest, context.clock()):
        return None
    if client.disabled:
        raise ClientDisabled(client.code)
    return {"client": client.code, "token": digest}


def login_failed(
    request: Request, context: Context, target: str, exc: ProfilebaseError
) -> Response:
    fresh = {"csrf": new_csrf()}
    response = render(
        "login.html",
        None,
        exc.status if exc.status >= 400 else 400,
        csrf=fresh["csrf"],
        next=target,
        admin_enabled=bool(context.settings.admin_password),
        message=exc.message,
    )
    context.sessions.write(request, response, fresh)
    return response


async def logout(request: Request, context: Context) -> Response:
    """End the session (a form post with its CSRF token)."""
    sessions = context.sessions
    session = sessions.read(request)
    try:
        form = await small_form(request)
        check_csrf(request, session, form.get("csrf"))
    except ProfilebaseError as exc:
        return secured(error_page(None, exc))
    response = RedirectResponse("/ui/login", status_code=303)
    sessions.clear(response)
    return secured(response)


# -- the rest -----------------------------------------------------------------------------


async def static(request: Request) -> Response:
    """The dashboard's own stylesheet and script (nothing comes from elsewhere)."""
    name = request.path_params["name"]
    if name not in STATIC:
        raise NotFound(f"No file {name!r} in the dashboard.")
    body = resources.files("profilebase.server.web").joinpath("static", name).read_bytes()
    response = Response(body, media_type=STATIC[name])
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def home(request: Request) -> Response:
    """``/`` is the dashboard."""
    return RedirectResponse("/ui", status_code=307)


#: HTML pages, not API: they stay out of /openapi.json (docs/operations.md describes them).
routes = [
    Route("/", home, methods=["GET"], include_in_schema=False),
    Route("/ui", overview, methods=["GET"], include_in_schema=False),
    Route("/ui/batches", batches, methods=["GET"], include_in_schema=False),
    Route("/ui/batches/{client}/{batch_id}", batch_page, methods=["GET"], include_in_schema=False),
    Route(
        "/ui/batches/{client}/{batch_id}/failed.csv",
        failures_csv,
        methods=["GET"],
        include_in_schema=False,
    ),
    Route("/ui/upload", upload, methods=["POST"], include_in_schema=False),
    Route("/ui/profiles", profile_page, methods=["GET"], include_in_schema=False),
    Route("/ui/login", with_context(login_page), methods=["GET"], include_in_schema=False),
    Route("/ui/login", with_context(login), methods=["POST"], include_in_schema=False),
    Route("/ui/logout", with_context(logout), methods=["POST"], include_in_schema=False),
    Route("/ui/static/{name}", static, methods=["GET"], include_in_schema=False),
]
