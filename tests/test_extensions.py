"""profilebase's extensions over HTTP: JSON status, failed rows, dry run, idempotency, limits."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest
from helpers import attributes, batch_id_of, status, submit, xml_fields

from profilebase.models import now_ms
from profilebase.server import clients
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store

EXT = "/profilebase/v1/clients/demo"
MESSY = b"batch=thirdPartyId,a,b\nok1,x\nbad%2B1,x\nok2,%zz\nok3,1,2,3\nok4,caf%C3%A9,%2C\n"


def accept_directly(store: Store, settings: Settings, body: bytes, at_ms: int) -> str:
    """Accept a batch through the intake at a chosen time, as the server would have then."""
    client = store.get_client("demo")
    assert client is not None
    limits = client_limits(settings, client.limits)
    intake = Intake(limits, settings.unit_rows)
    intake.feed(body)
    return store_batch(store, client, 2, intake.finish(), limits, at_ms)[1]


def test_json_status_follows_the_batch(http: httpx.Client, drain):
    """Queued before a worker runs, complete after, with Target's counts, times and a rate."""
    batch_id = batch_id_of(submit(http, MESSY))
    queued = http.get(f"{EXT}/batches/{batch_id}").json()
    assert queued["state"] == "queued" and queued["status"] == "incomplete"
    assert queued["startedAt"] is None and queued["rowsPerSecond"] is None
    assert queued["batchSize"] == 5 and queued["attributes"] == ["a", "b"]
    drain()
    done = http.get(f"{EXT}/batches/{batch_id}").json()
    xml = status(http, batch_id)
    assert done["status"] == xml["status"] == "complete" and done["state"] == "complete"
    for field in ["batchSize", "consumedCount", "successfulUpdates", "failedUpdates"]:
        assert str(done[field]) == xml[field]
    assert done["reason"] is None
    assert done["acceptedAt"] <= done["startedAt"] <= done["finishedAt"]
    assert done["units"]["done"] == done["units"]["total"] == 1
    assert done["links"]["failures"].endswith(f"/batches/{batch_id}/failures")


def test_json_status_unknown_batch_is_404(http: httpx.Client):
    response = http.get(f"{EXT}/batches/demo-1-1")
    assert response.status_code == 404
    assert "No batch 'demo-1-1'" in response.json()["message"]


def test_queued_batch_says_what_is_ahead(http: httpx.Client):
    """A batch behind another one's units is queued with that as its reason."""
    submit(http, MESSY)
    second = batch_id_of(submit(http, MESSY))
    body = http.get(f"{EXT}/batches/{second}").json()
    assert body["state"] == "queued"
    assert "1 unit(s) of earlier batches are ahead" in body["reason"]


def test_throttled_while_a_unit_waits_for_its_retry(http: httpx.Client, store: Store):
    """A unit given back after a failure holds its batch in `throttled`, with the error."""
    batch_id = batch_id_of(submit(http, MESSY))
    claim = store.claim_unit("test", now_ms(), 30_000)
    assert claim is not None
    reason = "the database file could not be read or written (error id 0123456789ab)"
    store.release_unit(claim, reason, now_ms() + 3_600_000)
    body = http.get(f"{EXT}/batches/{batch_id}").json()
    assert body["state"] == "throttled" and body["status"] == "incomplete"
    assert body["reason"].startswith(f"waiting: {reason}; next attempt at ")


def test_stuck_batch_gives_a_reason(http: httpx.Client, store: Store, settings: Settings):
    """No progress for stuck_after_seconds is `stuck`, the same word Target's XML shows."""
    batch_id = accept_directly(store, settings, MESSY, now_ms() - 3_600_000)
    body = http.get(f"{EXT}/batches/{batch_id}").json()
    assert body["state"] == "stuck" and status(http, batch_id)["status"] == "stuck"
    assert "is a worker running" in body["reason"]


def test_failures_as_json_pages(http: httpx.Client, drain):
    """Failed rows come with line, id, reason and decoded cells, page by page."""
    batch_id = batch_id_of(submit(http, MESSY))
    drain()
    url = f"{EXT}/batches/{batch_id}/failures"
    first = http.get(url, params={"limit": 2}).json()
    assert first["columns"] == ["thirdPartyId", "a", "b"] and first["failedUpdates"] == 3
    assert [f["line"] for f in first["failures"]] == [3, 4] and first["nextAfter"] == 4
    assert first["failures"][0]["id"] == "bad+1"
    assert first["failures"][0]["cells"] == {"thirdPartyId": "bad+1", "a": "x"}
    assert "must not contain '+'" in first["failures"][0]["reason"]
    assert first["failures"][1]["cells"] == {"thirdPartyId": "ok2", "a": "%zz"}
    rest = http.get(url, params={"after": first["nextAfter"], "limit": 2}).json()
    assert [f["line"] for f in rest["failures"]] == [5] and rest["nextAfter"] is None
    assert rest["failures"][0]["extraCells"] == ["3"]


def test_failures_streamed_as_jsonl_and_csv(http: httpx.Client, drain):
    batch_id = batch_id_of(submit(http, MESSY))
    drain()
    url = f"{EXT}/batches/{batch_id}/failures"
    lines = http.get(url, params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(line)["line"] for line in lines] == [3, 4, 5]
    response = http.get(url, params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["line", "id", "reason", "thirdPartyId", "a", "b"]
    assert rows[1][:2] == ["3", "bad+1"] and rows[1][3:] == ["bad+1", "x"]
    assert len(rows) == 4


@pytest.mark.parametrize("params", [{"format": "xml"}, {"limit": "0"}, {"after": "x"}])
def test_failures_bad_parameters_are_400(http: httpx.Client, drain, params: dict[str, str]):
    batch_id = batch_id_of(submit(http, MESSY))
    assert http.get(f"{EXT}/batches/{batch_id}/failures", params=params).status_code == 400


def test_dry_run_reports_and_writes_nothing(http: httpx.Client, store: Store):
    """A dry run finds the same failures a real run would, and stores no batch or profile."""
    response = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=true", content=MESSY)
    assert response.status_code == 200
    report = response.json()
    assert report["dryRun"] is True and report["wouldBeAccepted"] is True
    assert report["batchSize"] == 5 and report["wouldFail"] == 3 and report["wouldSucceed"] == 2
    assert [f["line"] for f in report["failures"]] == [3, 4, 5]
    assert report["failures"][0]["raw"] == "bad%2B1,x"
    assert report["quota"] == {
        "rowsPerDay": 1_000_000,
        "usedLast24h": 0,
        "remaining": 1_000_000,
        "fits": True,
        "message": None,
        "retryAfter": None,
    }
    assert store.pending_units() == 0 and store.rows_accepted_since(1, 0) == 0
    assert attributes(http, "ok1") is None


def test_dry_run_matches_the_real_run(http: httpx.Client, drain):
    """The dry run's failed lines are exactly the lines the real batch fails."""
    report = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=true", content=MESSY).json()
    batch_id = batch_id_of(submit(http, MESSY))
    drain()
    real = http.get(f"{EXT}/batches/{batch_id}/failures").json()["failures"]
    assert [(f["line"], f["reason"]) for f in report["failures"]] == [
        (f["line"], f["reason"]) for f in real
    ]


def test_dry_run_rejects_like_a_real_batch(http: httpx.Client):
    """A malformed header is refused with the same 400 and message as a real submission."""
    body = b"batch=ecid,a\nx,1\n"
    dry = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=true", content=body)
    real = submit(http, body)
    assert dry.status_code == real.status_code == 400
    assert xml_fields(dry) == xml_fields(real)


def test_dry_run_bad_flag_is_400(http: httpx.Client):
    response = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=maybe", content=MESSY)
    assert response.status_code == 400


class TestLimits:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(
            database=database_url,
            workers=0,
            unit_rows=2,
            max_batch_rows=5,
            rows_per_day=8,
            max_profile_bytes=60,
        )

    def test_dry_run_forecasts_the_quota(self, http: httpx.Client):
        """A batch that would exceed the rolling quota is reported, not refused."""
        submit(http, b"batch=thirdPartyId,a\n" + b"".join(b"r%d,v\n" % i for i in range(5)))
        body = b"batch=thirdPartyId,a\n" + b"".join(b"s%d,v\n" % i for i in range(4))
        report = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=true", content=body).json()
        assert report["wouldBeAccepted"] is False
        quota = report["quota"]
        assert (quota["rowsPerDay"], quota["usedLast24h"], quota["remaining"]) == (8, 5, 3)
        assert quota["fits"] is False and 0 < quota["retryAfter"] <= 86400
        real = submit(http, body)
        assert real.status_code == 429 and xml_fields(real)["message"] == quota["message"]

    def test_dry_run_is_judged_by_the_clients_own_limits(self, http: httpx.Client, store: Store):
        """Overrides set with `clients set` apply to a dry run: rows, bytes per profile, the
        daily quota and batches per minute; a full quota is forecast, not refused."""
        clients.change(
            store,
            "demo",
            limits={
                "max_batch_rows": "3",
                "max_profile_bytes": "30",
                "rows_per_day": "100",
                "bulk_requests_per_minute": "1",
            },
        )
        dry = "/m2/demo/v2/profile/batchUpdate?dryRun=true"
        four = b"batch=thirdPartyId,a\n" + b"".join(b"r%d,v\n" % i for i in range(4))
        assert http.post(dry, content=four).status_code == 413
        body = b"batch=thirdPartyId,a\nsmall,v\nbig," + b"x" * 40 + b"\n"
        report = http.post(dry, content=body).json()
        assert report["wouldBeAccepted"] is True and report["quota"]["rowsPerDay"] == 100
        assert [f["line"] for f in report["failures"]] == [3]
        assert "max_profile_bytes" in report["failures"][0]["reason"]
        assert report["limits"]["maxBatchRows"] == 3 and report["limits"]["maxProfileBytes"] == 30
        assert report["limits"]["bulkRequestsPerMinute"] == 1
        assert submit(http, body).status_code == 200
        after = http.post(dry, content=body)
        assert after.status_code == 200 and after.json()["wouldBeAccepted"] is False
        assert "bulk_requests_per_minute" in after.json()["quota"]["message"]

    def test_a_keyed_retry_is_answered_even_when_the_quota_is_used_up(
        self, http: httpx.Client, store: Store
    ):
        """A batch that used up the quota, sent again with its key, returns its batch id:
        the retry of a lost answer is not refused for the rows it already counted."""
        body = b"batch=thirdPartyId,a\n" + b"".join(b"r%d,v\n" % i for i in range(5))
        first = post_with_key(http, body, "full")
        assert submit(http, b"batch=thirdPartyId,a\nx,1\ny,2\nz,3\n").status_code == 200
        assert submit(http, b"batch=thirdPartyId,a\nw,1\n").status_code == 429
        again = post_with_key(http, body, "full")
        assert again.status_code == 200 and batch_id_of(again) == batch_id_of(first)
        assert store.rows_accepted_since(1, 0) == 8

    def test_dry_run_too_many_rows_is_413(self, http: httpx.Client):
        body = b"batch=thirdPartyId,a\n" + b"".join(b"r%d,v\n" % i for i in range(6))
        response = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=true", content=body)
        assert response.status_code == 413

    def test_dry_run_finds_rows_too_big_for_any_profile(self, http: httpx.Client):
        body = b"batch=thirdPartyId,a\nsmall,v\nbig," + b"x" * 80 + b"\n"
        report = http.post("/m2/demo/v2/profile/batchUpdate?dryRun=true", content=body).json()
        assert [f["line"] for f in report["failures"]] == [3]
        assert "max_profile_bytes" in report["failures"][0]["reason"]
        assert report["failures"][0]["raw"].startswith("big,xxx")

    def test_client_info_shows_limits_and_quota(self, http: httpx.Client):
        submit(http, b"batch=thirdPartyId,a\nx,1\ny,2\n")
        info = http.get(EXT).json()
        assert info["server"] == "profilebase" and info["client"] == "demo"
        assert info["limits"]["maxBatchRows"] == 5 and info["limits"]["rowsPerDay"] == 8
        assert info["limits"]["businessHours"] == "mon-fri 09:00-18:00 UTC"
        assert info["quota"] == {"rowsPerDay": 8, "usedLast24h": 2, "remaining": 6}
        assert info["extensions"]["dryRun"] is True


def test_client_info_unknown_client_is_404(http: httpx.Client):
    assert http.get("/profilebase/v1/clients/nobody").status_code == 404


def post_with_key(
    http: httpx.Client, body: bytes, key: str, client: str = "demo"
) -> httpx.Response:
    return http.post(
        f"/m2/{client}/v2/profile/batchUpdate", content=body, headers={"Idempotency-Key": key}
    )


def test_idempotency_key_returns_the_original_batch(http: httpx.Client, store: Store, drain):
    """The same key and body again returns the first batch id and applies nothing more."""
    first = post_with_key(http, MESSY, "k-1")
    again = post_with_key(http, MESSY, "k-1")
    assert first.status_code == again.status_code == 200
    assert batch_id_of(first) == batch_id_of(again)
    assert store.rows_accepted_since(1, 0) == 5
    drain()
    assert status(http, batch_id_of(again))["successfulUpdates"] == "2"
    other = post_with_key(http, MESSY, "k-2")
    assert batch_id_of(other) != batch_id_of(first)
    assert store.rows_accepted_since(1, 0) == 10


def test_idempotency_key_reused_for_another_body_is_409(http: httpx.Client, store: Store):
    post_with_key(http, MESSY, "k-1")
    response = post_with_key(http, b"batch=thirdPartyId,a\nz,1\n", "k-1")
    assert response.status_code == 409
    fields = xml_fields(response)
    assert fields["success"] == "false" and "already used for batch" in fields["message"]
    assert store.rows_accepted_since(1, 0) == 5


def test_idempotency_keys_are_per_client(http: httpx.Client, store: Store):
    store.ensure_client("other")
    a = post_with_key(http, MESSY, "shared")
    b = post_with_key(http, MESSY, "shared", client="other")
    assert batch_id_of(a).startswith("demo-") and batch_id_of(b).startswith("other-")


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_invalid_idempotency_key_is_400(http: httpx.Client, key: str):
    response = http.post(
        "/m2/demo/v2/profile/batchUpdate",
        content=MESSY,
        headers={"Idempotency-Key": key.encode("utf-8")},  # type: ignore[dict-item]
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in xml_fields(response)["message"]


def test_idempotency_key_outlives_the_purge_of_its_batch(http: httpx.Client, store: Store, drain):
    """Purging old statuses keeps keys younger than 24 hours, so a late retry is still caught."""
    batch_id = batch_id_of(post_with_key(http, MESSY, "late"))
    drain()
    assert store.purge(now_ms() + 1000) == 1
    assert batch_id_of(post_with_key(http, MESSY, "late")) == batch_id
    assert store.rows_accepted_since(1, 0) == 0
