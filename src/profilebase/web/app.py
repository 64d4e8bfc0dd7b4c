"""The application factory: ``create_app(settings, store)``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from profilebase import server_secret
from profilebase.config import Settings
from profilebase.errors import ProfilebaseError
from profilebase.models import now_ms
from profilebase.storage import Store, open_settings_store
from profilebase.web import authentication, bulk, delivery, errors, extensions, profiles, update
from profilebase.web.attempts import FailedAttempts
from profilebase.worker import WorkerPool

DEMO_CLIENT = "demo"


async def healthz(request: Request) -> Response:
    """200 once the server accepts requests (the schema is migrated by then)."""
    return JSONResponse({"status": "ok"})


def prepare(store: Store, settings: Settings) -> None:
    """Migrate the schema and create the demo client; run at start-up."""
    store.migrate()
    if settings.demo:
        store.ensure_client(DEMO_CLIENT)


def create_app(
    settings: Settings | None = None,
    store: Store | None = None,
    workers: int | None = None,
    clock: Callable[[], int] = now_ms,
) -> Starlette:
    """Build the ASGI app. ``workers`` batch threads run inside it (default: settings.workers);
    ``clock`` gives milliseconds since the epoch to the app and its workers."""
    settings = settings or Settings.from_env()
    owns_store = store is None
    the_store = store or open_settings_store(settings)
    count = settings.workers if workers is None else workers

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(prepare, the_store, settings)
        app.state.secret = await run_in_threadpool(
            server_secret.open_secret, settings, the_store, clock()
        )
        pool = WorkerPool(the_store, settings, count, clock)
        pool.start()
        try:
            yield
        finally:
            await run_in_threadpool(pool.close)
            if owns_store:
                the_store.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            *bulk.routes,
            *update.routes,
            *profiles.routes,
            *delivery.routes,
            *authentication.routes,
            *extensions.routes,
        ],
        exception_handlers={
            ProfilebaseError: errors.profilebase_error,
            HTTPException: errors.http_error,
            Exception: errors.unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = the_store
    app.state.clock = clock
    app.state.failed_attempts = FailedAttempts(settings.auth_failures_per_minute, clock)
    return app
