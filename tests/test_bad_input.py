"""Bad input, class by class: what the server answers and what it writes (docs/bad-input.md).

Every case goes over real HTTP to a live server, on SQLite and on PostgreSQL. A refused
request must write nothing: no batch, no work unit, no row counted against the quota, no
profile. An accepted batch is applied and must write exactly what the table says, no
more: each case compares the client's whole export with the profiles it expects.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import LiveServer
from helpers import batch_id_of, status, submit, xml_fields

from profilebase.server.settings import Settings
from profilebase.server.storage import Store

EXT = "/profilebase/v1/clients/demo"
MB_50 = 52_428_800
TINY = 1000


@pytest.fixture
def settings(database_url: str, request: pytest.FixtureRequest) -> Settings:
    """Default limits; units of 1,000 lines, so a 500,000-row batch is 501 units (the first of
    500 lines), not 10,000."""
    overrides = getattr(request, "param", {})
    return Settings(database=database_url, workers=0, unit_rows=1000, **overrides)


def exported(http: httpx.Client) -> dict[str, dict[str, str]]:
    """Every stored profile of the client, by stored key (``t:`` marks a thirdPartyId)."""
    response = http.get("/rest/v1/profiles", params={"client": "demo"})
    assert response.status_code == 200
    profiles = {}
    for line in response.text.splitlines():
        profile = json.loads(line)
        key = ("t:" if "thirdPartyId" in profile else "") + profile["visitorId"]
        profiles[key] = {name: a["value"] for name, a in profile["profileAttributes"].items()}
    return profiles


def nothing_written(http: httpx.Client, store: Store) -> None:
    """No batch, no unit, no row counted, no profile."""
    assert store.recent_batches(1, 0) == []
    assert store.pending_units() == 0
    assert store.rows_accepted_since(1, 0) == 0
    assert exported(http) == {}


def raw_request(port: int, data: bytes, shut: bool = False, timeout: float = 10) -> bytes:
    """Send bytes as they are on a new connection and read the reply until the server closes
    or stops answering (``shut``: half-close after sending, as a client done sending)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        if shut:
            connection.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := connection.recv(65536):
                reply += chunk
                if reply.count(b"</response>") or reply.endswith(b"request received."):
                    break
        except TimeoutError:
            pass
    return reply


POST = b"POST /m2/demo/v2/profile/batchUpdate HTTP/1.1\r\nHost: 127.0.0.1\r\n"


# -- refused batches: the answer, and nothing written ------------------------------------------

REFUSED = [
    ("empty body", b"", {}, 400, "must start with `batch=`"),
    ("missing batch=", b"thirdPartyId,a\nx,1\n", {}, 400, "must start with `batch=`"),
    ("batch= and nothing else", b"batch=", {}, 400, "has no header"),
    ("blank header line", b"batch=\nx,1\n", {}, 400, "has no header"),
    ("unknown key column", b"batch=ecid,a\nx,1\n", {}, 400, "`pcId` or `thirdPartyId`"),
    ("key column in the wrong case", b"batch=PCID,a\nx,1\n", {}, 400, "got 'PCID'"),
    (
        "Experience Cloud ID as key",
        b"batch=marketingCloudVisitorId,a\nx,1\n",
        {},
        400,
        "Experience Cloud ID is not supported",
    ),
    ("repeated name", b"batch=thirdPartyId,a,b,a\nx,1\n", {}, 400, "repeats the attribute name"),
    ("empty name", b"batch=thirdPartyId,a,,b\nx,1\n", {}, 400, "column 3 is empty"),
    ("profile. prefix", b"batch=pcId,profile.a\n1,x\n", {}, 400, "without the `profile.` prefix"),
    ("bad % in a name", b"batch=thirdPartyId,a%zz\nx,1\n", {}, 400, "invalid percent-encoding"),
    ("invalid UTF-8 in a name", b"batch=thirdPartyId,\xff\nx,1\n", {}, 400, "invalid UTF-8"),
    ("overlong UTF-8 in a name", b"batch=thirdPartyId,%C0%AF\nx,1\n", {}, 400, "invalid UTF-8"),
    (
        "multipart without boundary",
        b"batch=thirdPartyId,a\nx,1\n",
        {"content-type": "multipart/form-data"},
        400,
        "has no boundary",
    ),
    (
        "500,001 rows",
        b"batch=thirdPartyId\n" + b"r\n" * 500_001,
        {},
        413,
        "more than 500,000 data rows",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "code", "fragment"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refused_batches_say_why_and_write_nothing(
    http: httpx.Client, store: Store, body: bytes, headers: dict, code: int, fragment: str
):
    """Each malformed batch is refused with its status and a message saying what to fix."""
    response = http.post("/m2/demo/v2/profile/batchUpdate", content=body, headers=headers)
    assert response.status_code == code
    fields = xml_fields(response)
    assert fields["success"] == "false" and fields["batchStatus"] == ""
    assert fragment in fields["message"]
    nothing_written(http, store)


@pytest.mark.parametrize("settings", [{"max_batch_bytes": 300}], indirect=True)
@pytest.mark.parametrize(("size", "code"), [(299, 200), (300, 413), (301, 413)])
def test_byte_limit_at_one_under_and_one_past(http: httpx.Client, store: Store, size, code):
    """A body must be smaller than max_batch_bytes: one byte under is accepted, at the limit
    and past it refused (here with a limit of 300 bytes)."""
    head = b"batch=thirdPartyId,a\nk,"
    response = submit(http, head + b"v" * (size - len(head) - 1) + b"\n")
    assert response.status_code == code
    if code == 413:
        assert "must be smaller than 300 bytes" in xml_fields(response)["message"]
        nothing_written(http, store)
    else:
        assert store.rows_accepted_since(1, 0) == 1


@pytest.mark.parametrize("declared", [MB_50, MB_50 + 1, 10**15])
def test_a_declared_length_of_50_mb_or_more_is_refused_before_reading(
    live_server: LiveServer, http: httpx.Client, store: Store, declared: int
):
    """With the default limit, Content-Length 52,428,800 or more is a 413 before any body byte."""
    reply = raw_request(live_server.port, POST + b"Content-Length: %d\r\n\r\n" % declared)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"must be smaller than 52,428,800 bytes (max_batch_bytes)" in reply
    nothing_written(http, store)


def test_a_streamed_body_reaching_50_mb_is_refused(http: httpx.Client, store: Store):
    """Without Content-Length the default limit is checked while streaming."""
    line = b"k," + b"v" * 1021 + b"\n"  # 1 KB lines: 51,200 rows, far below the row limit

    def chunks() -> Iterator[bytes]:
        yield b"batch=thirdPartyId,a\n"
        sent = 21
        while sent < MB_50:
            piece = (line * 1024)[: MB_50 - sent]
            sent += len(piece)
            yield piece

    try:
        response = http.post("/m2/demo/v2/profile/batchUpdate", content=chunks())
    except httpx.WriteError:  # the server may answer and close before the last chunk
        pass
    else:
        assert response.status_code == 413
        assert "must be smaller than 52,428,800 bytes" in xml_fields(response)["message"]
    nothing_written(http, store)


def test_exactly_500_000_rows_are_accepted(http: httpx.Client, store: Store):
    """The row limit itself is accepted: all 500,000 rows are stored, counted and queued."""
    response = submit(http, b"batch=thirdPartyId\n" + b"r\n" * 500_000)
    assert response.status_code == 200, response.text
    fields = status(http, batch_id_of(response))
    assert fields["batchSize"] == "500000" and fields["status"] == "incomplete"
    assert store.rows_accepted_since(1, 0) == 500_000
    assert store.pending_units() == 501  # units of 1,000 lines, the first of 500


# -- accepted batches: the rows that fail, and exactly what is written -------------------------

LONG_PC_ID = "p" * 128
ACCEPTED = [
    ("header only", b"batch=thirdPartyId,a\n", (0, 0, 0), {}, {}),
    ("blank lines only", b"batch=thirdPartyId,a\n\n \n\t\n", (0, 0, 0), {}, {}),
    (
        "bad percent-encoding in cells",
        b"batch=thirdPartyId,a\np1,%zz\np2,abc%\np3,ok%21\n%zz,x\n",
        (4, 1, 3),
        {"t:p3": {"a": "ok!"}},
        {2: "invalid percent-encoding", 3: "invalid percent-encoding", 5: "invalid percent"},
    ),
    (
        "invalid and overlong UTF-8 in cells",
        b"batch=thirdPartyId,a\n"
        b"u1,%C0%AF\nu2,%E0%80%AF\nu3,%ED%A0%80\nu4,%C3\nu5,\xff\xfe\nu6,\xc0\xaf\nu7,%C3%A9\n",
        (7, 1, 6),
        {"t:u7": {"a": "é"}},
        {line: "invalid UTF-8" for line in range(2, 8)},
    ),
    (
        "quoted cells",
        b'batch=thirdPartyId,a,b\nq1,"hello"\nq2,"a,b"\nq3,"x,y",z\n',
        (3, 2, 1),
        {"t:q1": {"a": '"hello"'}, "t:q2": {"a": '"a', "b": 'b"'}},
        {4: "row has 4 cells but the header has 3 columns"},
    ),
    (
        "a row with 10,000 cells",
        b"batch=thirdPartyId,a,b\nw1," + b",".join([b"v"] * 9_999) + b"\nw2,ok\n",
        (2, 1, 1),
        {"t:w2": {"a": "ok"}},
        {2: "row has 10000 cells but the header has 3 columns"},
    ),
    (
        "thirdPartyIds with +, /, spaces and no id",
        b"batch=thirdPartyId,a\nsp+ace,1\nsp%20ace2,2\nplus%2B,3\nslash%2F,4\nraw/,5\n"
        b"  padded\t,6\n,7\n",
        (7, 3, 4),
        {"t:sp ace": {"a": "1"}, "t:sp ace2": {"a": "2"}, "t:padded": {"a": "6"}},
        {4: "must not contain '+' or '/'", 5: "'+' or '/'", 6: "'+' or '/'", 8: "empty id"},
    ),
    (
        "pcIds at and past the limits",
        b"batch=pcId,a\n"
        + LONG_PC_ID.encode()
        + b",1\n"
        + LONG_PC_ID.encode()
        + b"q,2\na.b.c,3\n1368007744041-575948.01_00,4\nsp+ace,5\n",
        (5, 3, 2),
        {LONG_PC_ID: {"a": "1"}, "1368007744041-575948.01_00": {"a": "4"}, "sp ace": {"a": "5"}},
        {3: "129 characters long; at most 128", 4: "at most one '.'"},
    ),
    (
        "markup and SQL-looking names and values",
        b"batch=thirdPartyId,%3Cscript%3Ealert(1)%3C%2Fscript%3E,a'%3B+DROP+TABLE+profiles%3B--,"
        b"%22%3B+DELETE+FROM+batches+--\n"
        b"%3Cx%26y%3E,%3Cb%3E%26amp%3B%3C%2Fb%3E,'+OR+'1'%3D'1,%5D%5D%3E%3C%2Fresponse%3E\n"
        b"'%3B--,1,2,3\n",
        (2, 2, 0),
        {
            "t:<x&y>": {
                "<script>alert(1)</script>": "<b>&amp;</b>",
                "a'; DROP TABLE profiles;--": "' OR '1'='1",
                '"; DELETE FROM batches --': "]]></response>",
            },
            "t:';--": {
                "<script>alert(1)</script>": "1",
                "a'; DROP TABLE profiles;--": "2",
                '"; DELETE FROM batches --': "3",
            },
        },
        {},
    ),
]


@pytest.mark.parametrize(
    ("body", "counts", "profiles", "reasons"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted_batches_write_exactly_their_good_rows(
    http: httpx.Client,
    drain,
    body: bytes,
    counts: tuple[int, int, int],
    profiles: dict[str, dict[str, str]],
    reasons: dict[int, str],
):
    """The batch is accepted; each bad row fails with its reason, the others are applied."""
    response = submit(http, body)
    assert response.status_code == 200, response.text
    batch_id = batch_id_of(response)
    drain()
    size, ok, failed = counts
    fields = status(http, batch_id)  # parsed as XML: the reply stays well-formed
    assert fields["status"] == "complete"
    assert [fields[name] for name in ("batchSize", "consumedCount")] == [str(size)] * 2
    assert (fields["successfulUpdates"], fields["failedUpdates"]) == (str(ok), str(failed))
    assert exported(http) == profiles
    failures = http.get(f"{EXT}/batches/{batch_id}/failures").json()["failures"]
    assert {f["line"] for f in failures} == set(reasons)
    for failure in failures:
        assert reasons[failure["line"]] in failure["reason"]


def test_nul_in_values(http: httpx.Client, drain, database_url: str):
    """U+0000 in a value, encoded or raw: SQLite stores it, PostgreSQL fails the row and says why."""
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nn1,x%00y\nn2,x\x00y\nok,v\n"))
    drain()
    fields = status(http, batch_id)
    failures = http.get(f"{EXT}/batches/{batch_id}/failures").json()["failures"]
    if database_url.startswith("sqlite"):
        assert fields["successfulUpdates"] == "3"
        assert exported(http) == {
            "t:n1": {"a": "x\x00y"},
            "t:n2": {"a": "x\x00y"},
            "t:ok": {"a": "v"},
        }
    else:
        assert (fields["successfulUpdates"], fields["failedUpdates"]) == ("1", "2")
        assert exported(http) == {"t:ok": {"a": "v"}}
        assert [f["line"] for f in failures] == [2, 3]
        assert all("cannot store the character U+0000" in f["reason"] for f in failures)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_nul_in_an_id_fails_the_row_and_in_a_name_is_stored_on_sqlite(http: httpx.Client, drain):
    """An id with U+0000 fails its row by the id rule; SQLite keeps U+0000 in an attribute
    name as sent (PostgreSQL: tests/test_narrowing.py)."""
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a%00b\nn%001,x\nok,y\n"))
    drain()
    assert status(http, batch_id)["successfulUpdates"] == "1"
    assert status(http, batch_id)["failedUpdates"] == "1"
    assert exported(http) == {"t:ok": {"a\x00b": "y"}}


def test_nul_in_single_updates_and_page_calls(http: httpx.Client, drain, database_url: str):
    """SQLite stores U+0000 from a single update or page call; PostgreSQL answers 400, changes
    nothing, and says why."""
    drain_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nk,v\n"))
    drain()
    assert status(http, drain_id)["status"] == "complete"
    update = http.get("/m2/demo/profile/update?mbox3rdPartyId=k&profile.a=x%00y")
    visit = http.post(
        "/rest/v1/delivery",
        params={"client": "demo", "sessionId": "s"},
        json={"id": {"tntId": "t1"}, "execute": {"pageLoad": {"profileParameters": {"b": "\0"}}}},
    )
    if database_url.startswith("sqlite"):
        assert (update.status_code, visit.status_code) == (200, 200)
        assert exported(http) == {"t:k": {"a": "x\x00y"}, "t1": {"b": "\x00"}}
    else:
        assert (update.status_code, visit.status_code) == (400, 400)
        assert "U+0000" in xml_fields(update)["message"]
        assert "U+0000" in visit.json()["message"]
        assert exported(http) == {"t:k": {"a": "v"}}


def test_markup_from_single_updates_and_page_calls_is_kept_verbatim(http: httpx.Client):
    """Markup- and SQL-looking names and values are data: stored and returned as sent."""
    name, value = "<img src=x onerror=alert(1)>", "'); DROP TABLE profiles; --"
    visit = http.post(
        "/rest/v1/delivery",
        params={"client": "demo", "sessionId": "s"},
        json={"id": {"tntId": "t1"}, "execute": {"pageLoad": {"profileParameters": {name: value}}}},
    )
    assert visit.status_code == 200
    update = http.post("/m2/demo/profile/update", data={"mboxPC": "t1", "profile.<b>": "]]>&lt;"})
    assert update.status_code == 200 and xml_fields(update)["success"] == "true"
    assert exported(http) == {"t1": {name: value, "<b>": "]]>&lt;"}}


ODD_REQUESTS = [
    ("GET", "/nope", 404, "No endpoint at /nope"),
    ("GET", "/m2/demo/nope", 404, "No endpoint at /m2/demo/nope"),
    ("GET", "/m2/demo/v2/profile/batchUpdate", 405, "Method GET is not allowed"),
    ("GET", "/m2/demo/profile/batchStatus", 400, "batchId query parameter is missing"),
    ("GET", "/m2/demo/profile/batchStatus?batchId=%3Cb%3E%26", 404, "No batch '<b>&'"),
    ("GET", "/m2/%3Cb%3E/profile/batchStatus?batchId=x", 404, "Unknown client '<b>'"),
    ("GET", "/rest/v1/profiles/%3Cb%3E?client=demo", 404, "with mboxPC=<b>"),
    ("GET", "/rest/v1/profiles/x?client=%27%3B--", 404, 'Unknown client "\';--"'),
    # A long name is quoted in part, not echoed back whole.
    ("GET", "/rest/v1/profiles/x?client=" + "a" * 5000, 404, f"'{'a' * 64}'… (5,000 characters"),
    ("GET", f"/m2/{'b' * 65}/profile/batchStatus?batchId=x", 404, f"'{'b' * 64}'… (65 char"),
]


@pytest.mark.parametrize(("method", "path", "code", "fragment"), ODD_REQUESTS)
def test_unknown_paths_methods_and_ids_are_answered_in_the_endpoints_format(
    http: httpx.Client, store: Store, method: str, path: str, code: int, fragment: str
):
    """XML under /m2/, JSON elsewhere, always well-formed, echoing input as text only."""
    response = http.request(method, path)
    assert response.status_code == code
    if path.startswith("/m2/"):
        message = xml_fields(response)["message"]
    else:
        message = response.json()["message"]
    assert fragment in message and len(message) < 1000
    nothing_written(http, store)


# -- the HTTP layer: Content-Length, abandoned uploads, many tiny batches ----------------------


def test_bytes_past_the_content_length_are_never_part_of_the_batch(
    live_server: LiveServer, http: httpx.Client, drain
):
    """HTTP framing decides where the body ends: the bytes after the declared ones are read
    as the next request, which is not one (400, connection closed); they never reach a
    batch, whatever became of the declared bytes."""
    body = b"batch=thirdPartyId,a\nk1,v1\nk2,v2\n"
    reply = raw_request(live_server.port, POST + b"Content-Length: 27\r\n\r\n" + body)
    assert b"HTTP/1.1 400 " in reply
    drain()
    assert exported(http) in ({}, {"t:k1": {"a": "v1"}})


@pytest.mark.parametrize(
    "header",
    [b"Content-Length: abc", b"Content-Length: -5", b"Content-Length: 5\r\nContent-Length: 9"],
    ids=["not a number", "negative", "two different values"],
)
def test_an_invalid_content_length_is_400(
    live_server: LiveServer, http: httpx.Client, store: Store, header: bytes
):
    """The HTTP server refuses the request before the application sees it."""
    body = b"batch=thirdPartyId,a\nk1,v1\n"
    reply = raw_request(live_server.port, POST + header + b"\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.1 400 ")
    nothing_written(http, store)


def test_transfer_encoding_beside_content_length_is_refused(
    live_server: LiveServer, http: httpx.Client, store: Store
):
    """Both headers at once (the shape of request smuggling) are refused by the HTTP server
    before the application (RFC 9112 allows it); nothing is written."""
    body = b"batch=thirdPartyId,a\nk1,v1\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    headers = b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = raw_request(live_server.port, POST + headers + chunked)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert exported(http) == {}


@pytest.mark.parametrize(
    "sent",
    [b"", b"batch=thirdPartyId,a\nk1,v1\nk2,v"],
    ids=["after the headers", "in the middle of a line"],
)
def test_an_abandoned_upload_writes_nothing(
    settings: Settings, store: Store, http: httpx.Client, sent: bytes
):
    """A client that announces more bytes than it sends and hangs up leaves no trace."""
    finished = threading.Event()

    def wrap(app):  # type: ignore[no-untyped-def]
        async def watched(scope, receive, send):  # type: ignore[no-untyped-def]
            try:
                await app(scope, receive, send)
            finally:
                finished.set()

        return watched

    with LiveServer(settings, store, workers=0, wrap=wrap) as server:
        raw_request(server.port, POST + b"Content-Length: 1000\r\n\r\n" + sent, shut=True)
        assert finished.wait(10)
    nothing_written(http, store)


@pytest.mark.slow
def test_a_thousand_tiny_batches_each_complete(http: httpx.Client, store: Store, drain):
    """1,000 one-row batches, each with a header of its own (one in 51 a v1 batch), are each
    accepted and complete with exact counts; the last value of each profile wins."""
    ids = []
    started = time.monotonic()
    for n in range(TINY):
        body = b"batch=thirdPartyId,a,h%d\nk%d,%d\n" % (n, n % 50, n)
        response = submit(http, body, v2=n % 51 != 0)
        assert response.status_code == 200, response.text
        ids.append(batch_id_of(response))
    accepted = time.monotonic()
    drain()
    drained = time.monotonic()
    assert store.pending_units() == 0
    for n, batch_id in enumerate(ids):
        fields = status(http, batch_id)
        found = "1" if n == 0 else "0"  # only the first row for k0 comes before any v2 row for it
        assert (fields["status"], fields["consumedCount"], fields["profilesNotFound"]) == (
            "complete",
            "1",
            found,
        ), n
    assert exported(http) == {f"t:k{k}": {"a": str(TINY - 50 + k)} for k in range(50)}
    print(
        f"\n{TINY} tiny batches: accepted in {accepted - started:.1f} s, "
        f"applied in {drained - accepted:.1f} s"
    )
