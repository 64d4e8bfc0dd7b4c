"""Content-Encoding on batchUpdate: gzip is decompressed as it streams (v1, v2 and dry run),
the byte and row limits count the decompressed batch, a gzip bomb is refused early, and any
other coding is 415 naming gzip."""

from __future__ import annotations

import gzip
import zlib

import httpx
import pytest
from helpers import attributes, batch_id_of, status, xml_fields

BODY = b"batch=thirdPartyId,tier,city\ncrm-1,gold,M%C3%BCnchen\ncrm-2,silver,Z%C3%BCrich\n"
V2 = "/m2/demo/v2/profile/batchUpdate"
V1 = "/m2/demo/profile/batchUpdate"

#: The database does not matter to decoding a body: these run on SQLite only.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def post(http: httpx.Client, body: bytes, coding: str = "gzip", path: str = V2) -> httpx.Response:
    return http.post(path, content=body, headers={"Content-Encoding": coding})


def test_gzip_batches_are_applied_like_plain_ones(http: httpx.Client, drain):
    """A gzip body on v2 then v1 is accepted, applied with exact counts and decoded cells."""
    created = post(http, gzip.compress(BODY))
    assert xml_fields(created)["success"] == "true", created.text
    updated = post(http, gzip.compress(b"batch=thirdPartyId,tier\ncrm-1,platinum\n"), path=V1)
    assert xml_fields(updated)["success"] == "true", updated.text
    drain()
    first = status(http, batch_id_of(created))
    assert (first["status"], first["batchSize"], first["successfulUpdates"]) == (
        "complete",
        "2",
        "2",
    )
    second = status(http, batch_id_of(updated))
    assert (second["batchSize"], second["successfulUpdates"]) == ("1", "1")
    assert attributes(http, "crm-1") == {"tier": "platinum", "city": "München"}
    assert attributes(http, "crm-2") == {"tier": "silver", "city": "Zürich"}


def test_gzip_dry_run_reports_the_decompressed_batch(http: httpx.Client):
    """A dry run of a gzip body validates the decompressed rows and writes nothing."""
    body = BODY + b"crm-3,bronze,Bonn,extra\n"
    report = post(http, gzip.compress(body), path=V2 + "?dryRun=true")
    assert report.status_code == 200, report.text
    assert report.json()["batchSize"] == 3


@pytest.mark.parametrize(
    "coding", ["gzip", "GZIP", "x-gzip", "identity, gzip", "gzip, identity"], ids=str
)
def test_gzip_spellings(http: httpx.Client, coding: str):
    """gzip in any case, as x-gzip, or beside identity, is gzip."""
    response = post(http, gzip.compress(BODY), coding)
    assert xml_fields(response)["success"] == "true", response.text


@pytest.mark.parametrize("coding", ["identity", "", "Identity"])
def test_identity_passes(http: httpx.Client, coding: str):
    """identity (or an empty header) is the plain body."""
    response = post(http, BODY, coding)
    assert xml_fields(response)["success"] == "true", response.text


def test_concatenated_gzip_members_are_one_body(http: httpx.Client, drain):
    """A body of two gzip members (files compressed apart, then joined) is read whole."""
    body = gzip.compress(BODY) + gzip.compress(b"crm-3,bronze,Bonn\n")
    response = post(http, body)
    assert xml_fields(response)["success"] == "true", response.text
    drain()
    assert status(http, batch_id_of(response))["successfulUpdates"] == "3"


@pytest.mark.parametrize("coding", ["br", "deflate", "compress", "zstd", "gzip, gzip", "gzip;q=1"])
def test_other_codings_are_415_naming_gzip(http: httpx.Client, coding: str):
    """Any coding but gzip and identity: 415, in the endpoint's XML, naming what works."""
    response = post(http, zlib.compress(BODY), coding)
    assert response.status_code == 415
    message = xml_fields(response)["message"]
    assert "is not supported" in message and "Content-Encoding: gzip" in message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (BODY, "is not gzip data"),
        (gzip.compress(BODY)[:-10], "ends in the middle"),
        (b"", "is not gzip data"),
        (gzip.compress(BODY) + b"trailing junk", "is not gzip data"),
    ],
    ids=["plain", "truncated", "empty", "junk after"],
)
def test_bodies_that_are_not_gzip_are_400(http: httpx.Client, body: bytes, words: str):
    """A body declared gzip that is not, or is cut short: 400 saying so, nothing stored."""
    response = post(http, body)
    assert response.status_code == 400
    message = xml_fields(response)["message"]
    assert words in message and "zlib" not in message.lower()


def bomb(megabytes: int) -> bytes:
    """A gzip body that inflates to a batch header and ``megabytes`` MB of one long line:
    one member per MB (concatenated members are one body), so it is built in no time."""
    block = gzip.compress(b"a" * (1024 * 1024), compresslevel=9)
    return gzip.compress(b"batch=thirdPartyId,a\ncrm-1,") + block * megabytes


def test_a_gzip_bomb_is_refused_at_the_byte_limit(http: httpx.Client):
    """A 0.5 MB body that would inflate to 512 MB is refused with 413 once the decompressed
    bytes reach max_batch_bytes, saying that the limit counts the body decompressed."""
    body = bomb(512)
    print(f"bomb: {len(body):,} bytes compressed")
    response = post(http, body)
    assert response.status_code == 413
    message = xml_fields(response)["message"]
    assert "max_batch_bytes" in message and "decompressed" in message


@pytest.mark.parametrize("settings", [{"max_batch_rows": 100}], indirect=True)
def test_the_row_limit_counts_decompressed_rows(http: httpx.Client):
    """101 rows compressed into a few hundred bytes are still 101 rows: 413."""
    body = b"batch=thirdPartyId,a\n" + b"".join(b"crm-%d,x\n" % i for i in range(101))
    response = post(http, gzip.compress(body))
    assert response.status_code == 413
    assert "max_batch_rows" in xml_fields(response)["message"]
