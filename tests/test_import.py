"""Import: a client's JSON-lines export round-trips exactly into another client or server,
ids and modified times included, with a batch's guarantees (order, accounting, failures)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from helpers import deliver, submit, update
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from profilebase import batchfile
from profilebase.cli import main
from profilebase.ids import check_id
from profilebase.models import SEQ_SPAN, KeyKind, Limits, now_ms
from profilebase.server import clients, profile_import
from profilebase.server.settings import Settings
from profilebase.server.storage import Store

LIMITS = Limits(
    max_batch_bytes=10**9, max_batch_rows=10**7, rows_per_day=10**9, max_profile_bytes=10**6
)


def exported(http: httpx.Client, client: str) -> list[dict[str, Any]]:
    response = http.get("/rest/v1/profiles", params={"client": client})
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def comparable(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything but the client code and provenance (which names the source's writes); the
    tntIds as a set (one import links them by one write, in no order among themselves)."""
    out = []
    for profile in profiles:
        profile = {k: v for k, v in profile.items() if k != "client"}
        if "tntIds" in profile:
            profile["tntIds"] = sorted(profile["tntIds"])
        profile["profileAttributes"] = {
            name: {k: v for k, v in a.items() if k != "writtenBy"}
            for name, a in profile["profileAttributes"].items()
        }
        out.append(profile)
    return out


def import_lines(
    store: Store, data: bytes, code: str = "copy", unit_rows: int = 50, key: str | None = None
) -> tuple[int, str]:
    client = store.get_client(code)
    assert client is not None
    intake = profile_import.ImportIntake(LIMITS, unit_rows, digest=key is not None)
    intake.feed(data)
    intake.finish()
    return profile_import.accept(store, client, intake, LIMITS, now_ms(), key)


@pytest.fixture
def mixed(http: httpx.Client, drain) -> None:
    """Profiles from every side: batches, a page call linking two tntIds, a single update."""
    submit(http, b"batch=thirdPartyId,tier,city\ncrm-1,gold,M%C3%BCnchen\ncrm-2,silver\n")
    submit(http, b"batch=pcId,tier\nanon,bronze\n")
    drain()
    deliver(http, {"id": {"tntId": "t1", "thirdPartyId": "crm-1"}})
    deliver(
        http,
        {
            "id": {"tntId": "t2", "thirdPartyId": "crm-1"},
            "execute": {"pageLoad": {"profileParameters": {"seen": "yes"}}},
        },
    )
    update(http, mbox3rdPartyId="crm-2", profile_tier="platinum")


def test_export_then_import_into_another_client_is_exact(
    http: httpx.Client, store: Store, drain, mixed
):
    """Values, attribute and profile modified times, thirdPartyIds and linked tntIds."""
    original = exported(http, "demo")
    store.ensure_client("copy")
    data = profile_import.lines_of(original)
    response = http.post("/profilebase/v1/clients/copy/imports", content=data)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["rows"] == 3
    drain()
    status = http.get(accepted["batchStatus"]).json()
    assert status["state"] == "complete" and status["version"] == 3
    assert (status["batchSize"], status["successfulUpdates"], status["failedUpdates"]) == (3, 3, 0)
    assert comparable(exported(http, "copy")) == comparable(original)
    linked = http.get("/rest/v1/profiles/t2", params={"client": "copy"}).json()
    assert linked["profileAttributes"]["city"]["value"] == "München"
    written = linked["profileAttributes"]["seen"]["writtenBy"]
    assert written == {"kind": "batch", "id": accepted["batchId"], "line": 2}


TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)
THIRD_PARTY = TEXT.filter(lambda t: check_id(KeyKind.THIRD_PARTY_ID, t) is None)
PC_ID = TEXT.filter(lambda t: check_id(KeyKind.PC_ID, t) is None)


@hypothesis_settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    profiles=st.lists(
        st.tuples(
            THIRD_PARTY,
            st.lists(PC_ID, max_size=3, unique=True),
            st.dictionaries(
                TEXT.filter(lambda n: not n.startswith("profile.")), TEXT, min_size=1, max_size=4
            ),
            st.integers(min_value=0, max_value=4_000_000_000_000),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda p: p[0],
    ).filter(lambda ps: len({t for p in ps for t in p[1]}) == sum(len(p[1]) for p in ps))
)
def test_random_utf8_profiles_round_trip(store: Store, drain, profiles: list[Any]):
    """Any characters in ids, names and values; any times: import, export, the same lines."""
    code = f"c{abs(hash(json.dumps(profiles, default=str))) % 10**12}"
    store.ensure_client(code)
    documents = []
    for third, tnt_ids, values, ms in profiles:
        when = profile_import_time(ms)
        documents.append(
            {
                "visitorId": third,
                "modifiedAt": when,
                "profileAttributes": {
                    n: {"value": v, "modifiedAt": when} for n, v in sorted(values.items())
                },
                "thirdPartyId": third,
                **({"tntIds": tnt_ids} if tnt_ids else {}),
            }
        )
    documents.sort(key=lambda d: "t:" + d["thirdPartyId"])
    import_lines(store, profile_import.lines_of(documents), code)
    drain()
    client = store.get_client(code)
    assert client is not None
    snapshot = store.open_export(client.id)
    try:
        from profilebase.server import export

        lines = "".join(export.export_chunks(snapshot.pages(100), "jsonl"))
    finally:
        snapshot.close()
    assert comparable([json.loads(line) for line in lines.split("\n")[:-1]]) == comparable(
        documents
    )


def profile_import_time(ms: int) -> str:
    from profilebase.models import from_ms, iso_ms

    return iso_ms(from_ms(ms))


def test_an_import_takes_its_place_among_writes_by_seq(http: httpx.Client, store: Store, drain):
    """Accepted, not yet applied: a single update after it wins, a delete after it holds."""
    submit(http, b"batch=thirdPartyId,tier\nx,bronze\ny,bronze\n")
    drain()
    lines = profile_import.lines_of(
        [
            {
                "thirdPartyId": "x",
                "profileAttributes": {"tier": {"value": "gold"}, "city": {"value": "Rome"}},
            },
            {"thirdPartyId": "y", "profileAttributes": {"tier": {"value": "gold"}}},
        ]
    )
    batch_id = http.post("/profilebase/v1/clients/demo/imports", content=lines).json()["batchId"]
    assert update(http, mbox3rdPartyId="x", profile_tier="platinum").status_code == 200
    assert (
        http.delete("/rest/v1/profiles/thirdPartyId/y", params={"client": "demo"}).status_code
        == 204
    )
    drain()
    x = http.get("/rest/v1/profiles/thirdPartyId/x", params={"client": "demo"}).json()[
        "profileAttributes"
    ]
    assert (x["tier"]["value"], x["city"]["value"]) == ("platinum", "Rome")
    assert (
        http.get("/rest/v1/profiles/thirdPartyId/y", params={"client": "demo"}).status_code == 404
    )
    status = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()
    assert (status["consumedCount"], status["successfulUpdates"], status["failedUpdates"]) == (
        2,
        2,
        0,
    )


BAD_LINES = [
    (b"not json", "the line is not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"profileAttributes": {}}', "neither thirdPartyId nor visitorId"),
    (b'{"thirdPartyId": "a/b"}', "must not contain '+' or '/'"),
    (b'{"thirdPartyId": ""}', "thirdPartyId is empty"),
    (b'{"visitorId": "a.b.c"}', "at most one '.'"),
    (b'{"visitorId": "v", "tntIds": ["w"]}', "its tntIds can only be its visitorId"),
    (b'{"thirdPartyId": "a", "tntIds": "t"}', "tntIds must be a list"),
    (b'{"thirdPartyId": "a", "profileAttributes": {"n": {"value": 5}}}', "must be text"),
    (
        b'{"thirdPartyId": "a", "profileAttributes": {"profile.n": "v"}}',
        "without the `profile.` prefix",
    ),
    (
        b'{"thirdPartyId": "a", "profileAttributes": {"n": {"value": "v", "modifiedAt": "yesterday"}}}',
        "not an ISO-8601 time",
    ),
    (b'{"thirdPartyId": "a", "modifiedAt": "2026-01-01T00:00:00"}', "has no time zone"),
    (b'{"thirdPartyId": "caf\xe9"}', "not UTF-8"),
]


def test_every_bad_line_fails_with_its_reason_and_the_rest_apply(http: httpx.Client, drain):
    good = b'{"thirdPartyId": "ok", "profileAttributes": {"n": "1"}}\r\n'
    data = good + b"\n".join(line for line, _ in BAD_LINES) + b"\n\n" + good.replace(b"ok", b"ok2")
    batch_id = http.post("/profilebase/v1/clients/demo/imports", content=data).json()["batchId"]
    drain()
    status = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}").json()
    assert (status["batchSize"], status["successfulUpdates"], status["failedUpdates"]) == (
        15,
        2,
        13,
    )
    failures = http.get(f"/profilebase/v1/clients/demo/batches/{batch_id}/failures").json()[
        "failures"
    ]
    assert [f["line"] for f in failures] == list(range(2, 15))
    for failure, (_, reason) in zip(failures, BAD_LINES, strict=True):
        assert reason in failure["reason"], failure
    assert (
        http.get("/rest/v1/profiles/thirdPartyId/ok2", params={"client": "demo"}).status_code == 200
    )


def test_nul_fails_on_postgresql_only(store: Store, drain, settings: Settings):
    store.ensure_client("copy")
    seq, batch_id = import_lines(
        store, b'{"thirdPartyId": "n", "profileAttributes": {"v": "a\\u0000b"}}\n'
    )
    drain()
    batch = store.get_batch(store.get_client("copy").id, batch_id)  # type: ignore[union-attr]
    assert batch is not None
    if settings.database.startswith("postgres"):
        assert batch.counts.failed == 1
        assert "U+0000" in store.failed_rows(seq)[0].reason
    else:
        assert batch.counts.successful == 1


def test_a_tnt_id_with_an_anonymous_profile_joins_the_imported_one(
    http: httpx.Client, store: Store, drain
):
    """As a page call joining the two: the anonymous values stay unless the import's win."""
    submit(http, b"batch=pcId,seen,tier\nt9,yes,bronze\n")
    drain()
    lines = profile_import.lines_of(
        [{"thirdPartyId": "crm-9", "tntIds": ["t9"], "profileAttributes": {"tier": "gold"}}]
    )
    http.post("/profilebase/v1/clients/demo/imports", content=lines)
    drain()
    profile = http.get("/rest/v1/profiles/t9", params={"client": "demo"}).json()
    values = {n: a["value"] for n, a in profile["profileAttributes"].items()}
    assert values == {"seen": "yes", "tier": "gold"}
    ids = [
        json.loads(line)
        for line in http.get("/rest/v1/profiles", params={"client": "demo"}).text.splitlines()
    ]
    assert [(p["visitorId"], p.get("tntIds")) for p in ids] == [("crm-9", ["t9"])]


def test_a_profile_too_large_fails_and_the_idempotency_key_sends_nothing_twice(
    http: httpx.Client, drain
):
    huge = "x" * 3_000_000
    lines = profile_import.lines_of(
        [
            {"thirdPartyId": "big", "profileAttributes": {"n": huge}},
            {"thirdPartyId": "small", "profileAttributes": {"n": "1"}},
        ]
    )
    first = http.post(
        "/profilebase/v1/clients/demo/imports", content=lines, headers={"Idempotency-Key": "k1"}
    ).json()
    again = http.post(
        "/profilebase/v1/clients/demo/imports", content=lines, headers={"Idempotency-Key": "k1"}
    ).json()
    assert first["batchId"] == again["batchId"]
    drain()
    status = http.get(first["batchStatus"]).json()
    assert (status["successfulUpdates"], status["failedUpdates"]) == (1, 1)
    reason = http.get(f"/profilebase/v1/clients/demo/batches/{first['batchId']}/failures").json()[
        "failures"
    ][0]["reason"]
    assert "max_profile_bytes" in reason
    listed = http.get("/profilebase/v1/clients/demo/batches").json()["batches"]
    assert len(listed) == 1


def test_an_import_can_be_cancelled_like_a_batch(http: httpx.Client, store: Store):
    lines = profile_import.lines_of(
        [{"thirdPartyId": f"p{i}", "profileAttributes": {"n": str(i)}} for i in range(120)]
    )
    batch_id = http.post("/profilebase/v1/clients/demo/imports", content=lines).json()["batchId"]
    claim = store.claim_unit("w", now_ms(), 60_000)
    assert claim is not None
    assert profile_import.apply_claim(store, claim, now_ms(), 10**6) is not None
    status = http.post(f"/profilebase/v1/clients/demo/batches/{batch_id}/cancel").json()
    # The first unit holds 25 lines, half the test settings' unit_rows.
    assert (status["rowsCancelled"], status["successfulUpdates"], status["failedUpdates"]) == (
        95,
        25,
        95,
    )
    failure = http.get(
        f"/profilebase/v1/clients/demo/batches/{batch_id}/failures", params={"limit": 1}
    ).json()["failures"][0]
    assert (failure["line"], failure["id"], failure["reason"]) == (26, "p25", "cancelled")


def test_a_delete_committed_during_an_import_is_not_undone_by_it(
    http: httpx.Client, store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """PostgreSQL: x is deleted (it has no profile yet: a tombstone) after an import that
    creates x read the tombstones and before it inserts x. Once x is in, the import finds
    the tombstone, runs its unit again at once and skips x, older than the delete. (SQLite
    runs one writer at a time.)"""
    if not settings.database.startswith("postgres"):
        pytest.skip("a PostgreSQL race")
    from profilebase.server.storage.postgres.imports import PostgresImports

    lines = profile_import.lines_of([{"thirdPartyId": "x", "profileAttributes": {"n": "1"}}])
    assert http.post("/profilebase/v1/clients/demo/imports", content=lines).status_code == 202
    claim = store.claim_unit("w", now_ms(), 60_000)
    assert claim is not None
    reached, go = threading.Event(), threading.Event()
    upsert = PostgresImports._upsert

    def paused(self: PostgresImports, *args: Any) -> None:
        if not reached.is_set():
            reached.set()
            go.wait(30)
        upsert(self, *args)

    monkeypatch.setattr(PostgresImports, "_upsert", paused)
    result: list[Any] = []
    applying = threading.Thread(
        target=lambda: result.append(profile_import.apply_claim(store, claim, now_ms(), 10**6))
    )
    applying.start()
    try:
        assert reached.wait(30)
        assert store.delete_profile(claim.client_id, "t:x", now_ms()) is False
    finally:
        go.set()
        applying.join(30)
    assert result and result[0] is not None
    assert store.get_profile(claim.client_id, "t:x") is None


# -- the command ---------------------------------------------------------------------------


@pytest.fixture
def run(working_server, monkeypatch: pytest.MonkeyPatch, settings: Settings, request):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PROFILEBASE_URL", working_server.url)
    monkeypatch.setenv("PROFILEBASE_CLIENT", "demo")
    where = ["--database", settings.database] if getattr(request, "param", "") == "database" else []

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(
            main, [*args, *where, *([] if where else ["--poll-interval", "0.01"])]
        )

    return invoke


@pytest.mark.parametrize("run", ["url", "database"], indirect=True)
def test_import_command_in_parts_reports_failed_lines_of_the_file(
    run, store: Store, tmp_path: Path
):  # type: ignore[no-untyped-def]
    """A client limited to 40 rows per batch: the file goes in parts, in order, and a
    failed line is reported by its line in the file; the same key imports nothing twice."""
    store.update_client("demo", limits={"max_batch_rows": 40})
    documents = [
        {"thirdPartyId": f"p{i:03d}", "profileAttributes": {"n": str(i)}} for i in range(100)
    ]
    documents[72] = {"thirdPartyId": "bad/id"}
    documents.append(
        {"thirdPartyId": "p000", "profileAttributes": {"n": "last"}}
    )  # later part wins
    source = tmp_path / "in.jsonl"
    source.write_bytes(profile_import.lines_of(documents))
    result = run("import", str(source), "--idempotency-key", "imp")
    assert result.exit_code == 4, result.output
    assert "sent 101 profiles in 3 import(s)" in result.stdout
    assert "imported 100 · failed 1" in result.stdout
    assert "line 73 ('bad/id'): thirdPartyId must not contain" in result.stderr
    exported_now = run("export")
    values = {
        json.loads(line)["visitorId"]: json.loads(line)["profileAttributes"]["n"]["value"]
        for line in exported_now.stdout.splitlines()
    }
    assert len(values) == 99 and values["p000"] == "last"
    again = run("import", str(source), "--idempotency-key", "imp")
    assert again.exit_code == 4 and "sent 101 profiles in 3 import(s)" in again.stdout
    demo = clients.get(store, "demo")
    assert len(store.batch_listings(demo.id)) == 3


def test_a_line_too_long_for_any_part_is_refused_before_sending(run, store: Store, tmp_path: Path):  # type: ignore[no-untyped-def]
    store.update_client("demo", limits={"max_batch_bytes": 1000})
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        profile_import.lines_of(
            [{"thirdPartyId": "a"}, {"thirdPartyId": "b", "profileAttributes": {"n": "x" * 2000}}]
        )
    )
    result = run("import", str(source))
    assert (
        result.exit_code == 3
        and "Line 2 is" in result.output
        and "Nothing was sent" in result.output
    )
    assert store.batch_listings(clients.get(store, "demo").id) == []


def test_batchfile_ids_and_import_ids_follow_one_rule():
    """The import checks ids with the batch format's own rule."""
    assert batchfile.check_id is profile_import.batchfile.check_id


ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | TEXT
    | st.sampled_from(["2026-01-31T12:00:00.001+00:00", "2026-01-31T12:00:00", "x"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(TEXT | st.sampled_from(["value", "modifiedAt"]), children, max_size=3)
    ),
    max_leaves=8,
)
DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "visitorId": ANY_JSON | PC_ID,
        "thirdPartyId": ANY_JSON | THIRD_PARTY,
        "tntIds": ANY_JSON | st.lists(PC_ID, max_size=2),
        "modifiedAt": ANY_JSON,
        "profileAttributes": ANY_JSON
        | st.dictionaries(
            TEXT | st.just("profile.x"),
            st.fixed_dictionaries({"value": ANY_JSON}, optional={"modifiedAt": ANY_JSON}) | TEXT,
            max_size=3,
        ),
    },
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(document=DOCUMENTS)
def test_the_fast_decoder_agrees_with_the_reference(document: dict[str, Any]):
    """Wherever the msgspec path decodes a line, it decodes it as the reference does."""
    line = json.dumps(document).encode()
    fast = profile_import.fast_line(line, 7, 700, 5, profile_import.Seen())
    try:
        reference = profile_import.decode_line(line, 7, 700, 5)
    except profile_import.LineError:
        assert fast is None
        return
    if fast is not None:
        assert fast._replace(attrs=json.loads(fast.attrs)) == reference._replace(
            attrs=json.loads(reference.attrs)
        )


TIMES = st.sampled_from(
    ["2026-01-31T12:00:00.001+00:00", "2026-01-31T12:00:00.002+01:00", "2026-01-31", "x", None]
)
#: Lines that share their ids and times, so that a unit meets the same ones again.
UNIT_DOCUMENTS = st.fixed_dictionaries(
    {"thirdPartyId": st.sampled_from(["a", "b", "a/b", ""])},
    optional={
        "visitorId": st.sampled_from(["a", "v", "v.w.x"]),
        "tntIds": st.lists(st.sampled_from(["t1", "t2", "", "t.1.2"]), max_size=2),
        "modifiedAt": TIMES,
        "profileAttributes": st.dictionaries(
            st.sampled_from(["tier", "city", "", "profile.x"]),
            st.fixed_dictionaries(
                {"value": st.sampled_from(["gold", "", "München", 5])},
                optional={"modifiedAt": TIMES},
            ),
            max_size=3,
        ),
    },
)
RAW_LINES = st.sampled_from(
    [b"", b" \t", b"\r", b"not json", b'{"thirdPartyId": "caf\xe9"}', b'{"thirdPartyId": "a\x00"}']
)


@hypothesis_settings(max_examples=200, deadline=None)
@given(lines=st.lists(UNIT_DOCUMENTS.map(lambda d: json.dumps(d).encode()) | RAW_LINES))
def test_a_unit_decodes_as_its_lines_do_one_by_one(lines: list[bytes]):
    """The unit's decoder (msgspec, with times remembered from line to line) gives each line
    the row or the failure reason that the reference gives it alone; blank lines are skipped."""
    rows, failures = profile_import.decode_unit(b"\n".join(lines), 5, 3, 1000)
    expected_rows, expected_failures = [], []
    for offset, line in enumerate(lines):
        if batchfile.is_blank(line):
            continue
        try:
            row = profile_import.decode_line(line, 5 + offset, 3 * SEQ_SPAN + 5 + offset, 1000)
        except profile_import.LineError as exc:
            expected_failures.append((5 + offset, str(exc)))
        else:
            expected_rows.append(row._replace(attrs=json.loads(row.attrs)))
    assert [row._replace(attrs=json.loads(row.attrs)) for row in rows] == expected_rows
    assert [(f.line, f.reason) for f in failures] == expected_failures


def test_an_empty_value_with_a_bad_time_fails_the_line_once_its_times_are_known():
    """The time of an attribute without a value is checked too, whatever the unit saw before."""
    good = b'{"thirdPartyId": "a", "profileAttributes": {"n": {"value": "1"}}}'
    bad = (
        b'{"thirdPartyId": "b", "profileAttributes": {"n": {"value": "1"}, '
        b'"m": {"value": "", "modifiedAt": "yesterday"}}}'
    )
    rows, failures = profile_import.decode_unit(good + b"\n" + bad, 1, 1, 1000)
    assert [row.line for row in rows] == [1]
    assert [(f.line, f.reason) for f in failures] == [
        (
            2,
            "modifiedAt of attribute 'm' 'yesterday' is not an ISO-8601 time such as "
            "2026-01-31T12:00:00.000+00:00",
        )
    ]


def test_lines_for_one_profile_in_one_unit_merge_in_line_order(store: Store, drain):
    """Per attribute the later line wins; the profile keeps the latest modified time."""
    store.ensure_client("copy")
    seq, batch_id = import_lines(
        store,
        profile_import.lines_of(
            [
                {"thirdPartyId": "x", "profileAttributes": {"tier": "gold", "city": "Rome"}},
                {"thirdPartyId": "y", "profileAttributes": {"tier": "bronze"}},
                {
                    "thirdPartyId": "x",
                    "modifiedAt": "2026-01-31T12:00:00.000+00:00",
                    "profileAttributes": {"tier": "silver"},
                },
            ]
        ),
    )
    drain()
    client = store.get_client("copy")
    assert client is not None
    profile = store.get_profile(client.id, "t:x")
    assert profile is not None
    values = {name: a.value for name, a in profile.attributes.items()}
    assert values == {"tier": "silver", "city": "Rome"}
    assert profile.attributes["tier"].modified_at == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert store.get_batch(client.id, batch_id).counts.successful == 3  # type: ignore[union-attr]


# -- the compact form the SDK sends, and compressed bodies ---------------------------------

STAMPS = st.sampled_from(
    [
        "2026-01-31T12:00:00.001+00:00",
        "2026-01-31T13:00:00.001+01:00",
        "2026-02-01T00:00:00.000+00:00",
        "2026-01-31",
        "x",
    ]
)
WRITTEN_BY = st.fixed_dictionaries(
    {"kind": st.sampled_from(["batch", "update"]), "id": TEXT, "line": st.integers(1, 9)}
)


@st.composite
def exported_lines(draw: st.DrawFn) -> bytes:
    """A line as an export writes it, or close to one: random UTF-8 ids, names and values,
    each attribute's time the profile's, another, or none, with provenance and client."""
    when = draw(st.none() | STAMPS)
    attributes: dict[str, Any] = {}
    for name in draw(st.lists(TEXT | st.just("profile.x"), max_size=4, unique=True)):
        value = draw(TEXT | st.just("") | st.integers(0, 3))
        shape = draw(st.sampled_from(["plain", "same", "other", "none", "null"]))
        if shape == "plain":
            attributes[name] = value
            continue
        entry: dict[str, Any] = {"value": value}
        if shape == "same":
            entry["modifiedAt"] = when
        elif shape == "other":
            entry["modifiedAt"] = draw(STAMPS)
        elif shape == "null":
            entry["modifiedAt"] = None
        if draw(st.booleans()):
            entry["writtenBy"] = draw(WRITTEN_BY)
        attributes[name] = entry
    third = draw(st.none() | THIRD_PARTY | st.just("a/b"))
    document: dict[str, Any] = {"client": "demo"}
    visitor = draw(st.none() | st.just(third) | PC_ID)
    if visitor is not None:
        document["visitorId"] = visitor
    if third is not None:
        document["thirdPartyId"] = third
    if when is not None or draw(st.booleans()):
        document["modifiedAt"] = when
    tnt_ids = draw(st.lists(PC_ID, max_size=2))
    if tnt_ids:
        document["tntIds"] = tnt_ids
    document["profileAttributes"] = attributes
    return json.dumps(document, ensure_ascii=draw(st.booleans())).encode()


@hypothesis_settings(max_examples=150, deadline=None)
@given(lines=st.lists(exported_lines() | RAW_LINES, max_size=6))
def test_the_compact_form_imports_exactly_as_the_file(lines: list[bytes]):
    """Every line in its compact form decodes to the same row, or fails with the same reason,
    as the line itself; one line for one, blank lines kept."""
    from profilebase import profilelines

    data = b"\n".join(lines)
    sent = profilelines.compact_lines(data)
    assert sent.count(b"\n") == data.count(b"\n")
    rows, failures = profile_import.decode_unit(sent, 5, 3, 1000)
    expected_rows, expected_failures = profile_import.decode_unit(data, 5, 3, 1000)
    assert [r._replace(attrs=json.loads(r.attrs)) for r in rows] == [
        r._replace(attrs=json.loads(r.attrs)) for r in expected_rows
    ]
    assert [(f.line, f.id, f.reason) for f in failures] == [
        (f.line, f.id, f.reason) for f in expected_failures
    ]
    assert len(sent) <= len(data) + len(lines)


def test_an_exported_line_is_sent_in_a_fifth_of_its_size():
    from profilebase import profilelines

    when = "2026-11-22T10:42:46.746+00:00"
    written = {"kind": "batch", "id": "demo-1796050729900-1", "line": 2}
    line = json.dumps(
        {
            "client": "demo",
            "visitorId": "crm-0000001",
            "modifiedAt": when,
            "profileAttributes": {
                name: {"value": "gold", "modifiedAt": when, "writtenBy": written}
                for name in ["tier", "city", "segment", "score", "language", "device", "news"]
            },
            "thirdPartyId": "crm-0000001",
        }
    ).encode()
    sent = profilelines.compact(line)
    assert json.loads(sent) == {
        "thirdPartyId": "crm-0000001",
        "modifiedAt": when,
        "profileAttributes": {
            name: "gold"
            for name in ["tier", "city", "segment", "score", "language", "device", "news"]
        },
    }
    assert len(sent) * 5 < len(line)


def test_sdk_import_round_trips_times_that_differ_per_attribute(
    live_server, store: Store, drain, http: httpx.Client, tmp_path: Path
):  # type: ignore[no-untyped-def]
    """Over real HTTP with the SDK (compact lines, parts): random UTF-8, attributes at the
    profile's time, at other times and (in the file) without one; the export of the copy is
    the file again, and a bad line in a later part fails under its line in the file."""
    import random

    from profilebase import Client

    chance = random.Random(7)

    def text(size: int) -> str:  # printable: ASCII, Latin, CJK, emoji
        ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x4E00, 0x4E20), (0x1F600, 0x1F610)]
        return "".join(chr(chance.randint(*chance.choice(ranges))) for _ in range(size))

    documents: list[dict[str, Any]] = []
    for number in range(12):
        when = profile_import_time(1_700_000_000_000 + number * 1000)
        attributes = {
            f"{text(3)}{i}": {
                "value": text(5),
                "modifiedAt": chance.choice([when, profile_import_time(1_600_000_000_000 + i)]),
            }
            for i in range(4)
        }
        third = f"crm-{number}-{text(4)}".replace("/", "_").replace("+", "_")
        documents.append(
            {
                "visitorId": third,
                "modifiedAt": when,
                "profileAttributes": attributes,
                "thirdPartyId": third,
                "tntIds": [f"t{number}"],
            }
        )
    lines = profile_import.lines_of(documents).split(b"\n")
    lines.insert(3, b"")
    lines.insert(9, b'{"thirdPartyId": "bad/id", "profileAttributes": {"n": "1"}}\r')
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines))
    store.ensure_client("copy")
    store.update_client("copy", limits={"max_batch_rows": 5})
    with Client(live_server.url, "copy", poll_interval=0, sleep=lambda seconds: drain()) as copy:
        result = copy.import_profiles(source)
    assert (result.rows, result.applied, len(result.batch_ids)) == (13, 12, 3), result.failures
    assert [(f.line, f.id) for f in result.failures] == [(10, "bad/id")]
    assert "must not contain '+' or '/'" in result.failures[0].reason
    assert comparable(exported(http, "copy")) == comparable(
        sorted(documents, key=lambda d: "t:" + d["thirdPartyId"])
    )


def test_a_gzip_import_is_applied_as_the_plain_one(http: httpx.Client, drain):
    import gzip

    lines = profile_import.lines_of(
        [{"thirdPartyId": f"g{i}", "profileAttributes": {"n": "München"}} for i in range(60)]
    )
    response = http.post(
        "/profilebase/v1/clients/demo/imports",
        content=gzip.compress(lines),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["rows"] == 60
    drain()
    status = http.get(response.json()["batchStatus"]).json()
    assert (status["successfulUpdates"], status["failedUpdates"]) == (60, 0)
    found = http.get("/rest/v1/profiles/thirdPartyId/g59", params={"client": "demo"}).json()
    assert found["profileAttributes"]["n"]["value"] == "München"


def test_a_bad_import_body_encoding_is_refused_with_the_reason(http: httpx.Client, store: Store):
    """Not gzip, cut short, a bomb past max_batch_bytes, an unknown coding: 4xx, nothing
    stored."""
    import gzip

    store.update_client("demo", limits={"max_batch_bytes": 100_000})
    whole = gzip.compress(b'{"thirdPartyId": "a"}\n' * 100)
    bomb = gzip.compress(b"\n" * 10_000_000)
    cases = [
        (b"plain text", "gzip", 400, "is not gzip data"),
        (whole[:-12], "gzip", 400, "ends in the middle of the compressed data"),
        (bomb, "gzip", 413, "The limits count the body decompressed (gzip)"),
        (whole, "br", 415, "is not supported"),
    ]
    for body, coding, code, message in cases:
        response = http.post(
            "/profilebase/v1/clients/demo/imports",
            content=body,
            headers={"Content-Encoding": coding},
        )
        assert response.status_code == code, response.text
        assert message in response.text, response.text
    assert store.batch_listings(clients.get(store, "demo").id) == []


#: Text at the edges of the id, name and value rules, and JSON punctuation.
EDGE_TEXT = (
    st.sampled_from(
        [
            "",
            " ",
            "  ",
            ".",
            "..",
            "...",
            "a/b",
            "a+b",
            ",",
            ":",
            "},{",
            '"',
            'x"},{"y',
            "x\\y",
            "a\nb",
            "\n",
            "\x00",
            "\x1f",
            "\x7f",
            "\x85",
            "\u2028",
            "ü",
            "p.1",
            "p.1.2",
            "crm-1",
            "a" * 256,
            "a" * 257,
        ]
    )
    | TEXT
)
COMPACT_DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "thirdPartyId": EDGE_TEXT,
        "visitorId": EDGE_TEXT,
        "tntIds": st.lists(EDGE_TEXT, max_size=2),
        "modifiedAt": TIMES,
        "profileAttributes": st.dictionaries(
            EDGE_TEXT | st.just("profile.x"), EDGE_TEXT, max_size=3
        ),
    },
)
#: Mostly valid lines, so that units repeat names, times and ids.
GOOD_COMPACT_DOCUMENTS = st.fixed_dictionaries(
    {"thirdPartyId": st.sampled_from(["a", "b", "crm-1", "ü"]) | THIRD_PARTY},
    optional={
        "modifiedAt": st.sampled_from(["2026-01-31T12:00:00.001+00:00", None]),
        "profileAttributes": st.dictionaries(
            st.sampled_from(["tier", "city", "ü"]), EDGE_TEXT, max_size=3
        ),
    },
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        (GOOD_COMPACT_DOCUMENTS | COMPACT_DOCUMENTS).map(
            lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ),
        min_size=1,
    )
)
def test_a_unit_of_compact_lines_decodes_as_its_lines_do_one_by_one(lines: list[bytes]):
    """A unit's lines, with names, times and ids at the edges of the rules, get each exactly
    the row (the attributes' text too) or the failure reason the line has alone."""
    rows, failures = profile_import.decode_unit(b"\n".join(lines), 5, 3, 1000)
    expected_rows, expected_failures = [], []
    for offset, line in enumerate(lines):
        number, seq = 5 + offset, 3 * SEQ_SPAN + 5 + offset
        row = profile_import.fast_line(line, number, seq, 1000, profile_import.Seen())
        if row is None:
            try:
                row = profile_import.decode_line(line, number, seq, 1000)
            except profile_import.LineError as exc:
                expected_failures.append((number, str(exc)))
                continue
        expected_rows.append(row)
    assert [row._replace(attrs=json.loads(row.attrs)) for row in rows] == [
        row._replace(attrs=json.loads(row.attrs)) for row in expected_rows
    ]
    assert [(f.line, f.reason) for f in failures] == expected_failures
    if all(profile_import.fast_line(line, 0, 0, 0, profile_import.Seen()) for line in lines):
        assert rows == expected_rows  # the attributes' text is msgspec's, as line by line


def test_the_first_part_is_small_and_the_rest_full(tmp_path: Path):
    """The SDK's parts: the first of at most ``first_rows`` lines, the others of ``max_rows``;
    blank lines count for no row but keep the file's line numbers; every line goes once."""
    from profilebase.client.imports import split

    lines = [b'{"thirdPartyId":"p%d"}\n' % i for i in range(23)]
    lines.insert(4, b"\n")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(lines))
    parts = list(split(source, 1_000_000, 10, first_rows=3))
    assert [p.rows for p in parts] == [3, 10, 10]
    assert [p.first_line for p in parts] == [1, 4, 15]
    assert b"".join(p.data for p in parts) == b"".join(lines)
    assert [p.rows for p in split(source, 1_000_000, 10)] == [10, 10, 3]
    assert [p.rows for p in split(source, 1_000_000, 2, first_rows=5)][:2] == [2, 2]


def test_no_part_is_made_of_blank_lines_alone(tmp_path: Path):
    """Blank lines past the byte limit before any profile are not sent as a part of their own
    (nor with ``first_rows`` of zero); the profile after them keeps its line number."""
    from profilebase.client.imports import split

    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n" * 40 + b'{"thirdPartyId":"a"}\n' + b"\n" + b'{"thirdPartyId":"b"}\n')
    parts = list(split(source, 30, 10, first_rows=0))
    assert [(p.first_line, p.rows) for p in parts] == [(41, 1), (43, 1)]
    assert [(p.first_line, p.rows) for p in split(source, 1000, 0)] == [(1, 1), (43, 1)]
    assert all(p.data.strip() for p in parts)
