"""Shared fixtures: a real store on every backend, the app, a live server over a socket.

``database_url`` is parametrised over SQLite and PostgreSQL, and ``settings``,
``store``, ``drain``, ``live_server`` and ``http`` build on it, so every test that
uses one of them runs on both backends. A PostgreSQL test gets a fresh database
cloned from a template that is migrated once per session.

The PostgreSQL half runs when a server answers at ``PROFILEBASE_TEST_POSTGRES``
(default below) and is reported as skipped, loudly, when none does. With
``PROFILEBASE_REQUIRE_POSTGRES=1`` (set by .ci/run) a missing server, or a run
in which no PostgreSQL test ran, fails the session instead.
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from profilebase.client import Client
from profilebase.models import now_ms
from profilebase.server.settings import Settings
from profilebase.server.storage import Store, open_store
from profilebase.server.web import create_app, server
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

POSTGRES_URL = os.environ.get("PROFILEBASE_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("PROFILEBASE_REQUIRE_POSTGRES", "") not in {"", "0"}


class PostgresServer:
    """The test PostgreSQL server: a migrated template database and fresh clones of it."""

    #: Migrated clones kept ready.
    AHEAD = 2

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"pbtest_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template = f"{self.prefix}_template"
        self.error = ""
        self.ready = False
        self.ran = 0
        self.clones: set[str] = set()
        self.lock = threading.Lock()
        self.numbers = itertools.count()
        #: Migrated clones made ahead, and clones to drop, by a thread of their own: a test
        #: takes a database at once and leaves its dropping to that thread.
        self.made: queue.Queue[str] = queue.Queue(maxsize=self.AHEAD)
        self.dropping: queue.Queue[str | None] = queue.Queue()
        self.helper: threading.Thread | None = None
        self.psycopg: Any = None

    def with_database(self, name: str) -> str:
        return urllib.parse.urlsplit(self.url)._replace(path=f"/{name}").geturl()

    def admin(self, sql: str) -> None:
        # The module ``started`` imported: a test may hide psycopg from sys.modules meanwhile.
        with self.psycopg.connect(self.url, autocommit=True, connect_timeout=30) as db:
            db.execute(sql)  # type: ignore[arg-type]

    def started(self) -> bool:
        """Create and migrate the template once; False (with ``error``) if there is no server."""
        if self.ready or self.error:
            return self.ready
        try:
            import psycopg

            from profilebase.server.storage.postgres import PostgresStore

            self.psycopg = psycopg
            self.admin(f'CREATE DATABASE "{self.template}"')
        except ImportError as exc:
            self.error = f"psycopg is not installed ({exc})"
            return False
        except Exception as exc:
            self.error = f"no PostgreSQL server at {self.url} ({str(exc).strip()})"
            return False
        store = PostgresStore(self.with_database(self.template), pool_size=1)
        store.migrate()
        store.close()
        self.ready = True
        return True

    def clone(self, migrated: bool = True) -> str:
        """A new database, a copy of the migrated template (or empty); its name."""
        self.ran += 1
        if not migrated:
            return self._create("template0")
        if self.helper is None:
            self.helper = threading.Thread(target=self._ahead, name="pg-clones", daemon=True)
            self.helper.start()
        while True:
            try:
                return self.made.get(timeout=1)
            except queue.Empty:  # the helper died (the server went away): make one here
                if not self.helper.is_alive():
                    return self._create(self.template)

    def _create(self, template: str) -> str:
        with self.lock:
            name = f"{self.prefix}_{next(self.numbers)}"
            self.clones.add(name)
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def _ahead(self) -> None:
        """Keep ``AHEAD`` migrated clones ready and drop what tests left, until ``stop``.
        A clone it cannot make ends it (``clone`` then makes its own); one it cannot drop
        is left to ``stop``."""
        while True:
            try:
                while self.made.qsize() < self.AHEAD:
                    self.made.put(self._create(self.template))
            except Exception:
                return
            try:
                name = self.dropping.get(timeout=0.05)
            except queue.Empty:
                continue
            if name is None:
                return
            try:
                self._drop_now(name)
            except Exception:
                pass

    def drop(self, name: str) -> None:
        """Drop a clone, soon (by the helper thread) if it runs, else now."""
        if self.helper is not None and self.helper.is_alive():
            self.dropping.put(name)
        else:
            self._drop_now(name)

    def _drop_now(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with self.lock:
            self.clones.discard(name)

    def stop(self) -> None:
        if not self.ready:
            return
        if self.helper is not None:
            self.dropping.put(None)
            self.helper.join(60)
        with self.lock:
            left = [*self.clones, self.template]
        for name in left:
            try:
                self._drop_now(name)
            except Exception:  # the server went away; nothing left to clean
                pass


postgres_key = pytest.StashKey[PostgresServer]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[postgres_key] = PostgresServer(POSTGRES_URL)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI, a missing PostgreSQL ends the run before any test."""
    server = session.config.stash[postgres_key]
    if REQUIRE_POSTGRES and not server.started():
        pytest.exit(f"PROFILEBASE_REQUIRE_POSTGRES is set but {server.error}.", returncode=1)


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> PostgresServer:
    """The PostgreSQL server for the session; the test is skipped if there is none."""
    server = request.config.stash[postgres_key]
    if not server.started():
        pytest.skip("no PostgreSQL server: the PostgreSQL half is skipped (see the summary)")
    return server


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    server = config.stash[postgres_key]
    if server.ran:
        terminalreporter.write_sep("=", f"PostgreSQL half ran: {server.ran} tests on {server.url}")
        return
    if server.error or REQUIRE_POSTGRES:
        reason = server.error or "no PostgreSQL test was selected"
        verdict = (
            "failing the run (PROFILEBASE_REQUIRE_POSTGRES)"
            if REQUIRE_POSTGRES
            else "set PROFILEBASE_TEST_POSTGRES to a server to run it"
        )
        terminalreporter.write_sep(
            "!", f"PostgreSQL half SKIPPED: {reason}; {verdict}", red=True, bold=True
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    server = session.config.stash[postgres_key]
    server.stop()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller adds up the counts
        workeroutput["postgres_ran"] = server.ran
        workeroutput["postgres_error"] = server.error
        return
    if REQUIRE_POSTGRES and exitstatus == 0 and not server.ran:
        session.exitstatus = 1  # CI must not pass without the PostgreSQL half


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller: count the PostgreSQL tests a finished worker ran, and keep
    why it could not run them, for the summary. A worker that crashed reports nothing (and
    one stopped by Ctrl-C is reported twice, the second time with an error)."""
    output = getattr(node, "workeroutput", None)
    if error is not None or not output:
        return
    server = node.config.stash[postgres_key]
    server.ran += output.get("postgres_ran", 0)
    server.error = server.error or output.get("postgres_error", "")


def fresh_database(
    request: pytest.FixtureRequest, tmp_path: Path, migrated: bool = True
) -> Iterator[str]:
    """The URL of a new database of the backend ``request.param`` names; dropped afterwards.

    A SQLite file starts empty; a PostgreSQL one is a clone of the migrated template,
    or empty when ``migrated`` is false.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = server.clone(migrated)
    yield server.with_database(name)
    server.drop(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each backend."""
    yield from fresh_database(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema yet, of each backend."""
    yield from fresh_database(request, tmp_path, migrated=False)


@pytest.fixture
def settings(database_url: str, request: pytest.FixtureRequest) -> Settings:
    """Test settings; parametrize indirectly with a dict to override some of them."""
    overrides = getattr(request, "param", {})
    return Settings(**{"database": database_url, "workers": 0, "unit_rows": 50, **overrides})


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


#: Ports ``free_port`` hands out: below Linux's ephemeral range (32768 and up), where no
#: outgoing connection takes one between the test's choice and the server's bind, and a
#: block of its own for each pytest-xdist process, so that two never pick the same.
PORT_BLOCK = 2_000
FIRST_PORT = 20_000
_ports = itertools.count()


def free_port() -> int:
    """A loopback TCP port nothing listens on, for a server the test starts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = FIRST_PORT + (int(worker) % 6 if worker.isdigit() else 0) * PORT_BLOCK
    for _ in range(PORT_BLOCK):
        port = block + next(_ports) % PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken (by another program, or not yet released)
                continue
            return port
    raise RuntimeError(f"no free port in {block}-{block + PORT_BLOCK - 1}")


class LiveServer:
    """uvicorn serving the app on a real loopback socket, in a background thread, with the
    server's own protocol."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        workers: int,
        wrap: Callable[[Any], Any] | None = None,
        clock: Callable[[], int] = now_ms,
        freeze: bool = False,
        writer_apart: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(
            settings, store, workers=workers, clock=clock, freeze=freeze, writer_apart=writer_apart
        )
        # ``wrap`` puts ASGI middleware of a test's own around the app (server-side faults).
        # The server's own protocol (web/server.py: its limits, one write per reply), as
        # `profilebase serve` runs it.
        config = server.Config(
            wrap(app) if wrap else app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            client_timeout=settings.client_timeout,
            max_connections=settings.max_connections,
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
def live_server(settings: Settings, store: Store, clock: Callable[[], int]) -> Iterator[LiveServer]:
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
