"""Per-client quotas: overrides, requests per minute, quota headers, throttled ingestion."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from conftest import FakeClock
from helpers import attributes, batch_id_of, status, submit, update, xml_fields

from profilebase import business_hours
from profilebase.errors import ConfigError
from profilebase.models import BatchState, now_ms
from profilebase.server import clients
from profilebase.server.batches import state_of
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store
from profilebase.server.worker import Worker

#: Wednesday 2025-01-15 10:00 UTC, and the Saturday after.
WEDNESDAY_10 = int(datetime(2025, 1, 15, 10, 0, tzinfo=UTC).timestamp() * 1000)
SATURDAY_10 = int(datetime(2025, 1, 18, 10, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(WEDNESDAY_10)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database=database_url,
        workers=0,
        unit_rows=5,
        rows_per_day=10,
        stuck_after_seconds=1,
    )


def rows(n: int, start: int = 0) -> bytes:
    return b"batch=thirdPartyId,a\n" + b"".join(b"r%d,v\n" % i for i in range(start, start + n))


def quota_headers(response: httpx.Response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"]), int(h["x-ratelimit-reset"])


def test_every_bulk_reply_carries_the_daily_quota_headers(http: httpx.Client, clock: FakeClock):
    """Accepted, malformed and over-quota replies all say limit, remaining and reset."""
    assert quota_headers(submit(http, rows(3))) == (10, 7, 86400)
    clock.advance(400)
    assert quota_headers(submit(http, b"nonsense")) == (10, 7, 86000)
    refused = submit(http, rows(8))
    assert refused.status_code == 429 and quota_headers(refused) == (10, 7, 86000)
    assert "batchStatus" not in {k.lower() for k in refused.headers}


def test_quota_message_names_the_limit_and_the_reset_time(http: httpx.Client, clock: FakeClock):
    submit(http, rows(6))
    clock.advance(3600)
    response = submit(http, rows(5))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) == 86400 - 3600
    message = xml_fields(response)["message"]
    assert "rows_per_day" in message and "2025-01-16T10:00:00.000+00:00" in message


def test_a_used_up_quota_is_refused_before_the_body_is_read(http: httpx.Client):
    """A client without quota left gets 429 even for a body that would be malformed."""
    assert submit(http, rows(10)).status_code == 200
    response = submit(http, b"this is not a batch")
    assert response.status_code == 429
    assert "used up" in xml_fields(response)["message"]


def test_bulk_requests_per_minute(http: httpx.Client, store: Store, clock: FakeClock):
    clients.change(store, "demo", limits={"bulk_requests_per_minute": "2", "rows_per_day": "1000"})
    assert [submit(http, rows(1, i)).status_code for i in range(2)] == [200, 200]
    clock.advance(20)
    refused = submit(http, rows(1, 5))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) == 40
    assert "bulk_requests_per_minute" in xml_fields(refused)["message"]
    clock.advance(40)
    assert submit(http, rows(1, 6)).status_code == 200


def test_limits_are_per_client(http: httpx.Client, store: Store):
    """An override applies to its client only; an empty value restores the default."""
    clients.create(store, "small", False, now_ms())
    clients.change(store, "small", limits={"max_batch_rows": "2"})
    assert submit(http, rows(3), client="small").status_code == 413
    assert submit(http, rows(3)).status_code == 200
    clients.change(store, "small", limits={"max_batch_rows": ""})
    assert submit(http, rows(3), client="small").status_code == 200


def test_updates_per_day_per_client_with_headers_and_retry_after(
    http: httpx.Client, store: Store, drain
):
    """A client's own updates_per_day: every single update reply says limit, remaining and
    reset, and the update over it is 429 with Retry-After and a message naming the limit."""
    submit(http, rows(1))
    drain()
    clients.change(store, "demo", limits={"updates_per_day": "2"})
    replies = [update(http, mbox3rdPartyId="r0", **{"profile.a": str(n)}) for n in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert [quota_headers(r)[:2] for r in replies] == [(2, 1), (2, 0), (2, 0)]
    assert all(86_400 <= quota_headers(r)[2] <= 86_460 for r in replies)
    assert 0 < int(replies[2].headers["retry-after"]) <= 86_460
    assert "updates_per_day" in xml_fields(replies[2])["message"]
    assert attributes(http, "r0") == {"a": "1"}


def test_max_profile_bytes_per_client_applies_in_the_worker(
    http: httpx.Client, store: Store, drain
):
    clients.change(store, "demo", limits={"max_profile_bytes": "60"})
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nbig," + b"x" * 40 + b"\nsmall,y\n"))
    drain()
    assert status(http, batch_id)["failedUpdates"] == "1"
    assert attributes(http, "small") == {"a": "y"} and attributes(http, "big") is None


# -- throttled ingestion -------------------------------------------------------------------


def throttle(store: Store, hours: str = "mon-fri 09:00-18:00 UTC") -> None:
    """10 rows per second during `hours`; with units of 5 rows, a unit every 500 ms (the
    first unit of a batch holds 2 rows, half of 5: 200 ms)."""
    clients.change(
        store,
        "demo",
        limits={"ingest_rows_per_second": "10", "business_hours": hours, "rows_per_day": "1000"},
    )


def test_throttled_batch_is_applied_at_the_rate_and_stays_incomplete(
    http: httpx.Client, store: Store, drain, clock: FakeClock
):
    throttle(store)
    batch_id = batch_id_of(submit(http, rows(17)))  # units of 2, 5, 5 and 5 rows
    drain()
    fields = status(http, batch_id)
    assert fields["status"] == "incomplete" and fields["consumedCount"] == "2"
    clock.advance(0.199)
    drain()
    assert status(http, batch_id)["consumedCount"] == "2"
    clock.advance(0.001)
    drain()
    assert status(http, batch_id)["consumedCount"] == "7"
    clock.advance(5)  # a pause does not let the client burst to catch up
    drain()
    assert status(http, batch_id)["consumedCount"] == "12"
    clock.advance(0.5)
    drain()
    assert status(http, batch_id)["status"] == "complete"


def test_pacing_holds_across_workers(
    http: httpx.Client, store: Store, settings: Settings, clock: FakeClock
):
    """The pause is taken in the claim's transaction: a second worker cannot take the next
    unit early, and neither can the first."""
    throttle(store)
    submit(http, rows(20))
    first, second = (Worker(store, settings, name=n, clock=clock) for n in ["w1", "w2"])
    assert first.run_once() is True
    assert second.run_once() is False and first.run_once() is False
    clock.advance(0.5)
    assert second.run_once() is True and first.run_once() is False


def test_throttled_batch_is_not_reported_stuck(
    http: httpx.Client, store: Store, drain, clock: FakeClock
):
    """Waiting for its turn is not being stuck, even past stuck_after_seconds (1 s here)."""
    clients.change(
        store, "demo", limits={"ingest_rows_per_second": "1", "business_hours": "always"}
    )
    batch_id = batch_id_of(submit(http, rows(10)))  # a first unit of 2 rows: a pause of 2 s
    drain()
    clock.advance(1.5)
    batch = store.get_batch(1, batch_id)
    assert batch is not None
    limits = client_limits(Settings(), store.get_client("demo").limits)  # type: ignore[union-attr]
    assert state_of(batch, clock(), 1, limits) is BatchState.THROTTLED
    assert batch.throttled_until == datetime.fromtimestamp((WEDNESDAY_10 + 2000) / 1000, UTC)
    assert status(http, batch_id)["status"] == "incomplete"
    clock.advance(10)  # the pause is long over and nothing ran: now it is stuck
    assert status(http, batch_id)["status"] == "stuck"


def test_json_status_of_a_paced_batch_says_throttled_why_and_until_when(
    http: httpx.Client, store: Store, drain, clock: FakeClock
):
    """The extension's JSON status names the limit and the end of the pause; Target's XML
    keeps saying incomplete; once the pause is over and a worker ran, it is processing."""
    throttle(store)
    batch_id = batch_id_of(submit(http, rows(20)))
    drain()
    url = f"/profilebase/v1/clients/demo/batches/{batch_id}"
    body = http.get(url).json()
    assert body["state"] == "throttled" and body["status"] == "incomplete"
    assert body["throttledUntil"] == "2025-01-15T10:00:00.200+00:00"  # a first unit of 2 rows
    assert "10 rows per second (ingest_rows_per_second)" in body["reason"]
    assert "'mon-fri 09:00-18:00 UTC' (business_hours)" in body["reason"]
    assert body["reason"].endswith("may start at 2025-01-15T10:00:00.200+00:00")
    clock.advance(0.2)
    drain()
    after = http.get(url).json()
    assert after["state"] == "throttled" and after["consumedCount"] == 7
    assert after["throttledUntil"] == "2025-01-15T10:00:00.700+00:00"
    clients.change(store, "demo", limits={"ingest_rows_per_second": "0"})
    unpaced = http.get(url).json()
    assert unpaced["state"] == "processing" and unpaced["throttledUntil"] is None


def test_no_throttle_outside_business_hours(
    http: httpx.Client, store: Store, drain, clock: FakeClock
):
    throttle(store)
    clock.ms = SATURDAY_10
    batch_id = batch_id_of(submit(http, rows(20)))
    drain()
    assert status(http, batch_id)["status"] == "complete"


def test_throttling_one_client_does_not_slow_another(http: httpx.Client, store: Store, drain):
    throttle(store)
    clients.create(store, "fast", False, now_ms())
    slow_id = batch_id_of(submit(http, rows(20)))
    fast_id = batch_id_of(submit(http, rows(10), client="fast"))
    drain()
    assert status(http, slow_id)["consumedCount"] == "2"  # its first unit
    assert status(http, fast_id, client="fast")["status"] == "complete"


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("always", "2025-01-18T03:00", None),
        ("mon-fri 09:00-18:00", "2025-01-15T09:00", "2025-01-15T18:00"),
        ("mon-fri 09:00-18:00 UTC", "2025-01-17T17:59", "2025-01-18T10:00"),
        ("sat,sun 00:00-24:00", "2025-01-19T23:59", "2025-01-20T00:00"),
        ("fri-mon 10:00-11:00", "2025-01-20T10:30", "2025-01-21T10:30"),
        ("mon-fri 09:00-18:00 Europe/Berlin", "2025-01-15T08:30", "2025-01-15T17:30"),
    ],
)
def test_business_hours(text: str, inside: str, outside: str | None):
    hours = business_hours.parse(text)
    assert hours.contains(datetime.fromisoformat(inside).replace(tzinfo=UTC))
    if outside:
        assert not hours.contains(datetime.fromisoformat(outside).replace(tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no time range"),
        ("weekdays 09:00-17:00", "is not a day"),
        ("mon-fri 9-17", "is not HH:MM-HH:MM"),
        ("mon-fri 18:00-09:00", "start before end"),
        ("mon-fri 09:00-17:00 Mars/Base", "unknown time zone"),
        ("mon-fri 09:00-17:00 UTC extra", "extra words"),
    ],
)
def test_bad_business_hours_are_clear_errors(text: str, fragment: str):
    with pytest.raises(ConfigError, match=fragment):
        business_hours.parse(text)
