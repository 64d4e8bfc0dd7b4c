"""The storage contract: what every backend promises, run against SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3

import pytest

from profilebase import batchfile
from profilebase.errors import QuotaExceeded
from profilebase.models import SEQ_SPAN, BatchState, Counts, Limits, now_ms
from profilebase.server.decoder import decode_unit
from profilebase.server.ingest import Intake, store_batch
from profilebase.server.settings import Settings
from profilebase.server.storage import Store, sqlite_path
from profilebase.server.storage.base import UnitClaim
from profilebase.server.worker import Worker

LEASE = 10_000


def limits(rows_per_day: int = 1_000_000) -> Limits:
    return Limits(
        max_batch_bytes=10**9, max_batch_rows=10**6, rows_per_day=rows_per_day,
        max_profile_bytes=10**6,
    )  # fmt: skip


def accept(
    store: Store, body: bytes, version: int = 2, unit_rows: int = 4, at: int | None = None,
    rows_per_day: int = 1_000_000,
) -> tuple[int, str]:  # fmt: skip
    """Accept ``body`` for the demo client, cut into units of ``unit_rows`` lines (the first
    of half as many: two by default)."""
    client = store.get_client("demo")
    assert client is not None
    intake = Intake(limits(rows_per_day), unit_rows)
    intake.feed(body)
    read = intake.finish()
    return store_batch(store, client, version, read, limits(rows_per_day), at or now_ms())


def apply(store: Store, claim: UnitClaim, max_profile_bytes: int = 10**6) -> Counts | None:
    now = now_ms()
    header = batchfile.Header(claim.key_kind, claim.names)
    rows, failures = decode_unit(claim.body, claim.first_line, header, claim.batch_seq, now)
    return store.apply_unit(claim, rows, failures, now, max_profile_bytes)


def values(store: Store, identifier: str) -> dict[str, str] | None:
    profile = store.get_profile(1, "t:" + identifier)
    if profile is None:
        return None
    return {name: attribute.value for name, attribute in profile.attributes.items()}


def execute(database_url: str, sql: str, params: tuple[object, ...]) -> None:
    """Run one statement straight on the test database (for rows no Store method writes yet)."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(sqlite_path(database_url)) as db:
            db.execute(sql.replace("%s", "?"), params)
        return
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as pg:
        pg.execute(sql, params)  # type: ignore[arg-type]


def test_migrate_twice_applies_nothing(store: Store):
    assert store.migrate() == []


def test_clients(store: Store):
    """ensure_client is idempotent; an unknown code is None."""
    demo = store.ensure_client("demo")
    assert demo.id == 1 and store.ensure_client("demo") == demo
    other = store.ensure_client("other")
    assert other.id != demo.id and not other.require_auth and other.limits == {}
    assert store.get_client("nobody") is None


def test_accept_claim_apply_complete(store: Store):
    """A batch goes queued, processing, complete; its counts are the sum of its units."""
    body = b"batch=thirdPartyId,a\nr1,1\nr2,2\nr3,%zz\nr4,4\nr5,5\n"
    seq, batch_id = accept(store, body, unit_rows=2)  # units of 1, 2 and 2 lines
    assert batch_id == f"demo-{batch_id.split('-')[1]}-{seq}"
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.state is BatchState.QUEUED and batch.units_total == 3
    assert store.pending_units() == 3
    claim = store.claim_unit("w1", now_ms(), LEASE)
    assert claim is not None and (claim.batch_seq, claim.unit_no, claim.first_line) == (seq, 0, 2)
    assert store.get_batch(1, batch_id).state is BatchState.PROCESSING  # type: ignore[union-attr]
    assert apply(store, claim) == Counts(1, 1, 0, 0)
    while (claim := store.claim_unit("w1", now_ms(), LEASE)) is not None:
        apply(store, claim)
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.state is BatchState.COMPLETE
    assert batch.counts == Counts(5, 4, 0, 1) and batch.units_done == 3
    assert store.pending_units() == 0
    assert [f.line for f in store.failed_rows(seq)] == [4]
    assert values(store, "r5") == {"a": "5"}


def test_claim_returns_none_when_idle(store: Store):
    assert store.claim_unit("w1", now_ms(), LEASE) is None


def test_an_empty_batch_is_complete_at_once(store: Store):
    _, batch_id = accept(store, b"batch=thirdPartyId,a\n\n")
    batch = store.get_batch(1, batch_id)
    assert batch is not None and batch.state is BatchState.COMPLETE and batch.batch_size == 0


def test_unknown_batch_is_none(store: Store):
    assert store.get_batch(1, "demo-1-999") is None


def test_lease_expiry_lets_another_worker_take_over(store: Store):
    """A unit whose lease ran out goes to the next worker; the first one can no longer apply it."""
    _, batch_id = accept(store, b"batch=thirdPartyId,a\nx,1\n")
    start = now_ms()
    first = store.claim_unit("w1", start, 1000)
    assert first is not None
    assert store.claim_unit("w2", start + 500, 1000) is None
    second = store.claim_unit("w2", start + 1001, 1000)
    assert second is not None and second.unit_no == first.unit_no and second.attempts == 2
    assert apply(store, first) is None
    assert values(store, "x") is None
    assert apply(store, second) == Counts(1, 1, 0, 0)
    assert store.get_batch(1, batch_id).counts == Counts(1, 1, 0, 0)  # type: ignore[union-attr]


def test_released_unit_is_retried_after_its_delay(store: Store):
    accept(store, b"batch=thirdPartyId,a\nx,1\n")
    start = now_ms()
    claim = store.claim_unit("w1", start, LEASE)
    assert claim is not None
    store.release_unit(claim, "RuntimeError('boom')", start + 5000)
    assert store.claim_unit("w1", start + 1000, LEASE) is None
    again = store.claim_unit("w2", start + 5000, LEASE)
    assert again is not None and again.attempts == 2


def test_v1_updates_existing_profiles_only(store: Store):
    accept(store, b"batch=thirdPartyId,a\nold,1\n")
    _, batch_id = accept(store, b"batch=thirdPartyId,a,b\nold,2,2\nnew,1,1\n", version=1)
    Worker(store, Settings()).run(until_idle=True)
    assert store.get_batch(1, batch_id).counts == Counts(2, 1, 1, 0)  # type: ignore[union-attr]
    assert values(store, "old") == {"a": "2", "b": "2"}
    assert values(store, "new") is None


def test_v1_unit_waits_for_earlier_v2_units(store: Store):
    """A v1 row must see the profiles earlier v2 batches create, whichever worker is faster."""
    accept(store, b"batch=thirdPartyId,a\nx,1\n")
    _, v1 = accept(store, b"batch=thirdPartyId,a\nx,2\n", version=1)
    _, later = accept(store, b"batch=thirdPartyId,b\ny,1\n")
    first = store.claim_unit("w1", now_ms(), LEASE)
    assert first is not None and first.version == 2
    other = store.claim_unit("w2", now_ms(), LEASE)  # the v1 unit waits; the later v2 does not
    assert other is not None and other.version == 2 and other.batch_seq > first.batch_seq
    assert store.claim_unit("w3", now_ms(), LEASE) is None
    apply(store, first)
    waiting = store.claim_unit("w3", now_ms(), LEASE)
    assert waiting is not None and waiting.version == 1
    apply(store, waiting)
    apply(store, other)
    assert store.get_batch(1, v1).counts == Counts(1, 1, 0, 0)  # type: ignore[union-attr]
    assert values(store, "x") == {"a": "2"}


def test_v1_before_v2_finds_nothing_even_if_applied_later(store: Store):
    """A v1 row accepted before the v2 row that creates its profile is "not found"."""
    _, v1 = accept(store, b"batch=thirdPartyId,a\nx,1\n", version=1)
    accept(store, b"batch=thirdPartyId,b\nx,2\n")
    v1_claim = store.claim_unit("w1", now_ms(), LEASE)
    v2_claim = store.claim_unit("w2", now_ms(), LEASE)
    assert v1_claim is not None and v2_claim is not None
    apply(store, v2_claim)
    apply(store, v1_claim)
    assert store.get_batch(1, v1).counts == Counts(1, 0, 1, 0)  # type: ignore[union-attr]
    assert values(store, "x") == {"b": "2"}


def test_units_applied_in_reverse_equal_acceptance_order(store: Store):
    """Per attribute the later accepted row wins, whichever unit is applied first."""
    accept(store, b"batch=thirdPartyId,a,b\nx,1,1\nx,2,\n", unit_rows=1)
    accept(store, b"batch=thirdPartyId,b,c\nx,,3\nx,3,\n", unit_rows=1)
    claims = []
    while (claim := store.claim_unit(f"w{len(claims)}", now_ms(), LEASE)) is not None:
        claims.append(claim)
    assert len(claims) == 4
    for claim in reversed(claims):
        assert apply(store, claim) == Counts(1, 1, 0, 0)
    assert values(store, "x") == {"a": "2", "b": "3", "c": "3"}


def test_a_row_older_than_a_delete_is_skipped(store: Store, database_url: str):
    """Rows accepted before a profile's deletion count as applied but do not bring it back."""
    seq, batch_id = accept(store, b"batch=thirdPartyId,a\nx,1\ny,1\n")
    execute(
        database_url,
        "INSERT INTO tombstones (client_id, pkey, deleted_seq, deleted_at) VALUES (1, %s, %s, 0)",
        ("t:x", seq * SEQ_SPAN + SEQ_SPAN - 1),
    )
    accept(store, b"batch=thirdPartyId,b\nx,2\n")
    Worker(store, Settings()).run(until_idle=True)
    assert store.get_batch(1, batch_id).counts == Counts(2, 2, 0, 0)  # type: ignore[union-attr]
    assert values(store, "x") == {"b": "2"}
    assert values(store, "y") == {"a": "1"}


def test_a_row_that_would_pass_the_profile_size_limit_fails(store: Store):
    seq, batch_id = accept(store, b"batch=thirdPartyId,a,b\np,1\np,," + b"x" * 40 + b"\n")
    claim = store.claim_unit("w1", now_ms(), LEASE)
    assert claim is not None
    assert apply(store, claim, max_profile_bytes=60) == Counts(2, 1, 0, 1)
    (failure,) = store.failed_rows(seq)
    assert (failure.line, failure.id) == (3, "p")
    assert "over the limit of 60 bytes" in failure.reason
    assert values(store, "p") == {"a": "1"}


def test_the_size_limit_counts_the_stored_profile(store: Store):
    """The limit applies to the merged profile, including what earlier batches stored."""
    accept(store, b"batch=thirdPartyId,a\np," + b"x" * 30 + b"\n")
    accept(store, b"batch=thirdPartyId,a,b\np," + b"y" * 30 + b"\np,," + b"z" * 30 + b"\n")
    counts = []
    while (claim := store.claim_unit("w1", now_ms(), LEASE)) is not None:
        counts.append(apply(store, claim, max_profile_bytes=90))
    assert counts == [Counts(1, 1, 0, 0), Counts(2, 1, 0, 1)]
    assert values(store, "p") == {"a": "y" * 30}


def test_daily_quota_refuses_and_writes_nothing(store: Store):
    start = now_ms()
    accept(store, b"batch=thirdPartyId,a\nx,1\ny,1\n", rows_per_day=3, at=start)
    with pytest.raises(QuotaExceeded) as refused:
        accept(store, b"batch=thirdPartyId,a\nx,1\ny,1\n", rows_per_day=3, at=start + 1000)
    assert 0 < refused.value.retry_after <= 86_400
    assert store.rows_accepted_since(1, 0) == 2 and store.pending_units() == 1
    accept(store, b"batch=thirdPartyId,a\nz,1\n", rows_per_day=3, at=start + 2000)
    assert store.rows_accepted_since(1, start + 1) == 1


def test_purge_deletes_only_finished_old_batches(store: Store):
    start = now_ms()
    seq, old = accept(store, b"batch=thirdPartyId,a\nbad%2F,1\n", at=start - 10_000)
    _, unfinished = accept(store, b"batch=thirdPartyId,a\nx,1\n", at=start - 10_000)
    claim = store.claim_unit("w1", start, LEASE)
    assert claim is not None and claim.batch_seq == seq
    apply(store, claim)
    _, recent = accept(store, b"batch=thirdPartyId,a\n\n", at=start)
    assert store.purge(start - 5000) == 1
    assert store.get_batch(1, old) is None and store.failed_rows(seq) == []
    assert store.get_batch(1, unfinished) is not None and store.get_batch(1, recent) is not None


def test_failed_rows_page_in_line_order(store: Store):
    body = b"batch=thirdPartyId,a\n" + b"".join(b"bad%%2F%d,1\n" % i for i in range(7))
    seq, _ = accept(store, body, unit_rows=3)
    Worker(store, Settings()).run(until_idle=True)
    assert [f.line for f in store.failed_rows(seq, 0, 4)] == [2, 3, 4, 5]
    assert [f.line for f in store.failed_rows(seq, 5)] == [6, 7, 8]
    assert store.failed_rows(seq, 0, 1)[0].raw == "bad%2F0,1"


def test_pc_id_and_third_party_id_are_separate_profiles(store: Store):
    accept(store, b"batch=pcId,a\n123,p\n")
    accept(store, b"batch=thirdPartyId,a\n123,t\n")
    Worker(store, Settings()).run(until_idle=True)
    by_pc = store.get_profile(1, "p:123")
    assert by_pc is not None and by_pc.attributes["a"].value == "p" and by_pc.visitor_id == "123"
    assert values(store, "123") == {"a": "t"}
    assert store.get_profile(1, "p:999") is None
    assert store.get_profile(2, "p:123") is None
