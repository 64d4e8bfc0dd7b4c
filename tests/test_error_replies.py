"""What the log and the client see when a request fails: an aborted upload is one warning
line; a real 500 is logged once, with its traceback, under an error id the reply quotes;
no reply names an exception class, SQL or a library. Real `profilebase serve` processes,
their logs captured."""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer
from helpers import run_sql, xml_fields
from test_crash import ServerProcess, wait_until

pytestmark = pytest.mark.slow

UPDATE = "/m2/demo/v2/profile/batchUpdate"
#: Words that name internals: none may appear in a reply.
INTERNALS = re.compile(
    r"sqlite|psycopg|postgres|duckdb|OperationalError|ProgrammingError|UndefinedTable|"
    r"Traceback|SELECT|FROM |relation|no such table|Exception",
    re.IGNORECASE,
)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


@pytest.fixture
def server(database_url: str, log_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(database_url, log_path, workers="0")
    yield process
    process.kill()


def warnings_and_errors(log_path: Path) -> list[str]:
    return [
        line
        for line in log_path.read_text().splitlines()
        if " WARNING " in line or " ERROR " in line or line.startswith(("WARNING", "ERROR"))
    ]


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_client_that_hangs_up_mid_upload_is_one_warning_line(
    tmp_path: Path, log_path: Path, reset: bool
):
    """Headers and 5,000 of 100,000 body bytes, then the client goes (FIN or RST): one
    warning line with its address, the request and the bytes received; no traceback."""
    server = ServerProcess(f"sqlite:///{tmp_path}/hangup.db", log_path, workers="0")
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        port = sock.getsockname()[1]
        sock.sendall(
            f"POST {UPDATE} HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"batch=thirdPartyId,tier\n"
            + b"crm-1,gold\n" * 452
        )
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_until(lambda: "hung up" in log_path.read_text(), timeout=30)
        assert httpx.get(server.url + "/healthz").status_code == 200  # and it serves on
    finally:
        server.kill()
    lines = warnings_and_errors(log_path)
    assert len(lines) == 1, lines
    match = re.search(
        rf"client 127\.0\.0\.1:{port} hung up during POST {UPDATE} after ([\d,]+) bytes of "
        r"the body \(Content-Length 100000\)",
        lines[0],
    )
    assert match, lines[0]
    assert int(match.group(1).replace(",", "")) <= 5000
    assert "Traceback" not in log_path.read_text()


def quoted_error_id(reply: httpx.Response, message: str) -> str:
    """The error id a 500's ``message`` quotes; it names no internal, and the id is the
    request's id, which the reply carries in X-Request-Id too."""
    assert not INTERNALS.search(reply.text), reply.text
    found = re.fullmatch(
        r"Internal server error \(error id ([0-9A-Za-z._-]{1,64})\); the server log has the "
        r"details\.",
        message,
    )
    assert found, message
    assert reply.headers["x-request-id"] == found.group(1)
    return found.group(1)


def break_schema(database_url: str) -> None:
    """Damage the schema from outside, as a careless hand might: the batches table is gone."""
    run_sql(database_url, "ALTER TABLE batches RENAME TO batches_moved")


def test_an_unexpected_error_is_logged_once_and_its_reply_quotes_the_id(
    server: ServerProcess, database_url: str, log_path: Path
):
    """A real failure inside a handler (a table renamed away under the server): each reply is
    a 500 in the endpoint's format saying only that there was an internal error and its
    error id; the log has one line per request with that id and one traceback each."""
    break_schema(database_url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        xml_reply = http.get("/m2/demo/profile/batchStatus", params={"batchId": "demo-1-1"})
        json_reply = http.get("/profilebase/v1/clients/demo/batches/demo-1-1")
        batch = http.post(UPDATE, content=b"batch=thirdPartyId,tier\ncrm-1,gold\n")
    assert xml_reply.status_code == json_reply.status_code == batch.status_code == 500
    ids = []
    for reply, message in [
        (xml_reply, xml_fields(xml_reply)["message"]),
        (json_reply, json_reply.json()["message"]),
        (batch, xml_fields(batch)["message"]),
    ]:
        ids.append(quoted_error_id(reply, message))
    log = log_path.read_text()
    assert log.count("Traceback") == 3, log
    assert "Exception in ASGI application" not in log
    for error_id in ids:
        errors = [line for line in log.splitlines() if error_id in line and " ERROR " in line]
        assert len(errors) == 1, errors


def test_not_found_and_bad_requests_still_answer_plainly(server: ServerProcess):
    """Errors the user can fix keep their own message and carry no error id."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        missing = http.get("/no/such/path")
        bad = http.post(UPDATE, content=b"thirdPartyId,tier\n")
    assert missing.status_code == 404
    assert "No endpoint at /no/such/path" in missing.json()["message"]
    assert bad.status_code == 400
    assert "error id" not in bad.text


#: Request heads the HTTP parser cannot read, each after a request line.
UNREADABLE_HEADS = {
    "content-length-no-number": b"Content-Length: #x\r\n",
    "nul-in-a-header": b"X-Note: a\x00b\r\n",
    "bare-cr": b"X-Note: a\rb\r\n",
    "header-without-colon": b"no colon here\r\n",
    "space-in-a-header-name": b"X Note: a\r\n",
}


def unreadable_reply(port: int, path: bytes, head: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``GET path`` with ``head`` (a header the HTTP parser cannot read) and read the
    reply to the close: status line, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + head + b"\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head_text, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head_text.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize("head", UNREADABLE_HEADS.values(), ids=UNREADABLE_HEADS.keys())
def test_a_request_the_parser_cannot_read_is_answered_in_the_endpoints_format(
    live_server: LiveServer, head: bytes
):
    """400 in JSON, or in Target's XML under /m2/ (with batchStatus on a batchUpdate), as
    every other refusal of those endpoints; never the HTTP library's plain text. A path of
    invalid UTF-8 or 1,000 times the usual length changes nothing; the server serves on."""
    for path in [b"/rest/v1/delivery?client=demo", b"/rest/v1/profiles/%FF\xff", b"/x" * 20_000]:
        status, headers, body = unreadable_reply(live_server.port, path, head)
        assert status == "HTTP/1.1 400 Bad Request", path[:40]
        assert headers["content-type"] == "application/json"
        reply = json.loads(body)
        assert reply["status"] == 400 and "not valid HTTP/1.1" in reply["message"]
        assert int(headers["content-length"]) == len(body)
    for path, batch_status in [
        (b"/m2/demo/profile/update?mbox3rdPartyId=a", False),
        (b"/m2/demo/v2/profile/batchUpdate", True),
    ]:
        status, headers, body = unreadable_reply(live_server.port, path, head)
        assert status == "HTTP/1.1 400 Bad Request", path
        assert headers["content-type"] == "application/xml", path
        assert b"<success>false</success>" in body and b"not valid HTTP/1.1" in body
        assert (b"<batchStatus" in body) is batch_status, body
    assert httpx.get(f"{live_server.url}/healthz").status_code == 200
