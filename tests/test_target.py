"""The SDK against Adobe Target: its documented replies parsed, and a push over a socket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import uvicorn
from conftest import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from profilebase import Client
from profilebase.client.replies import (
    error_message,
    parse_batch_status_xml,
    parse_profile,
    parse_submitted,
    parse_update,
)

FIXTURES = Path(__file__).parent / "fixtures" / "target"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "url", "batch_id"),
    [
        (
            "submit_current.xml",
            "http://mboxedge45.tt.omtrdc.net/m2/demo/profile/batchStatus"
            "?batchId=demo-1701473848678-13029383",
            "demo-1701473848678-13029383",
        ),
        (
            "submit_v2_2019.xml",
            "http://mboxedge19.tt.omtrdc.net/m2/demo/v2/profile/batchStatus"
            "?batchId=demo-1845664501&m2Node=00",
            "demo-1845664501",
        ),
        (
            "submit_classic.xml",
            "http://mboxedge19.tt.omtrdc.net/m2/fedex/profile/batchStatus"
            "?batchId=fedex-1470380971&mboxPC=0000000000000-000000.19_05",
            "fedex-1470380971",
        ),
    ],
)
def test_submit_replies(name: str, url: str, batch_id: str):
    """Each documented batchUpdate reply yields its status URL, raw '&' included."""
    submitted = parse_submitted(fixture(name))
    assert submitted.success is True
    assert submitted.batch_status_url == url
    assert submitted.batch_id == batch_id
    assert submitted.message == "Batch submitted for processing"


def test_submit_reply_that_is_not_xml_at_all():
    """Broken markup still gives the URL, found as real clients find it."""
    submitted = parse_submitted(
        "<success>true</success><batchStatus>http://e/x?batchId=a-1&b</batchStatus><br>"
    )
    assert submitted.success and submitted.batch_status_url == "http://e/x?batchId=a-1&b"


def test_failed_submit_reply():
    submitted = parse_submitted(
        "<response><success>false</success><batchStatus/><message>bad header</message></response>"
    )
    assert not submitted.success and submitted.message == "bad header"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "status_default.xml",
            dict(
                batch_id="demo4-1701473848678-13029383",
                status="complete",
                batch_size=1,
                consumed=None,
                failed=None,
                failed_ids=(),
            ),
        ),
        (
            "status_details.xml",
            dict(
                batch_id="demo4-1701473848678-13029383",
                status="complete",
                batch_size=1,
                consumed=1,
                successful=1,
                not_found=0,
                failed=0,
            ),
        ),
        (
            "status_classic.xml",
            dict(
                batch_id="testclient -1470380971",
                status="complete",
                batch_size=5,
                consumed=None,
                successful=2,
                not_found=3,
                failed=0,
            ),
        ),
        (
            "status_v2_2019.xml",
            dict(
                batch_id="demo-1845664501",
                status="complete",
                batch_size=None,
                consumed=4,
                failed_ids=(),
            ),
        ),
        (
            "status_before_may2020.xml",
            dict(status="complete", batch_size=164, failed_ids=("some profile id",)),
        ),
        (
            "status_after_may2020.xml",
            dict(status="complete", batch_size=164, failed_ids=("some profile id",)),
        ),
    ],
)
def test_status_replies(name: str, expected: dict[str, object]):
    """Every documented batchStatus shape parses: counts where given, failed ids, trimmed id."""
    status = parse_batch_status_xml(fixture(name))
    for field, value in expected.items():
        assert getattr(status, field) == value, field
    assert status.finished


@pytest.mark.parametrize(
    ("body", "status", "finished"),
    [
        (
            "<response><batchId>x</batchId><status>incomplete</status></response>",
            "incomplete",
            False,
        ),
        ("<response><batchId>x</batchId><status>stuck</status></response>", "stuck", True),
        ("<response><batchId>x</batchId><status>QUEUED</status></response>", "queued", False),
        (
            "<response><batchId>x</batchId><profile><id>1</id><status>pending</status></profile>"
            "</response>",
            "incomplete",
            False,
        ),
    ],
)
def test_status_words(body: str, status: str, finished: bool):
    """Unknown words are kept and count as not finished; a pending profile means incomplete."""
    parsed = parse_batch_status_xml(body)
    assert parsed.status == status and parsed.finished is finished


def test_error_status_counts_as_failed():
    body = (
        "<response><batchId>x</batchId>"
        "<profile><id>7</id><status>error</status></profile></response>"
    )
    assert parse_batch_status_xml(body).failed_ids == ("7",)


def test_xml_bombs_are_refused():
    """defusedxml refuses entity expansion instead of parsing it."""
    bomb = (
        '<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        "<response><batchId>&b;</batchId></response>"
    )
    with pytest.raises(ValueError):
        parse_batch_status_xml(bomb)


def test_profile_current_shape():
    profile = parse_profile(json.loads(fixture("profile_current.json")))
    assert profile.visitor_id == "a1-mbox3rdPartyId"
    assert profile.values()["entity.id"] == "my-entityId"
    assert profile.values()["user.memberlevel"] == "0.0"
    assert profile.modified_at == datetime(
        2017, 8, 18, 17, 53, 39, 3000, timezone(timedelta(hours=-4))
    )
    assert len(profile.attributes) == 9


def test_profile_classic_shape():
    """Classic's short form: mboxPC and thirdPartyId, placeholder timestamps kept as unknown."""
    profile = parse_profile(json.loads(fixture("profile_classic.json")))
    assert profile.client == "demo8" and profile.visitor_id == "55557896156"
    assert profile.values()["dbAudience_Segment"] == "Software & Technology"
    assert profile.modified_at is None


@pytest.mark.parametrize("name", ["update_classic.xml", "update_current.txt"])
def test_update_replies(name: str):
    """The XML reply and the tag-stripped text the current docs show both mean success."""
    result = parse_update(fixture(name))
    assert result.success and result.message == "Request successfully submitted"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            fixture("fetch_not_found.json"),
            "No profile found for client demo with third party id=a1-mbox3rdPartyId",
        ),
        (fixture("admin_error.json"), "Unsupported features detected"),
        ("<response><success>false</success><message>nope</message></response>", "nope"),
        ("<html><body>Bad gateway</body></html>", "HTTP 502"),
        ("", "HTTP 502"),
    ],
)
def test_error_messages(text: str, message: str):
    assert error_message(text, 502) == message


# -- a stand-in for Target on a real socket, answering with the documented shapes ------------


class TargetDouble:
    """Answers Target's paths with its documented replies; knows nothing of profilebase."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bodies: list[bytes] = []
        self.polls = 0
        self.update_query = ""
        self.app = Starlette(
            routes=[
                Route("/m2/{client}/v2/profile/batchUpdate", self.batch_update, methods=["POST"]),
                Route("/m2/{client}/v2/profile/batchStatus", self.batch_status, methods=["GET"]),
                Route("/rest/v1/profiles/thirdPartyId/{id}", self.fetch, methods=["GET"]),
                Route("/m2/{client}/profile/update", self.update, methods=["POST"]),
            ]
        )

    async def batch_update(self, request: Request) -> Response:
        self.bodies.append(await request.body())
        batch = len(self.bodies)
        # Target's 2019 example: an edge URL with a raw '&' in it.
        return Response(
            "<response> <success>true</success> <batchStatus>"
            f"{self.url}/m2/demo/v2/profile/batchStatus?batchId=demo-{batch}&m2Node=00"
            "</batchStatus> <message>Batch submitted for processing</message> </response>",
            media_type="application/xml",
        )

    async def batch_status(self, request: Request) -> Response:
        self.polls += 1
        batch = int(request.query_params["batchId"].split("-")[1])
        assert request.query_params["m2Node"] == "00"
        assert request.query_params["showDetails"] == "true"
        lines = self.bodies[batch - 1].decode().splitlines()[1:]
        if self.polls == 1:
            return Response(
                f"<response><batchId>demo-{batch}</batchId><status>incomplete</status>"
                f"<batchSize>{len(lines)}</batchSize></response>"
            )
        failed = [line.split(",")[0] for line in lines if line.startswith("bad")]
        profiles = "".join(
            f"<profile><id>{i}</id><status>failed</status></profile>" for i in failed
        )
        return Response(
            f"<response><batchId>demo-{batch}</batchId><status>complete</status>"
            f"<batchSize>{len(lines)}</batchSize><consumedCount>{len(lines)}</consumedCount>"
            f"<successfulUpdates>{len(lines) - len(failed)}</successfulUpdates>"
            f"<profilesNotFound>0</profilesNotFound><failedUpdates>{len(failed)}</failedUpdates>"
            f"{profiles}</response>"
        )

    async def fetch(self, request: Request) -> Response:
        if request.path_params["id"] != "a1-mbox3rdPartyId":
            return JSONResponse(json.loads(fixture("fetch_not_found.json")), status_code=404)
        return Response(fixture("profile_current.json"), media_type="application/json")

    async def update(self, request: Request) -> Response:
        self.update_query = request.url.query
        return Response(fixture("update_current.txt"), media_type="text/plain")


@pytest.fixture
def target() -> Iterator[TargetDouble]:
    double = TargetDouble()
    config = uvicorn.Config(double.app, host="127.0.0.1", port=double.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield double
    server.should_exit = True
    thread.join(15)


def test_push_against_target(target: TargetDouble, tmp_path: Path):
    """Target's limits, its XML status URL followed as given, failed ids traced back to rows."""
    source = tmp_path / "crm.csv"
    source.write_text(
        "thirdPartyId,tier\nok-1,gold\nbad-2,silver\nok-3,caf\u00e9\n", encoding="utf-8"
    )
    waits: list[float] = []
    with Client(target.url, "demo", sleep=waits.append) as client:
        assert client.server_info().profilebase is False
        result = client.push(source, errors_out=tmp_path / "errors.csv")
    assert target.bodies == [b"batch=thirdPartyId,tier\nok-1,gold\nbad-2,silver\nok-3,caf%C3%A9\n"]
    assert waits == [30.0]  # Target allows 50 calls a minute: poll slowly
    assert result.applied == 2 and not result.ok
    assert [(f.record, f.id, f.sent) for f in result.failures] == [(2, "bad-2", True)]
    assert "Target does not say why" in result.failures[0].reason
    errors = (tmp_path / "errors.csv").read_text(encoding="utf-8").splitlines()
    assert errors[0] == "thirdPartyId,tier,reason" and errors[1].startswith("bad-2,silver,Target")


def test_dry_run_against_target_checks_locally_only(target: TargetDouble, tmp_path: Path):
    """Target has no dry run: nothing is sent, local checks still find bad rows."""
    source = tmp_path / "crm.csv"
    source.write_text("thirdPartyId,a\nok,1\nno/slash,2\n", encoding="utf-8")
    with Client(target.url, "demo") as client:
        result = client.push(source, dry_run=True)
    assert target.bodies == []
    assert [f.id for f in result.failures] == ["no/slash"] and not result.failures[0].sent


def test_fetch_and_update_against_target(target: TargetDouble):
    with Client(target.url, "demo") as client:
        profile = client.get_profile("a1-mbox3rdPartyId", key="thirdPartyId")
        assert profile is not None and profile.values()["country"] == "france"
        assert client.get_profile("nobody", key="thirdPartyId") is None
        result = client.update_profile(
            "crm 1", {"city": "New York City", "a&b": "x=y"}, key="thirdPartyId"
        )
    assert result.success
    assert (
        target.update_query
        == "mbox3rdPartyId=crm%201&profile.city=New%20York%20City&profile.a%26b=x%3Dy"
    )


def test_target_host_is_known_without_asking(tmp_path: Path):
    """A *.tt.omtrdc.net base URL is Target: no probe for profilebase's extensions is sent."""
    client = Client("https://demo.tt.omtrdc.net", "demo")
    assert client.is_target and client.server_info().profilebase is False
    assert client.server_info().limits.max_batch_rows == 500_000
    client.close()
