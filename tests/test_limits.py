"""Batch limits: bytes and rows (413) refused while streaming, the rolling daily quota (429)."""

from __future__ import annotations

import httpx
import pytest
from helpers import attributes, batch_id_of, status, submit, xml_fields

from profilebase.server.settings import Settings
from profilebase.server.storage import Store


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database=database_url,
        workers=0,
        unit_rows=2,
        max_batch_bytes=300,
        max_batch_rows=5,
        rows_per_day=8,
        max_profile_bytes=120,
    )


def rows(n: int, start: int = 0) -> bytes:
    return b"batch=thirdPartyId,a\n" + b"".join(b"r%d,v\n" % i for i in range(start, start + n))


def test_too_many_bytes_is_413_and_writes_nothing(http: httpx.Client, store: Store):
    body = b"batch=thirdPartyId,a\n" + b"x,1\n" * 100
    response = submit(http, body)
    assert response.status_code == 413
    assert "must be smaller than 300 bytes" in xml_fields(response)["message"]
    assert store.rows_accepted_since(1, 0) == 0 and store.pending_units() == 0


def test_too_many_bytes_refused_while_streaming(http: httpx.Client):
    """A chunked body without Content-Length is refused once the limit is passed."""

    def chunks():
        yield b"batch=thirdPartyId,a\n"
        for _ in range(50):
            yield b"x,1\n" * 10

    response = http.post("/m2/demo/v2/profile/batchUpdate", content=chunks())
    assert response.status_code == 413


def test_too_many_rows_is_413(http: httpx.Client, store: Store):
    response = submit(http, rows(6))
    assert response.status_code == 413
    assert "more than 5 data rows" in xml_fields(response)["message"]
    assert store.pending_units() == 0


def test_exactly_the_row_limit_is_accepted(http: httpx.Client, drain):
    batch_id = batch_id_of(submit(http, rows(5)))
    drain()
    assert status(http, batch_id)["successfulUpdates"] == "5"


def test_daily_quota_is_429_with_retry_after(http: httpx.Client, store: Store):
    assert submit(http, rows(5)).status_code == 200
    response = submit(http, rows(4, start=10))
    assert response.status_code == 429
    assert 0 < int(response.headers["retry-after"]) <= 86400
    message = xml_fields(response)["message"]
    assert "5 rows were accepted in the last 24 hours" in message and "rows_per_day" in message
    assert store.rows_accepted_since(1, 0) == 5
    assert submit(http, rows(3, start=20)).status_code == 200


def test_rejected_batches_count_nothing(http: httpx.Client, store: Store):
    submit(http, rows(6))
    submit(http, b"nope")
    assert store.rows_accepted_since(1, 0) == 0


def test_profile_size_limit_fails_the_row(http: httpx.Client, drain):
    """A row that would push a profile past max_profile_bytes fails; earlier rows stay."""
    body = b"batch=thirdPartyId,a,b,c\np,1\np,," + b"x" * 40 + b"\np,,," + b"y" * 40 + b"\n"
    batch_id = batch_id_of(submit(http, body))
    drain()
    fields = status(http, batch_id)
    assert fields["successfulUpdates"] == "2" and fields["failedUpdates"] == "1"
    assert attributes(http, "p") == {"a": "1", "b": "x" * 40}
