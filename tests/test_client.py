"""The SDK against a real profilebase server over a socket: push, status, profiles, faults."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer, free_port
from proxy import FaultyProxy

from profilebase import Client
from profilebase.client.push import PushProgress
from profilebase.client.retry import RetryPolicy
from profilebase.errors import (
    BatchRejected,
    ClientError,
    InputError,
    RemoteRejected,
    RemoteUnavailable,
)
from profilebase.models import now_ms
from profilebase.server import clients
from profilebase.server.settings import Settings
from profilebase.server.storage import Store

Drain = Callable[[], None]


def values(sdk: Client, identifier: str, key: str = "thirdPartyId") -> dict[str, str] | None:
    profile = sdk.get_profile(identifier, key=key)
    return None if profile is None else profile.values()


MESSY = {
    "excel-semicolon-bom-crlf.csv": (
        "\ufeffKundennummer;Stadt;Notiz;Leer\r\n"
        '"k-1";München;"sagt ""hallo""; geht";\r\n'
        'k-2;東京;"zwei\r\nZeilen, mit Komma";\r\n'
        "\r\n"
        "k-3;Łódź 🎉;  Leerzeichen  ;\r\n"
    ).encode("utf-8"),
    "tabs.tsv": (
        "id\tcity\tnote\nk-1\tMünchen\ta,b;c\nk-2\t東京\t\nk-3\tŁódź 🎉\t%41+b&c=d\n"
    ).encode(),
    "lf-comma-quoted.csv": (
        'id,city,note\nk-1,"München","x\ny"\nk-2,東京,"""quoted"""\nk-3,Łódź 🎉,\n'
    ).encode(),
}
EXPECTED = {
    "excel-semicolon-bom-crlf.csv": {
        "k-1": {"Stadt": "München", "Notiz": 'sagt "hallo"; geht'},
        "k-2": {"Stadt": "東京", "Notiz": "zwei\r\nZeilen, mit Komma"},
        "k-3": {"Stadt": "Łódź 🎉", "Notiz": "  Leerzeichen  "},
    },
    "tabs.tsv": {
        "k-1": {"city": "München", "note": "a,b;c"},
        "k-2": {"city": "東京"},
        "k-3": {"city": "Łódź 🎉", "note": "%41+b&c=d"},
    },
    "lf-comma-quoted.csv": {
        "k-1": {"city": "München", "note": "x\ny"},
        "k-2": {"city": "東京", "note": '"quoted"'},
        "k-3": {"city": "Łódź 🎉"},
    },
}


@pytest.mark.parametrize("name", sorted(MESSY))
@pytest.mark.parametrize("compressed", [False, True])
def test_messy_exports_end_as_exactly_the_right_profiles(
    sdk: Client, tmp_path: Path, name: str, compressed: bool
):
    """Quotes, embedded newlines and delimiters, BOM, semicolons, tabs, CRLF, non-Latin, gzip."""
    data = gzip.compress(MESSY[name]) if compressed else MESSY[name]
    path = tmp_path / (name + (".gz" if compressed else ""))
    path.write_bytes(data)
    result = sdk.push(path)
    assert result.ok, result.failures
    assert result.rows_read == result.rows_sent == result.applied == 3
    for identifier, expected in EXPECTED[name].items():
        assert values(sdk, identifier) == expected


def test_push_rows_given_as_mappings(sdk: Client):
    result = sdk.push([{"id": "m-1", "a": "x", "b": None}, {"id": "m-2", "b": 7}])
    assert result.ok and values(sdk, "m-1") == {"a": "x"} and values(sdk, "m-2") == {"b": "7"}


def test_failed_rows_come_back_and_push_cleanly_once_fixed(sdk: Client, tmp_path: Path):
    """Refused and failed rows land in the errors file with reasons; fixed, they push cleanly."""
    source = tmp_path / "crm.csv"
    source.write_text(
        "id;tier;note\n"
        "ok-1;gold;fine\n"
        "bad+1;silver;plus in id\n"
        ";bronze;no id\n"
        "ok-2;gold;x;y\n"
        "ok-3;silver;\n",
        encoding="utf-8",
    )
    errors = tmp_path / "errors.csv"
    result = sdk.push(source, errors_out=errors)
    assert not result.ok and result.applied == 2 and result.refused == 3
    assert [(f.record, f.line) for f in result.failures] == [(2, 3), (3, 4), (4, 5)]
    written = errors.read_text(encoding="utf-8").splitlines()
    assert written[0] == "id;tier;note;reason"
    assert written[1].startswith("bad+1;silver;plus in id;thirdPartyId must not contain '+'")
    assert written[2].startswith(";bronze;no id;empty id")
    assert written[3].startswith("ok-2;gold;x;y;the row has 4 cells")
    fixed = errors.read_text(encoding="utf-8")
    fixed = (
        fixed.replace("bad+1", "bad-1").replace(";bronze", "new-1;bronze").replace(";x;y;", ";x y;")
    )
    errors.write_text(fixed, encoding="utf-8")
    again = sdk.push(errors)
    assert again.ok and again.applied == 3 and again.ignored_columns == ("reason",)
    assert values(sdk, "bad-1") == {"tier": "silver", "note": "plus in id"}
    assert values(sdk, "ok-2") == {"tier": "gold", "note": "x y"}


class TestProfileSize:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(database=database_url, workers=0, max_profile_bytes=500)

    def test_rows_the_server_fails_are_traced_to_input_rows(self, sdk: Client, tmp_path: Path):
        """A row that fails only when applied (profile too large) maps back to its input line."""
        source = tmp_path / "crm.csv"
        big = "x" * 300
        source.write_text(f"id,a,b\nsmall,1,\nbig,{big},\n\nbig,,{big}\n", encoding="utf-8")
        result = sdk.push(source, errors_out=tmp_path / "errors.csv")
        assert result.applied == 2 and result.failed == 1 and result.refused == 0
        failure = result.failures[0]
        assert (failure.record, failure.line, failure.id, failure.sent) == (3, 5, "big", True)
        assert "max_profile_bytes" in failure.reason and failure.cells == ("big", "", big)
        assert values(sdk, "big") == {"a": big}


def test_sdk_primitives(sdk: Client, store: Store):
    """batch_update, batch_status, wait, failed_rows and get_profile, one by one."""
    body = b"batch=pcId,a\n111-1.01_00,x\n222,%zz\n"
    submitted = sdk.batch_update(body)
    assert submitted.success and submitted.batch_id.startswith("demo-")
    queued = sdk.batch_status(submitted)
    assert queued.status == "incomplete" and queued.state is not None and queued.state == "queued"
    done = sdk.wait(submitted)
    assert done.status == "complete" and done.successful == 1 and done.failed == 1
    assert done.started_at is not None and done.finished_at is not None
    assert sdk.batch_status(submitted.batch_status_url) == sdk.batch_status(submitted.batch_id)
    failed = sdk.failed_rows(submitted.batch_id)
    assert [(f.line, f.id) for f in failed] == [(3, "222")] and "percent" in failed[0].reason
    profile = sdk.get_profile("111-1.01_00")
    assert profile is not None and profile.values() == {"a": "x"} and profile.client == "demo"
    assert sdk.get_profile("nobody") is None


def test_v1_counts_rows_for_missing_profiles(sdk: Client):
    """v1 updates existing profiles only; the others are not found and the push is not ok."""
    sdk.push([{"id": "exists", "a": "1"}])
    result = sdk.push([{"id": "exists", "a": "2"}, {"id": "missing", "a": "3"}], version=1)
    assert result.applied == 1 and result.not_found == 1 and not result.ok
    assert values(sdk, "exists") == {"a": "2"} and values(sdk, "missing") is None


def test_progress_is_reported(sdk: Client):
    events: list[PushProgress] = []
    sdk.push([{"id": f"p{i}", "a": "v"} for i in range(5)], on_progress=events.append)
    assert [e.phase for e in events][0] == "uploading" and events[-1].phase == "done"
    assert events[-1].rows_applied == events[-1].rows_total == 5


def test_unknown_client_is_refused(live_server: LiveServer):
    with Client(live_server.url, "nobody") as client, pytest.raises(RemoteRejected) as caught:
        client.push([{"id": "x", "a": "1"}])
    assert caught.value.http_status == 404 and "Unknown client 'nobody'" in caught.value.message


def test_bad_header_is_refused_before_sending(sdk: Client, store: Store):
    with pytest.raises(BatchRejected, match="profile."):
        sdk.push([{"id": "x", "profile.a": "1"}])
    with pytest.raises(InputError, match="no id column"):
        sdk.push([{"id": "x"}], id_column="customer")
    assert store.rows_accepted_since(1, 0) == 0


def test_dry_run_writes_nothing(sdk: Client, store: Store):
    """A dry run reports local and server-side failures and applies nothing."""
    result = sdk.push(
        [{"id": "ok", "a": "1"}, {"id": "a/b", "a": "2"}, {"id": "x", "a": "%"}], dry_run=True
    )
    assert result.dry_run and not result.ok and result.parts == ()
    assert [(f.record, f.sent) for f in result.failures] == [(2, False)]
    assert store.rows_accepted_since(1, 0) == 0 and values(sdk, "ok") is None


def test_update_profile_through_the_single_update_api(sdk: Client):
    """Short updates go in the query string, long ones in a form body; both apply at once."""
    sdk.push([{"id": "u1", "a": "1"}])
    result = sdk.update_profile("u1", {"a": "2", "city": "München & Köln"}, key="thirdPartyId")
    assert result.success and result.message == "Request successfully submitted"
    assert values(sdk, "u1") == {"a": "2", "city": "München & Köln"}
    long = "x" * 9000
    assert sdk.update_profile("u1", {"long": long}, key="thirdPartyId").success
    assert values(sdk, "u1") == {"a": "2", "city": "München & Köln", "long": long}


def test_update_profile_of_an_unknown_id_is_refused(sdk: Client):
    """Update only: the server creates nothing and the SDK reports its 404 as a refusal."""
    with pytest.raises(RemoteRejected) as caught:
        sdk.update_profile("x", {"a": "1"}, key="thirdPartyId")
    assert caught.value.http_status == 404
    assert "No profile found for client demo with mbox3rdPartyId=x" in caught.value.message
    assert values(sdk, "x") is None


# -- faults: dropped connections, busy servers, quotas ---------------------------------------


@pytest.fixture
def proxy(live_server: LiveServer) -> Iterator[FaultyProxy]:
    with FaultyProxy(live_server.port) as the_proxy:
        yield the_proxy


def rows(n: int, prefix: str = "r") -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "a": f"v{i}"} for i in range(n)]


def test_answer_lost_after_the_server_accepted_is_not_applied_twice(
    proxy: FaultyProxy, store: Store, drain: Drain
):
    """The upload reaches the server, the answer is lost; the retry gets the same batch back."""
    proxy.drop_response()
    with Client(proxy.url, "demo", sleep=lambda s: drain(), poll_interval=0) as client:
        result = client.push(rows(20))
    assert proxy.dropped == 1 and proxy.posts == 2
    assert result.ok and result.applied == 20 and len(result.parts) == 1
    assert store.rows_accepted_since(1, 0) == 20


def test_upload_cut_midway_is_retried_and_applied_once(
    proxy: FaultyProxy, store: Store, drain: Drain
):
    """A body cut short is refused by the server; the retry sends it whole, once."""
    proxy.drop_upload(after=200)
    with Client(proxy.url, "demo", sleep=lambda s: drain(), poll_interval=0) as client:
        result = client.push(rows(200))
        assert values(client, "r199") == {"a": "v199"}
    assert proxy.dropped == 1 and proxy.posts == 2
    assert result.ok and result.applied == 200
    assert store.rows_accepted_since(1, 0) == 200


class Busy:
    """ASGI middleware answering the first ``times`` batch uploads with a status of our choice."""

    def __init__(
        self, app: Any, status: int, retry_after: str | None, times: int, skip: int = 0
    ) -> None:
        self.app, self.status, self.retry_after, self.times = app, status, retry_after, times
        self.skip = skip
        self.authorization: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.authorization.append(headers.get(b"authorization", b"").decode())
        if scope["type"] == "http" and scope["method"] == "POST" and self.skip > 0:
            self.skip -= 1
        elif scope["type"] == "http" and scope["method"] == "POST" and self.times > 0:
            self.times -= 1
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-type", b"application/xml")]
            if self.retry_after is not None:
                headers.append((b"retry-after", self.retry_after.encode()))
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            body = b"<response><success>false</success><message>busy</message></response>"
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(503, "2", [2.0, 2.0]), (429, "1", [1.0, 1.0]), (502, None, None)],
)
def test_busy_server_is_retried_honouring_retry_after(
    settings, store: Store, drain: Drain, status: int, retry_after: str | None, expected
):  # type: ignore[no-untyped-def]
    """429, 503 and other 5xx are retried; Retry-After sets the wait, else backoff does."""
    waits: list[float] = []
    wrap = lambda app: Busy(app, status, retry_after, times=2)  # noqa: E731
    with LiveServer(settings, store, 0, wrap=wrap) as server:
        with Client(
            server.url, "demo", sleep=lambda s: (waits.append(s), drain()), poll_interval=0
        ) as client:
            result = client.push(rows(5))
    assert result.ok and store.rows_accepted_since(1, 0) == 5
    backoff = waits[:2]
    if expected is not None:
        assert backoff == expected
    else:
        assert 0.5 <= backoff[0] <= 1.0 and 1.0 <= backoff[1] <= 2.0


def test_long_retry_after_is_reported_not_slept(settings, store: Store, drain: Drain):  # type: ignore[no-untyped-def]
    waits: list[float] = []
    wrap = lambda app: Busy(app, 429, "21600", times=1)  # noqa: E731
    with LiveServer(settings, store, 0, wrap=wrap) as server:
        with Client(server.url, "demo", sleep=waits.append) as client:
            with pytest.raises(RemoteUnavailable, match="retry in 21600 s"):
                client.push(rows(5))
    assert waits == []


def test_token_is_sent_as_bearer(settings: Settings, store: Store, drain: Drain):
    wrap = lambda app: Busy(app, 503, None, times=0)  # noqa: E731
    with LiveServer(settings, store, 0, wrap=wrap) as server:
        with Client(server.url, "demo", "t0k3n", sleep=lambda s: drain()) as client:
            client.push(rows(1))
        middleware = server.server.config.app
    assert set(middleware.authorization) == {"Bearer t0k3n"}


def test_api_key_and_secret_get_a_token_once(live_server: LiveServer, store: Store, drain: Drain):
    """key_id/secret: one token from the token endpoint, then sent with every call."""
    client, credentials = clients.create(store, "secure", True, now_ms())
    with Client(
        live_server.url,
        "secure",
        key_id=credentials.api_key,
        secret=credentials.secret,
        sleep=lambda s: drain(),
        poll_interval=0,
    ) as sdk:
        result = sdk.push(rows(3))
        assert result.ok and values(sdk, "r2") == {"a": "v2"}
        sent = sdk.http.headers["Authorization"]
    active = store.active_token(client.id, "profile_api", now_ms())
    assert active is not None and sent.startswith("Bearer ") and sent.endswith(active.last4)
    assert store.rows_accepted_since(client.id, 0) == 3


def test_wrong_secret_is_refused_before_anything_is_sent(live_server: LiveServer, store: Store):
    client, credentials = clients.create(store, "secure", True, now_ms())
    with Client(live_server.url, "secure", key_id=credentials.api_key, secret="wrong") as sdk:
        with pytest.raises(RemoteRejected, match="Wrong API key or secret") as caught:
            sdk.push(rows(1))
    assert caught.value.http_status == 401
    assert store.rows_accepted_since(client.id, 0) == 0


@pytest.mark.parametrize(
    ("url", "kwargs", "fragment"),
    [
        ("http://127.0.0.1:1", {"key_id": "k"}, "give both --key-id and --secret"),
        ("http://127.0.0.1:1", {"secret": "s"}, "give both --key-id and --secret"),
        ("http://127.0.0.1:1", {"token": "t", "key_id": "k", "secret": "s"}, "not both"),
        ("https://acme.tt.omtrdc.net", {"key_id": "k", "secret": "s"}, "Adobe IMS"),
    ],
)
def test_api_key_and_secret_misuse_is_refused_at_once(url: str, kwargs: Any, fragment: str):
    """Half a credential, both kinds, or key and secret for Target: refused, nothing sent."""
    with pytest.raises(ClientError, match=fragment):
        Client(url, "acme", **kwargs)


def test_unreachable_server_fails_after_the_retries(drain: Drain):
    waits: list[float] = []
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "demo", sleep=waits.append, retry=RetryPolicy(attempts=3)) as client:
        with pytest.raises(RemoteUnavailable, match="after 3 tries"):
            client.push(rows(1))
    assert len(waits) == 2


class TestSmallServer:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(database=database_url, workers=0, rows_per_day=40, max_batch_rows=10)

    def test_each_part_dropped_once_still_applies_each_once(
        self, live_server: LiveServer, store: Store, drain: Drain
    ):
        """Three parts, every answer lost once: each part is one batch, each row applied once."""
        with FaultyProxy(live_server.port) as proxy:
            for _ in range(3):
                proxy.drop_response()
            with Client(proxy.url, "demo", sleep=lambda s: drain(), poll_interval=0) as client:
                result = client.push(rows(30))
        assert [p.rows for p in result.parts] == [10, 10, 10] and proxy.dropped == 3
        assert result.ok and store.rows_accepted_since(1, 0) == 30

    def test_push_over_the_quota_sends_nothing(self, sdk: Client, store: Store):
        """A push larger than the quota left is refused before any part is sent."""
        sdk.push(rows(36))
        with pytest.raises(RemoteUnavailable, match="only 4 more in the rolling 24 hours"):
            sdk.push(rows(5, "s"))
        assert store.rows_accepted_since(1, 0) == 36

    def test_a_push_cut_short_says_how_to_resume(
        self, settings: Settings, store: Store, drain: Drain
    ):
        """Part 2 cannot be sent: the error names part 1's batch and the key; resuming with
        that key sends part 2 and does not apply part 1 again."""
        wrap = lambda app: Busy(app, 429, "21600", times=1, skip=1)  # noqa: E731
        with LiveServer(settings, store, 0, wrap=wrap) as server:
            with Client(server.url, "demo", sleep=lambda s: drain(), poll_interval=0) as client:
                with pytest.raises(RemoteUnavailable) as caught:
                    client.push(rows(20), idempotency_key="nightly-42")
                assert "Already accepted: part 1 as demo-" in caught.value.message
                assert "--idempotency-key nightly-42" in caught.value.message
                result = client.push(rows(20), idempotency_key="nightly-42")
        assert result.ok and result.applied == 20 and len(result.parts) == 2
        assert store.rows_accepted_since(1, 0) == 20

    def test_resuming_with_the_same_key_applies_nothing_twice(self, sdk: Client, store: Store):
        """The same idempotency key for the same rows returns the batches already accepted."""
        first = sdk.push(rows(4), idempotency_key="job-7")
        again = sdk.push(rows(4), idempotency_key="job-7")
        assert [p.batch_id for p in again.parts] == [p.batch_id for p in first.parts]
        assert store.rows_accepted_since(1, 0) == 4


def test_the_client_never_imports_storage_or_web():
    """The SDK is an HTTP client: importing it loads nothing of the server."""
    code = (
        "import sys, profilebase; profilebase.Client('http://x', 'demo').close(); "
        "print(sorted(m for m in sys.modules if m.startswith(('profilebase.server.storage', "
        "'profilebase.server.web', 'profilebase.server.worker', 'profilebase.server.ingest'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "[]"
