"""JsonResponse (msgspec) writes the bytes Starlette's JSONResponse (json.dumps) writes for
what replies hold; floats differ at most in how an exponent is spelled, never in value. The
single update's reply (UpdatedResponse) is the one xml_response makes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from profilebase.server.web import xml
from profilebase.server.web.responses import JsonResponse

SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(DOCUMENTS)
def test_the_bytes_are_those_of_json_dumps(document: object):
    """Text (any code point), integers, booleans, null, arrays and objects in key order."""
    assert JsonResponse(document).body == JSONResponse(document).body


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_keep_their_value(number: float):
    """1e+16 may be written 1e16: the same number once read."""
    assert json.loads(JsonResponse({"x": number}).body) == {"x": number}


def test_the_headers_are_those_of_a_json_reply():
    """Content type and length as JSONResponse sets them."""
    ours, theirs = JsonResponse({"status": "ok"}, status_code=201), JSONResponse({"status": "ok"})
    assert ours.status_code == 201
    assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"
    assert ours.headers["content-length"] == theirs.headers["content-length"]


@given(
    st.none() | st.text(),
    st.dictionaries(
        st.sampled_from(["X-RateLimit-Limit", "X-RateLimit-Reset"]), st.text("0123456789")
    ),
)
def test_the_update_reply_is_the_one_xml_response_makes(pc_id: str | None, headers: dict[str, str]):
    """Same status, body (markup escaped, characters XML cannot carry replaced) and headers
    (names in lower case, as Starlette sends them)."""
    children = [
        xml.element("success", "true"),
        xml.element("pcId", pc_id),
        xml.element("message", "Request successfully submitted"),
    ]
    theirs = xml.xml_response(children, headers=headers)
    ours = xml.UpdatedResponse(pc_id, headers)
    assert (ours.status_code, ours.body) == (theirs.status_code, theirs.body)
    assert sorted(ours.raw_headers) == sorted(theirs.raw_headers)
