"""The application factory: ``create_app(settings, store)``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from anyio import CapacityLimiter, to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from profilebase.errors import DatabaseUnavailable, ProfilebaseError, StorageError
from profilebase.models import now_ms
from profilebase.server import secret as server_secret
from profilebase.server.metrics import Metrics
from profilebase.server.settings import MB, Settings
from profilebase.server.storage import Store, open_settings_store
from profilebase.server.supervisor import freeze_start_up
from profilebase.server.web import (
    authentication,
    bulk,
    dashboard,
    delivery,
    errors,
    extensions,
    observe,
    profiles,
    update,
)
from profilebase.server.web.attempts import FailedAttempts
from profilebase.server.web.client_cache import ClientCache
from profilebase.server.web.context import Context, app_context
from profilebase.server.web.fetch_replies import FetchReplies
from profilebase.server.web.front import Front
from profilebase.server.web.openapi import JSON, TARGET, ApiRoute, operation, ref, reply
from profilebase.server.web.responses import JsonResponse
from profilebase.server.web.sessions import Sessions
from profilebase.server.worker import WorkerPool

log = logging.getLogger("profilebase.server")

DEMO_CLIENT = "demo"


#: Threads that may run the database calls of requests at once (anyio's default is 40).
#: SQLite has one writer: past a few, more threads only queue on its write lock, whose
#: waiters poll with growing sleeps, so under load the slowest wait seconds (measured:
#: single updates under wrk, p99 1.3 s with 40 threads, 70-90 ms with 4-8). Eight also fit
#: PostgreSQL's default pool of ten connections per process (whose online writes run in
#: threads of their own, ``GROUP_LEADERS``).
REQUEST_THREADS = 8
#: Seconds a group of online writes handed to the writer process may wait for its answer,
#: beyond twice ``database_timeout`` (its own bound on waiting for the write lock), before
#: the process is taken for hung: killed, and the group's writes answered 503.
WRITER_ANSWER_SECONDS = 30.0

#: Threads that may run readiness checks at once: their own, so that /readyz answers
#: even while every thread of the shared pool waits for a database that is gone.
READINESS_THREADS = 2


async def healthz(request: Request, context: Context) -> Response:
    """Liveness: 200 while the process serves HTTP, whatever the database's state."""
    return JsonResponse({"status": "ok"})


async def readyz(request: Request, context: Context) -> Response:
    """Readiness: 200 when the database answers and its schema is up to date, 503 otherwise.

    Answers within ``database_timeout`` (plus the check itself); the reply says which
    of the two is wrong, in our words. Not logged: load balancers ask every few seconds,
    and the requests that fail during an outage are logged already.
    """
    try:
        pending = await to_thread.run_sync(
            context.store.pending_migrations, limiter=context.readiness_limiter
        )
    except DatabaseUnavailable as exc:
        return JsonResponse(
            {"status": 503, "message": exc.message},
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if pending:
        return JsonResponse(
            {
                "status": 503,
                "message": f"The database schema is not up to date: {len(pending)} migration(s) "
                f"missing ({', '.join(pending)}). Run `profilebase migrate`.",
            },
            status_code=503,
            headers={"Retry-After": str(max(1, round(context.settings.database_timeout)))},
        )
    return JsonResponse({"status": "ready"})


HEALTHZ = operation(
    TARGET,
    "Liveness: 200 while the server serves HTTP, whatever the database's state "
    "(profilebase's; Target has none).",
    [],
    {"200": reply("Up.", JSON, {"type": "object"})},
)
READYZ = operation(
    TARGET,
    "Readiness: 200 when the database answers and its schema is up to date; 503 "
    "with Retry-After otherwise (profilebase's; Target has none).",
    [],
    {
        "200": reply("Ready.", JSON, {"type": "object"}),
        "503": reply(
            "The database is unreachable, or migrations are missing.", JSON, ref("JsonError")
        ),
    },
)


def prepare(store: Store, settings: Settings) -> None:
    """Migrate the schema and create the demo client; run at start-up.

    Both only write when there is something to do, so a server whose SQLite file is
    read-only still starts and serves reads (writes answer 503 until it is writable).
    """
    store.migrate()
    if settings.demo and store.get_client(DEMO_CLIENT) is None:
        store.ensure_client(DEMO_CLIENT)


def create_app(
    settings: Settings | None = None,
    store: Store | None = None,
    workers: int | None = None,
    clock: Callable[[], int] = now_ms,
    startup: Callable[[Store, Settings], None] = prepare,
    freeze: bool = False,
    writer_apart: bool = False,
) -> Starlette:
    """Build the ASGI app. ``workers`` batch threads run inside it (default: settings.workers);
    ``clock`` gives milliseconds since the epoch to the app and its workers; ``startup`` runs
    (in a thread) before the app serves: ``prepare``, unless a parent process did that.
    With ``freeze`` (a process of ``serve``, which runs nothing else), what exists once it
    has started is put out of the garbage collector's sight (``freeze_start_up``). With
    ``writer_apart`` (a process of ``serve``, ``sqlite_writer_process`` on), its online
    writes are made by a process of their own, if the store has one for them
    (``Store.writer_apart``)."""
    settings = settings or Settings.from_env()
    owns_store = store is None
    the_store = store or open_settings_store(settings)
    count = settings.workers if workers is None else workers
    metrics = Metrics()

    def on_error(exc: BaseException) -> None:
        metrics.database_error(exc, "web")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        await run_in_threadpool(startup, the_store, settings)
        secret = await run_in_threadpool(server_secret.open_secret, settings, the_store, clock())
        writer = None
        if writer_apart and settings.sqlite_writer_process:
            writer = the_store.writer_apart(
                WRITER_ANSWER_SECONDS + 2 * settings.database_timeout, settings.log_format
            )
        if writer is not None:
            try:
                await writer.open()
            except Exception as exc:  # the writer thread serves instead
                why = exc.detail if isinstance(exc, StorageError) else repr(exc)
                log.error("online writes: no writer process (%s); on a thread instead", why)
                writer = None
        try:
            app.state.context = Context(
                store=the_store,
                settings=settings,
                clock=clock,
                secret=secret,
                failed_attempts=FailedAttempts(settings.auth_failures_per_minute, clock),
                metrics=metrics,
                sessions=Sessions(settings.session_secret),
                readiness_limiter=CapacityLimiter(READINESS_THREADS),
                clients=ClientCache(settings.client_cache_seconds),
                fetch_replies=FetchReplies(settings.fetch_cache_mb * MB),
                client_contexts={},
                writer=writer,
            )
            pool = WorkerPool(the_store, settings, count, clock, metrics)
            pool.start()
            if freeze:
                freeze_start_up()
        except BaseException:
            if writer is not None:
                await writer.close()
            raise
        try:
            yield
        finally:
            try:
                if writer is not None:
                    await writer.close()
                await the_store.close_async()
            finally:
                await run_in_threadpool(pool.close)
                if owns_store:  # it may wait for writes queued (PostgreSQL's groups)
                    await run_in_threadpool(the_store.close)

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ProfilebaseError: observe.counting(errors.profilebase_error),
        HTTPException: errors.http_error,
    }
    health = ApiRoute("/healthz", healthz, methods=["GET"], context=app_context, operation=HEALTHZ)
    app = Starlette(
        routes=[
            health,
            ApiRoute("/readyz", readyz, methods=["GET"], context=app_context, operation=READYZ),
            *bulk.routes,
            *update.routes,
            *profiles.routes,
            *delivery.routes,
            *authentication.routes,
            *extensions.routes,
            *observe.routes,
            *dashboard.routes,
        ],
        exception_handlers=handlers,
        # Outside the exception handlers: every other exception, and clients that hang up;
        # the observer outside the guard, so that a 500 carries its request id too.
        middleware=[
            # The routes of every page view: straight to their endpoints (web/front.py).
            Middleware(
                Front,
                routes=[health, *update.routes, *profiles.by_id_routes, *delivery.routes],
                metrics=metrics,
                handlers=handlers,
                on_error=on_error,
            ),
            Middleware(observe.RequestObserver, metrics=metrics),
            Middleware(errors.ErrorGuard, on_error=on_error),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    return app
