"""Logs: one line per request and per batch state change, as text or JSON, each with the
request id that the reply's X-Request-Id header carries (real processes, real sockets)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from test_metrics import BODY, wait_for_port

from profilebase.server import logs


class Server:
    """`profilebase serve` in a process of its own, its stderr in a file."""

    def __init__(self, tmp_path: Path, database: str, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "profilebase", "serve", "--port", str(self.port), *args],
                env=os.environ | {"PROFILEBASE_DATABASE": database, **env},
                stderr=sink,
            )
        wait_for_port(self.port, self.process)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_for(self, text: str) -> list[str]:
        """The log's lines once one holds ``text`` (the worker thread logs on its own)."""
        deadline = time.monotonic() + 30
        while not any(text in line for line in self.lines()):
            assert time.monotonic() < deadline, "\n".join(self.lines())
            time.sleep(0.05)
        return self.lines()

    def stop(self) -> None:
        """SIGTERM, then wait up to 180 s (the parent waits up to the lease and 10 s, 40 s,
        for each child that does not stop, one after another: four children, as on a 2-core
        machine, could take 160 s); a server still running then is killed and fails the test
        with its log."""
        self.process.terminate()
        try:
            self.process.wait(180)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                "serve did not stop within 180 s of SIGTERM:\n" + "\n".join(self.lines()[-40:])
            ) from None


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    errors = []
    for server in started:  # every one stopped, even after one that would not stop
        try:
            server.stop()
        except AssertionError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def json_lines(lines: list[str]) -> list[dict[str, object]]:
    """Every line after the start-up banner, each of which must be one JSON object."""
    return [json.loads(line) for line in lines if not line.startswith("profilebase serving")]


def test_json_logs_carry_each_request_and_each_batch_state(
    database_url: str, tmp_path: Path, servers: list[Server]
):
    server = Server(tmp_path, database_url, "--log-format", "json", "--workers", "1")
    servers.append(server)
    reply = httpx.post(
        f"{server.url}/m2/demo/v2/profile/batchUpdate",
        content=BODY,
        headers={"X-Request-Id": "lb-42.a_b"},
    )
    assert reply.status_code == 200
    assert reply.headers["x-request-id"] == "lb-42.a_b"
    server.wait_for("complete in")
    # The request's line is written once its reply is sent: the batch may complete first.
    records = json_lines(server.wait_for('"profilebase.requests"'))
    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    request = next(r for r in records if r["logger"] == "profilebase.requests")
    assert request["method"] == "POST"
    assert request["route"] == "/m2/{client}/v2/profile/batchUpdate"
    assert request["status"] == 200
    assert request["client"] == "demo"
    assert request["address"] == "127.0.0.1"
    assert isinstance(request["duration_ms"], float)
    assert request["request_id"] == "lb-42.a_b"
    states = [r for r in records if r["logger"] == "profilebase.batches"]
    assert [r["state"] for r in states][0] == "queued"
    assert states[0]["request_id"] == "lb-42.a_b" and states[0]["rows"] == 5
    assert states[-1]["state"] == "complete"
    assert {r["batch_id"] for r in states} == {states[0]["batch_id"]}
    assert any(r["logger"] == "uvicorn.error" for r in records), "uvicorn's lines are JSON too"


def test_a_request_id_that_is_not_sane_is_replaced(tmp_path: Path, servers: list[Server]):
    """The caller's id is used only if it is 1 to 64 of A-Z a-z 0-9 . _ - (SQLite only: no
    database work is involved)."""
    server = Server(tmp_path, f"sqlite:///{tmp_path}/db.sqlite", "--log-format", "json")
    servers.append(server)
    for sent in ["a\tb", "a b", "x" * 65, "<script>", "ünïcode", ""]:
        reply = httpx.get(f"{server.url}/healthz", headers=[(b"x-request-id", sent.encode())])
        given = reply.headers["x-request-id"]
        assert given != sent and len(given) == 32 and given.isalnum(), sent
    assert (
        httpx.get(f"{server.url}/healthz", headers={"X-Request-Id": "x" * 64}).headers[
            "x-request-id"
        ]
        == "x" * 64
    )


def test_text_logs_name_the_request_id_and_quote_unknown_paths(
    tmp_path: Path, servers: list[Server]
):
    server = Server(tmp_path, f"sqlite:///{tmp_path}/db.sqlite")
    servers.append(server)
    reply = httpx.get(f"{server.url}/no/such%0Athing")
    assert reply.status_code == 404
    request_id = reply.headers["x-request-id"]
    line = next(line for line in server.wait_for(request_id) if request_id in line)
    assert f"[{request_id}]" in line
    assert "GET (unmatched) '/no/such\\nthing' 404" in line
    assert "profilebase.requests" in line


def test_worker_processes_log_json_from_the_environment(database_url: str, tmp_path: Path):
    """PROFILEBASE_LOG_FORMAT=json reaches the worker processes `worker` spawns."""
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "profilebase", "worker", "--concurrency", "2"],
            # A short lease: `worker` gives a child that is slow to stop lease + 10 s
            # before it kills it, and this test waits 30 s for `worker` to exit.
            env=os.environ
            | {
                "PROFILEBASE_DATABASE": database_url,
                "PROFILEBASE_LOG_FORMAT": "json",
                "PROFILEBASE_LEASE_SECONDS": "2",
            },
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("started") < 2:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:  # not left running for the tests after this one
            process.kill()
            process.wait(10)
            raise AssertionError(f"`worker` did not stop on SIGTERM:\n{log.read_text()}") from None
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    started = [json.loads(line) for line in lines if "started" in line]
    assert len(started) == 2
    assert all(r["logger"] == "profilebase.server.worker" and r["level"] == "INFO" for r in started)


def test_a_bad_log_format_is_refused_with_a_clear_message(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "profilebase", "serve"],
        env=os.environ | {"PROFILEBASE_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "log_format must be text or json" in result.stderr


def test_every_line_of_a_request_carries_its_id():
    """A line logged anywhere while a request is served names it; other lines say '-'."""
    handler_records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_records.append(record)

    keep = Keep()
    keep.addFilter(logs.RequestIdFilter())
    keep.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("profilebase.test")
    logger.addHandler(keep)
    try:
        logger.warning("outside")
        token = logs.REQUEST_ID.set("abc")
        logger.warning("inside", extra={"batch_id": "b-1"})
        logs.REQUEST_ID.reset(token)
    finally:
        logger.removeHandler(keep)
    outside, inside = (json.loads(keep.format(r)) for r in handler_records)
    assert outside["request_id"] == "-" and inside["request_id"] == "abc"
    assert inside["batch_id"] == "b-1" and inside["message"] == "inside"
