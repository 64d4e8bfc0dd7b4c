"""Shared fixtures: settings in tmp_path, a real store, the app, a live server over a socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from profilebase.config import Settings
from profilebase.storage import Store, open_store
from profilebase.web import create_app
from profilebase.web.app import prepare
from profilebase.worker import Worker


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=f"sqlite:///{tmp_path}/test.db", workers=0, unit_rows=50)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    the_store = open_store(settings.database)
    prepare(the_store, settings)
    yield the_store
    the_store.close()


@pytest.fixture
def drain(store: Store, settings: Settings):  # type: ignore[no-untyped-def]
    """Apply every queued unit now, deterministically, in this thread."""

    def run() -> None:
        Worker(store, settings).run(until_idle=True)

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving the app on a real loopback socket, in a background thread."""

    def __init__(self, settings: Settings, store: Store, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, store, workers=workers)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
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
def live_server(settings: Settings, store: Store) -> Iterator[LiveServer]:
    with LiveServer(settings, store, workers=0) as server:
        yield server


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c
