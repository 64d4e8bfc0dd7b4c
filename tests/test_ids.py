"""One id rule everywhere: an id a batch accepts, every endpoint reaches; any other id is
refused by every endpoint, with the same reason (docs/profiles.md, "Ids")."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import hypothesis
import hypothesis.strategies
import pytest
from helpers import attributes, batch_id_of, deliver, status, submit, update

from profilebase import batchfile, ids
from profilebase.models import KeyKind
from profilebase.server.decoder import decode_unit

PC = KeyKind.PC_ID
TP = KeyKind.THIRD_PARTY_ID
PARAMETER = {PC: "mboxPC", TP: "mbox3rdPartyId"}
DELIVERY_FIELD = {PC: "tntId", TP: "thirdPartyId"}

#: Ids every endpoint must reach: the characters a URL, a query string, a form or a batch
#: cell treats specially, non-ASCII, markup, and the longest allowed.
REACHABLE = [
    pytest.param(PC, "a/b", id="pc-slash"),
    pytest.param(PC, "thirdPartyId/x", id="pc-looks-like-the-third-party-path"),
    pytest.param(PC, "thirdPartyId", id="pc-named-like-the-path-segment"),
    pytest.param(PC, "a+b", id="pc-plus"),
    pytest.param(PC, "50%", id="pc-percent"),
    pytest.param(PC, "%2F", id="pc-percent-escape-as-text"),
    pytest.param(PC, "a b", id="pc-space"),
    pytest.param(PC, "a?b=c&d", id="pc-query-characters"),
    pytest.param(PC, "a#b", id="pc-hash"),
    pytest.param(PC, "a;b,c", id="pc-semicolon-comma"),
    pytest.param(PC, "0f6c1e.28_0", id="pc-tnt-id-shape"),
    pytest.param(PC, "x" * ids.MAX_PC_ID_LENGTH, id="pc-longest"),
    pytest.param(PC, "é" * ids.MAX_PC_ID_LENGTH, id="pc-longest-non-ascii"),
    pytest.param(TP, "crm 1", id="tp-space"),
    pytest.param(TP, " crm-1 ", id="tp-encoded-spaces-around"),
    pytest.param(TP, "50%", id="tp-percent"),
    pytest.param(TP, "a?b=c&d", id="tp-query-characters"),
    pytest.param(TP, "a#b", id="tp-hash"),
    pytest.param(TP, "a..b", id="tp-dots-inside"),
    pytest.param(TP, "München€😀", id="tp-non-ascii"),
    pytest.param(TP, "<b>&amp;\"'", id="tp-markup"),
    pytest.param(TP, "' OR 1=1 --", id="tp-sql-looking"),
    pytest.param(TP, "\\x00", id="tp-backslash-text"),
    pytest.param(TP, "x" * ids.MAX_THIRD_PARTY_ID_LENGTH, id="tp-longest"),
    pytest.param(TP, "ü" * ids.MAX_THIRD_PARTY_ID_LENGTH, id="tp-longest-non-ascii"),
]

#: Ids no endpoint takes, and the words of the reason every endpoint gives.
REFUSED = [
    pytest.param(PC, "1.2.3", "at most one '.'", id="pc-two-dots"),
    pytest.param(PC, "..", "'.' or '..'", id="pc-dot-dot"),
    pytest.param(PC, ".", "'.' or '..'", id="pc-dot"),
    pytest.param(PC, "x" * (ids.MAX_PC_ID_LENGTH + 1), "at most 128", id="pc-one-too-long"),
    pytest.param(PC, "x" * 5000, "at most 128", id="pc-far-too-long"),
    pytest.param(PC, "a\x00b", "control character", id="pc-nul"),
    pytest.param(PC, "a\rb", "control character", id="pc-cr"),
    pytest.param(PC, "a\nb", "control character", id="pc-lf"),
    pytest.param(PC, "a\tb", "control character", id="pc-tab"),
    pytest.param(PC, "a\x7fb", "control character", id="pc-del"),
    pytest.param(PC, "a\x85b", "control character", id="pc-c1-next-line"),
    pytest.param(PC, "   ", "empty id", id="pc-only-spaces"),
    pytest.param(TP, "a/b", "must not contain '+' or '/'", id="tp-slash"),
    pytest.param(TP, "a+b", "must not contain '+' or '/'", id="tp-plus"),
    pytest.param(TP, "..", "'.' or '..'", id="tp-dot-dot"),
    pytest.param(TP, ".", "'.' or '..'", id="tp-dot"),
    pytest.param(
        TP, "x" * (ids.MAX_THIRD_PARTY_ID_LENGTH + 1), "at most 256", id="tp-one-too-long"
    ),
    pytest.param(TP, "x" * 5000, "at most 256", id="tp-far-too-long"),
    pytest.param(TP, "a\x00b", "control character", id="tp-nul"),
    pytest.param(TP, "crm-1\r\n", "control character", id="tp-crlf"),
    pytest.param(TP, "\x1b[31mred", "control character", id="tp-escape-sequence"),
    pytest.param(TP, " ", "empty id", id="tp-one-space"),
]


def profile_path(kind: KeyKind, identifier: str) -> str:
    """The fetch and delete path of an id, every character but unreserved ones escaped
    (``/`` as ``%2F``), as a client must build it; an id of dots is escaped too, or the
    client would resolve it as a relative path (``..`` is the parent) before sending."""
    encoded = urllib.parse.quote(identifier, safe="")
    if set(identifier) == {"."}:
        encoded = encoded.replace(".", "%2E")
    return f"/rest/v1/profiles/{'thirdPartyId/' if kind is TP else ''}{encoded}"


def batch_of(kind: KeyKind, identifier: str) -> bytes:
    return batchfile.encode(kind, ["tier"], [[identifier, "gold"]])


def message(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("application/xml"):
        return response.text
    return str(response.json()["message"])


def values(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {name: a["value"] for name, a in response.json()["profileAttributes"].items()}


@pytest.mark.parametrize(("kind", "identifier"), REACHABLE)
def test_an_id_a_batch_accepts_is_reachable_everywhere(
    http: httpx.Client, drain, kind: KeyKind, identifier: str
):
    """A v2 batch stores the id; fetch, single update, page call, export and delete reach it."""
    accepted = submit(http, batch_of(kind, identifier))
    assert accepted.status_code == 200, accepted.text
    drain()
    counts = status(http, batch_id_of(accepted))
    assert (counts["successfulUpdates"], counts["failedUpdates"]) == ("1", "0"), counts

    fetched = http.get(profile_path(kind, identifier), params={"client": "demo"})
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["visitorId"] == identifier
    assert values(fetched) == {"tier": "gold"}

    updated = update(http, **{PARAMETER[kind]: identifier, "profile_city": "Oslo"})
    assert updated.status_code == 200, updated.text
    posted = http.post(
        "/m2/demo/profile/update",
        content=urllib.parse.urlencode({PARAMETER[kind]: identifier, "profile.zip": "0150"}),
    )
    assert posted.status_code == 200, posted.text

    called = deliver(
        http,
        {
            "id": {DELIVERY_FIELD[kind]: identifier},
            "execute": {"pageLoad": {"profileParameters": {"seen": "yes"}}},
        },
    )
    assert called.status_code == 200, called.text
    tnt_id = called.json()["id"]["tntId"]
    expected = {"tier": "gold", "city": "Oslo", "zip": "0150", "seen": "yes"}
    assert values(http.get(profile_path(kind, identifier), params={"client": "demo"})) == expected
    # The page call's tntId finds the same profile (for a thirdPartyId: the link it made).
    assert values(http.get(profile_path(PC, tnt_id), params={"client": "demo"})) == expected

    lines = http.get("/rest/v1/profiles", params={"client": "demo", "format": "jsonl"})
    exported = [json.loads(line) for line in lines.text.splitlines()]
    own = "visitorId" if kind is PC else "thirdPartyId"
    assert [p["profileAttributes"]["tier"]["value"] for p in exported if p.get(own) == identifier]
    batch = http.get(
        "/rest/v1/profiles", params={"client": "demo", "format": "batch", "key": str(kind)}
    )
    header, rows = batchfile.parse(batch.content)
    assert header.key_kind is kind
    assert [row.values["tier"] for _, row in rows if row.id == identifier] == ["gold"]  # type: ignore[union-attr]

    deleted = http.delete(profile_path(kind, identifier), params={"client": "demo"})
    assert deleted.status_code == 204, deleted.text
    gone = http.get(profile_path(kind, identifier), params={"client": "demo"})
    assert gone.status_code == 404, gone.text


@pytest.mark.parametrize(("kind", "identifier", "reason"), REFUSED)
def test_an_id_one_endpoint_refuses_every_endpoint_refuses_with_the_reason(
    http: httpx.Client, drain, database_url: str, kind: KeyKind, identifier: str, reason: str
):
    """The batch fails the row with the reason; fetch, delete, single update and page call
    answer 400 with the same reason, and nothing is stored."""
    accepted = submit(
        http, batch_of(kind, identifier) + batch_of(kind, "good-1").split(b"\n", 1)[1]
    )
    assert accepted.status_code == 200, accepted.text
    drain()
    batch_id = batch_id_of(accepted)
    counts = status(http, batch_id)
    assert (counts["successfulUpdates"], counts["failedUpdates"]) == ("1", "1"), counts
    failures = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}/failures").json()
    assert reason in failures["failures"][0]["reason"]

    for method in ("GET", "DELETE"):
        refused = http.request(method, profile_path(kind, identifier), params={"client": "demo"})
        assert refused.status_code == 400, (method, refused.text)
        assert reason in message(refused), (method, refused.text)
    refused = update(http, **{PARAMETER[kind]: identifier, "profile_city": "Oslo"})
    assert refused.status_code == 400, refused.text
    assert reason in message(refused)
    refused = deliver(http, {"id": {DELIVERY_FIELD[kind]: identifier}})
    assert refused.status_code == 400, refused.text
    assert reason in message(refused)

    exported = http.get("/rest/v1/profiles", params={"client": "demo", "format": "jsonl"})
    assert [json.loads(line)["visitorId"] for line in exported.text.splitlines()] == ["good-1"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param("%FF", "UTF-8", id="invalid-byte"),
        pytest.param("%C0%AF", "UTF-8", id="overlong-slash"),
        pytest.param("%ED%A0%80", "UTF-8", id="encoded-surrogate"),
        pytest.param("a%E2%82", "UTF-8", id="truncated-sequence"),
    ],
)
@pytest.mark.parametrize("kind", [PC, TP])
def test_invalid_utf8_in_an_id_is_refused_everywhere(
    http: httpx.Client, drain, kind: KeyKind, raw: str, fragment: str
):
    """Percent-escapes that do not decode to UTF-8 fail the batch row, and are a 400 in a
    path or a query string, never a 404 or a 500."""
    body = f"batch={kind},tier\n{raw},gold\n".encode()
    accepted = submit(http, body)
    assert accepted.status_code == 200, accepted.text
    drain()
    assert status(http, batch_id_of(accepted))["failedUpdates"] == "1"
    path = f"/rest/v1/profiles/{'thirdPartyId/' if kind is TP else ''}{raw}"
    for method in ("GET", "DELETE"):
        refused = http.request(method, path, params={"client": "demo"})
        assert refused.status_code == 400, (method, refused.text)
        assert fragment in message(refused)
    refused = http.get(f"/m2/demo/profile/update?{PARAMETER[kind]}={raw}&profile.a=1")
    assert refused.status_code == 400, refused.text
    assert fragment in message(refused)


@pytest.mark.parametrize("kind", [PC, TP])
def test_an_unpaired_surrogate_in_json_is_refused(http: httpx.Client, kind: KeyKind):
    """JSON can spell a lone surrogate (\\ud800) that no UTF-8 can: a page call and a JSON
    single update refuse it with 400 instead of failing to store it."""
    text = '{"%s": "crm-\\ud800"}'
    refused = http.post(
        "/rest/v1/delivery",
        params={"client": "demo", "sessionId": "s1"},
        content=('{"id": ' + text % DELIVERY_FIELD[kind] + "}").encode(),
        headers={"content-type": "application/json"},
    )
    assert refused.status_code == 400, refused.text
    assert "surrogate" in message(refused)
    refused = http.post(
        "/m2/demo/profile/update",
        content=(text % PARAMETER[kind])[:-1].encode() + b', "profile.a": "1"}',
        headers={"content-type": "application/json"},
    )
    assert refused.status_code == 400, refused.text
    assert "surrogate" in message(refused)


@pytest.mark.parametrize("where", ["value", "name"])
def test_an_unpaired_surrogate_in_a_json_attribute_is_refused_and_a_pair_is_kept(
    http: httpx.Client, where: str
):
    """An attribute's value or name spelled with a lone surrogate (\\udc00) in a page
    call's or a single update's JSON body: 400 that names it, nothing written (it was a
    500); the same attribute with a surrogate pair (\\ud83d\\ude00, one character) is
    applied."""

    def attribute(text: str, prefix: str = "") -> str:
        return f'"{prefix}{text}": "v"' if where == "name" else f'"{prefix}a": "{text}"'

    def page_call(text: str) -> httpx.Response:
        body = '{"id": {"thirdPartyId": "s1"}, "execute": {"pageLoad": {"profileParameters": {'
        return http.post(
            "/rest/v1/delivery",
            params={"client": "demo", "sessionId": "s1"},
            content=(body + attribute(text) + "}}}}").encode(),
            headers={"content-type": "application/json"},
        )

    def single_update(text: str) -> httpx.Response:
        return http.post(
            "/m2/demo/profile/update",
            content=('{"mbox3rdPartyId": "s1", ' + attribute(text, "profile.") + "}").encode(),
            headers={"content-type": "application/json"},
        )

    for send in (page_call, single_update):
        refused = send("x\\udc00")
        assert refused.status_code == 400, refused.text
        assert "lone UTF-16 surrogate" in message(refused)
    assert attributes(http, "s1") is None  # the refused page call created nothing
    for send in (page_call, single_update):
        assert send("x\\ud83d\\ude00").status_code == 200
    kept = attributes(http, "s1") or {}
    assert kept == ({"x\U0001f600": "v"} if where == "name" else {"a": "x\U0001f600"}), kept


@pytest.mark.parametrize(
    ("kind", "identifier"),
    [*REACHABLE, *[pytest.param(*p.values[:2], id=p.id) for p in REFUSED]],
)
def test_the_fast_decoder_and_the_reference_agree_on_every_id(kind: KeyKind, identifier: str):
    """decode_unit (DuckDB) takes exactly the ids batchfile.parse takes, with the same reason."""
    body = batch_of(kind, identifier)
    header, outcomes = batchfile.parse(body)
    ((_, expected),) = outcomes
    unit = body.split(b"\n", 1)[1]
    rows, failures = decode_unit(unit, 2, header, 1, 0)
    if isinstance(expected, batchfile.CellError):
        assert rows == [] and [f.reason for f in failures] == [str(expected)]
    else:
        assert failures == [] and [r.id for r in rows] == [expected.id] == [identifier]


@hypothesis.given(
    hypothesis.strategies.one_of(
        hypothesis.strategies.text(max_size=300),
        hypothesis.strategies.text(
            alphabet=hypothesis.strategies.sampled_from(
                ["a", "é", " ", ".", "+", "/", "\x00", "\t", "\x7f", "\x85", "\ud800", "\U0001f600"]
            ),
            max_size=260,
        ),
    )
)
def test_the_quick_third_party_id_rule_agrees_with_the_full_one(identifier: str):
    assert ids.is_valid_third_party_id(identifier) == (ids.check_id(TP, identifier) is None)


@pytest.mark.parametrize(
    "identifier",
    ["", " ", " a", ".", "..", ".a", "a/b", "a+b", "a\x00", "x" * 256, "x" * 257, "a b", "ü"],
)
def test_the_quick_third_party_id_rule_at_its_edges(identifier: str):
    assert ids.is_valid_third_party_id(identifier) == (ids.check_id(TP, identifier) is None)
