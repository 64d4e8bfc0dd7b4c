"""Bulk Profile Update API over HTTP: accept, reject, status, fetch (real sockets)."""

from __future__ import annotations

import re
from datetime import datetime

import httpx
import pytest
from helpers import attributes, batch_id_of, failed_ids, status, submit, xml_fields

from profilebase.server.storage import Store

SEED = b"batch=pcId,param1,param2,param3,param4\n123,value1\n124,value1,,,value4\n125,,value2\n126,value1,value2,value3,value4\n"


def test_healthz(http: httpx.Client):
    assert http.get("/healthz").status_code == 200


def test_seed_sample_v2_end_to_end(http: httpx.Client, drain):
    """v2 creates the profiles of the documented sample; fetch shows exactly their values."""
    response = submit(http, SEED)
    assert response.status_code == 200
    fields = xml_fields(response)
    assert fields["success"] == "true"
    assert fields["message"] == "Batch submitted for processing"
    assert re.fullmatch(
        r"http://127\.0\.0\.1:\d+/m2/demo/v2/profile/batchStatus\?batchId=demo-\d{13}-\d+",
        fields["batchStatus"],
    )
    batch_id = batch_id_of(response)
    assert status(http, batch_id, details=False) == {
        "batchId": batch_id,
        "status": "incomplete",
        "batchSize": "4",
    }
    drain()
    assert status(http, batch_id) == {
        "batchId": batch_id,
        "status": "complete",
        "batchSize": "4",
        "consumedCount": "4",
        "successfulUpdates": "4",
        "profilesNotFound": "0",
        "failedUpdates": "0",
    }
    assert attributes(http, "124", third_party=False) == {"param1": "value1", "param4": "value4"}
    profile = http.get("/rest/v1/profiles/126", params={"client": "demo"}).json()
    assert profile["client"] == "demo" and profile["visitorId"] == "126"
    assert set(profile["profileAttributes"]) == {"param1", "param2", "param3", "param4"}
    for stamp in [profile["modifiedAt"], profile["profileAttributes"]["param1"]["modifiedAt"]]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", stamp)
        assert datetime.fromisoformat(stamp).utcoffset() is not None


def test_seed_sample_v1_updates_existing_only(http: httpx.Client, drain):
    """v1 updates profiles that exist and counts the others as not found, creating nothing."""
    submit(http, b"batch=pcId,param1\n124,old\n")
    drain()
    batch_id = batch_id_of(submit(http, SEED, v2=False))
    drain()
    assert status(http, batch_id) | {} == {
        "batchId": batch_id,
        "status": "complete",
        "batchSize": "4",
        "consumedCount": "4",
        "successfulUpdates": "1",
        "profilesNotFound": "3",
        "failedUpdates": "0",
    }
    assert attributes(http, "124", third_party=False) == {"param1": "value1", "param4": "value4"}
    assert attributes(http, "123", third_party=False) is None


def test_status_url_is_v1_path_for_v1(http: httpx.Client):
    url = xml_fields(submit(http, SEED, v2=False))["batchStatus"]
    assert "/m2/demo/profile/batchStatus?batchId=" in url


def test_failed_rows_are_counted_and_listed_for_v2(http: httpx.Client, drain):
    body = b"batch=thirdPartyId,a,b\nok1,x\nbad%2B1,x\nok2,%zz\nok3,1,2,3\n,x\nok4,%C3\n\nok5,y\n"
    batch_id = batch_id_of(submit(http, body))
    drain()
    fields = status(http, batch_id)
    assert fields["batchSize"] == "7" and fields["consumedCount"] == "7"
    assert fields["successfulUpdates"] == "2" and fields["failedUpdates"] == "5"
    response = http.get(
        "/m2/demo/v2/profile/batchStatus",
        params={"batchId": batch_id, "showDetails": "true", "m2Node": "00", "mboxPC": "x"},
    )
    assert failed_ids(response) == ["bad+1", "ok2", "ok3", "", "ok4"]
    assert b"<status>failed</status>" in response.content


def test_v1_status_lists_no_profiles(http: httpx.Client, drain):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\n,x\n", v2=False))
    drain()
    response = http.get(
        "/m2/demo/profile/batchStatus", params={"batchId": batch_id, "showDetails": "true"}
    )
    assert xml_fields(response)["failedUpdates"] == "1"
    assert failed_ids(response) == []


def test_later_rows_win_attribute_by_attribute(http: httpx.Client, drain):
    """Within a batch the later row wins; a later batch never erases what it does not set."""
    submit(http, b"batch=thirdPartyId,a,b,c\nx,1,1,1\nx,2,,2\n")
    submit(http, b"batch=thirdPartyId,b,d\nx,3,3\n")
    drain()
    assert attributes(http, "x") == {"a": "2", "b": "3", "c": "2", "d": "3"}


def test_empty_batch_completes_with_size_zero(http: httpx.Client):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\n\n\n"))
    assert status(http, batch_id)["status"] == "complete"
    assert status(http, batch_id)["batchSize"] == "0"


def test_multipart_upload(http: httpx.Client, drain):
    """A multipart field `batch` holds the file; its `batch=` prefix is optional."""
    for content in [b"batch=thirdPartyId,a\nm1,x\n", b"thirdPartyId,a\nm2,y\n"]:
        response = http.post("/m2/demo/v2/profile/batchUpdate", files={"batch": ("b.txt", content)})
        assert response.status_code == 200, response.text
    drain()
    assert attributes(http, "m1") == {"a": "x"} and attributes(http, "m2") == {"a": "y"}


def test_multipart_without_batch_field(http: httpx.Client):
    response = http.post("/m2/demo/v2/profile/batchUpdate", files={"file": ("b.txt", b"x")})
    assert response.status_code == 400
    assert "no field named 'batch'" in xml_fields(response)["message"]


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "application/octet-stream"]
)
def test_any_content_type_is_read_as_the_raw_batch(http: httpx.Client, drain, content_type: str):
    response = http.post(
        "/m2/demo/v2/profile/batchUpdate",
        content=b"batch=thirdPartyId,a\nct,v\n",
        headers={"content-type": content_type},
    )
    assert response.status_code == 200
    drain()
    assert attributes(http, "ct") == {"a": "v"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"thirdPartyId,a\nx,1\n", "must start with `batch=`"),
        (b"", "must start with `batch=`"),
        (b"batch=", "has no header"),
        (b"batch=ecid,a\nx,1\n", "`pcId` or `thirdPartyId`"),
        (b"batch=thirdPartyId,profile.a\nx,1\n", "without the `profile.` prefix"),
        (b"batch=thirdPartyId,a,a\nx,1\n", "repeats the attribute name"),
        (b"batch=thirdPartyId,a,\nx,1\n", "is empty"),
    ],
)
def test_malformed_batches_are_rejected_with_400(
    http: httpx.Client, store: Store, body: bytes, fragment: str
):
    response = submit(http, body)
    assert response.status_code == 400
    fields = xml_fields(response)
    assert fields["success"] == "false" and fields["batchStatus"] == ""
    assert fragment in fields["message"]
    assert store.pending_units() == 0
    assert store.rows_accepted_since(1, 0) == 0


def test_unknown_client_is_404_in_each_format(http: httpx.Client):
    response = submit(http, SEED, client="nobody")
    assert response.status_code == 404
    assert "Unknown client 'nobody'" in xml_fields(response)["message"]
    response = http.get("/m2/nobody/profile/batchStatus", params={"batchId": "x"})
    assert response.status_code == 404 and xml_fields(response)["success"] == "false"
    response = http.get("/rest/v1/profiles/1", params={"client": "nobody"})
    assert response.status_code == 404 and "Unknown client" in response.json()["message"]


def test_unknown_batch_is_404(http: httpx.Client):
    response = http.get("/m2/demo/profile/batchStatus", params={"batchId": "demo-1-1"})
    assert response.status_code == 404
    assert "No batch 'demo-1-1'" in xml_fields(response)["message"]


def test_fetch_not_found_messages(http: httpx.Client):
    response = http.get("/rest/v1/profiles/nope", params={"client": "demo"})
    assert response.status_code == 404
    assert response.json() == {
        "status": 404,
        "message": "No profile found for client demo with mboxPC=nope",
    }
    response = http.get("/rest/v1/profiles/thirdPartyId/nope", params={"client": "demo"})
    assert response.json() == {
        "status": 404,
        "message": "No profile found for client demo with third party id=nope",
    }


def test_xml_is_escaped(http: httpx.Client, drain):
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\n%3Cx%26y%3E,v\nbad%2F,1\n"))
    drain()
    response = http.get(
        "/m2/demo/v2/profile/batchStatus", params={"batchId": batch_id, "showDetails": "true"}
    )
    assert failed_ids(response) == ["bad/"]
    assert attributes(http, "<x&y>") == {"a": "v"}


def test_failed_rows_are_listed_across_pages(
    http: httpx.Client, drain, monkeypatch: pytest.MonkeyPatch
):
    """The failed rows of a status reply are read page by page, all of them, in line order."""
    monkeypatch.setattr("profilebase.server.web.bulk.FAILED_ROWS_PAGE", 3)
    body = b"batch=thirdPartyId,a\n" + b"".join(b"bad%d%%2F,x\nok%d,y\n" % (i, i) for i in range(8))
    batch_id = batch_id_of(submit(http, body))
    drain()
    response = http.get(
        "/m2/demo/v2/profile/batchStatus", params={"batchId": batch_id, "showDetails": "true"}
    )
    assert failed_ids(response) == [f"bad{i}/" for i in range(8)]
    assert xml_fields(response)["failedUpdates"] == "8"


def test_pc_id_rules_over_http(http: httpx.Client, drain):
    body = b"batch=pcId,a\n1.2.3,x\n" + b"y" * 129 + b",x\n1368007744041-575948.01_00,ok\n"
    batch_id = batch_id_of(submit(http, body))
    drain()
    response = http.get(
        "/m2/demo/v2/profile/batchStatus", params={"batchId": batch_id, "showDetails": "true"}
    )
    assert failed_ids(response) == ["1.2.3", "y" * 129]
    assert attributes(http, "1368007744041-575948.01_00", third_party=False) == {"a": "ok"}


def test_bom_and_crlf_over_http(http: httpx.Client, drain):
    batch_id = batch_id_of(submit(http, b"\xef\xbb\xbfbatch=thirdPartyId,a\r\nb1,x\r\n\r\nb2,y"))
    drain()
    assert status(http, batch_id)["successfulUpdates"] == "2"
    assert attributes(http, "b1") == {"a": "x"} and attributes(http, "b2") == {"a": "y"}


def test_status_xml_stays_well_formed_with_control_characters(http: httpx.Client, drain):
    """Characters XML cannot carry (here U+0001 in a failed id) are replaced, not emitted."""
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\n%01%2B,x\n"))
    drain()
    response = http.get(
        "/m2/demo/v2/profile/batchStatus", params={"batchId": batch_id, "showDetails": "true"}
    )
    assert failed_ids(response) == ["\ufffd+"]
