"""Shared fixtures: settings in tmp_path, a real store, the app, a live server over a socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from profilebase.client import Client
from profilebase.config import Settings
from profilebase.models import now_ms
from profilebase.storage import Store, open_store
from profilebase.web import create_app
from profilebase.web.app import prepare
from profilebase.worker import Worker


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Test settings; parametrize indirectly with a dict to override some of them."""
    overrides = getattr(request, "param", {})
    return Settings(database=f"sqlite:///{tmp_path}/test.db", workers=0, unit_rows=50, **overrides)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    the_store = open_store(settings.database)
    prepare(the_store, settings)
    yield the_store
    the_store.close()


class FakeClock:
    """Milliseconds since the epoch that move only when a test says so."""

    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture
def clock() -> Callable[[], int]:
    """The clock of the app and the workers; modules that test time override it."""
    return now_ms


@pytest.fixture
def drain(store: Store, settings: Settings, clock: Callable[[], int]):  # type: ignore[no-untyped-def]
    """Apply every claimable unit now, deterministically, in this thread."""

    def run() -> None:
        Worker(store, settings, clock=clock).run(until_idle=True)

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving the app on a real loopback socket, in a background thread."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        workers: int,
        wrap: Callable[[Any], Any] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, store, workers=workers, clock=clock)
        # ``wrap`` puts ASGI middleware of a test's own around the app (server-side faults).
        config = uvicorn.Config(
            wrap(app) if wrap else app, host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live_server(
    settings: Settings, store: Store, clock: Callable[[], int]
) -> Iterator[LiveServer]:
    with LiveServer(settings, store, workers=0, clock=clock) as server:
        yield server


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


@pytest.fixture
def working_server(settings: Settings, store: Store) -> Iterator[LiveServer]:
    """A live server with a worker thread of its own, for clients that wait on their own."""
    with LiveServer(settings, store, workers=1) as server:
        yield server


@pytest.fixture
def sdk(live_server: LiveServer, drain) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    """The SDK against the live server; where it would wait, it drains the workers instead."""
    with Client(live_server.url, "demo", poll_interval=0, sleep=lambda seconds: drain()) as c:
        yield c
