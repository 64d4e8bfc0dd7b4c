"""PostgreSQL only: what several processes applying units at once can run into."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from conftest import PostgresServer
from test_store_contract import accept, apply, values

from profilebase.models import SEQ_SPAN, Counts, now_ms
from profilebase.server.settings import Settings
from profilebase.server.storage import Store, open_store
from profilebase.server.storage.postgres import PostgresStore
from profilebase.server.storage.postgres import store as postgres_store
from profilebase.server.web.app import prepare
from profilebase.server.worker import Worker

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    name = postgres.clone()
    yield postgres.with_database(name)
    postgres.drop(name)


@pytest.fixture
def pg_store(database: str) -> Iterator[Store]:
    store = open_store(database)
    prepare(store, Settings(database=database))
    yield store
    store.close()


def wait_for_lock_wait(database: str) -> None:
    """Return once some session of this database waits on a lock (bounded in time)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(database, autocommit=True) as db:
        while time.monotonic() < deadline:
            if db.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone():
                return
            time.sleep(0.01)
    raise AssertionError("no session waited on a lock")


def test_a_profile_created_meanwhile_sends_the_unit_round_again(
    pg_store: Store, database: str, caplog: pytest.LogCaptureFixture
):
    """A unit that took a profile for new while another transaction created it merges into it."""
    caplog.set_level(logging.INFO, logger="profilebase.server.storage")
    seq, batch_id = accept(pg_store, b"batch=thirdPartyId,a\nx,1\n")
    claim = pg_store.claim_unit("w1", 0, 10**15)
    assert claim is not None
    later = seq * SEQ_SPAN + SEQ_SPAN + 5  # a write accepted after the batch
    other = psycopg.connect(database)
    other.execute(
        "INSERT INTO profiles VALUES (1, 't:x', %s, %s, %s, 0)",
        (f'{{"b": ["2", {later}, 0]}}', later, later),
    )
    result: list[Counts | None] = []
    applying = threading.Thread(target=lambda: result.append(apply(pg_store, claim)))
    applying.start()
    try:
        wait_for_lock_wait(database)  # the unit's insert waits for the other transaction
    finally:
        other.commit()
        other.close()
        applying.join(30)
    assert result == [Counts(1, 1, 0, 0)]
    assert values(pg_store, "x") == {"a": "1", "b": "2"}
    assert pg_store.get_batch(1, batch_id).state.value == "complete"  # type: ignore[union-attr]
    assert "lost a race" in caplog.text


def apply_paused(
    pg_store: Store, claim, monkeypatch: pytest.MonkeyPatch, before_copy: bool
) -> tuple[threading.Thread, list[Counts | None], threading.Event, threading.Event]:
    """Apply ``claim`` in a thread that stops once (``reached``) just before the unit
    copies its new profiles in, or just after, until ``go`` is set."""
    reached, go = threading.Event(), threading.Event()
    flush = postgres_store._Writer.flush

    def paused(writer: postgres_store._Writer) -> None:
        first = not reached.is_set()
        if first and before_copy:
            reached.set()
            go.wait(30)
        flush(writer)
        if first and not before_copy:
            reached.set()
            go.wait(30)

    monkeypatch.setattr(postgres_store._Writer, "flush", paused)
    result: list[Counts | None] = []
    applying = threading.Thread(target=lambda: result.append(apply(pg_store, claim)))
    applying.start()
    assert reached.wait(30)
    return applying, result, reached, go


def test_a_delete_committed_before_a_units_copy_is_not_undone_by_it(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
):
    """A batch that creates x is accepted, then x is deleted while the batch's unit runs:
    the delete finds no profile (a tombstone) and commits after the unit read the
    tombstones but before it copies x in. The unit sees the tombstone once it has copied,
    runs again and skips the row, older than the delete: x stays deleted."""
    accept(pg_store, b"batch=thirdPartyId,a\nx,1\n")
    claim = pg_store.claim_unit("w1", 0, 10**15)
    assert claim is not None
    applying, result, _, go = apply_paused(pg_store, claim, monkeypatch, before_copy=True)
    try:
        assert pg_store.delete_profile(1, "t:x", now_ms()) is False  # nothing to delete yet
    finally:
        go.set()
        applying.join(30)
    assert result and result[0] is not None
    assert values(pg_store, "x") is None


def test_a_delete_waits_for_a_unit_copying_its_profile_in(
    pg_store: Store, database: str, monkeypatch: pytest.MonkeyPatch
):
    """x is deleted while the unit creating it has copied it in and not committed: the
    delete waits for the unit, then deletes the profile it made."""
    accept(pg_store, b"batch=thirdPartyId,a\nx,1\n")
    claim = pg_store.claim_unit("w1", 0, 10**15)
    assert claim is not None
    applying, result, _, go = apply_paused(pg_store, claim, monkeypatch, before_copy=False)
    deleted: list[bool] = []
    deleting = threading.Thread(
        target=lambda: deleted.append(pg_store.delete_profile(1, "t:x", now_ms()))
    )
    try:
        deleting.start()
        wait_for_lock_wait(database)  # the delete waits for the unit's insert of x
    finally:
        go.set()
        applying.join(30)
        deleting.join(30)
    assert result and result[0] is not None
    assert deleted == [True]
    assert values(pg_store, "x") is None


def test_a_row_holding_nul_fails_with_its_reason(pg_store: Store):
    """PostgreSQL cannot store U+0000: such a row fails with the reason; the others apply."""
    seq, batch_id = accept(pg_store, b"batch=thirdPartyId,a\nx,1\ny,%00\n")
    Worker(pg_store, Settings()).run(until_idle=True)
    assert pg_store.get_batch(1, batch_id).counts == Counts(2, 1, 0, 1)  # type: ignore[union-attr]
    (failure,) = pg_store.failed_rows(seq)
    assert failure.id == "y" and "U+0000" in failure.reason
    assert values(pg_store, "x") == {"a": "1"} and values(pg_store, "y") is None
    assert pg_store.get_profile(1, "t:\x00") is None


def test_new_profiles_are_found_in_the_keys_order_whatever_the_database_collation(
    postgres: PostgresServer,
):
    """On a database whose default collation is ICU's en-US ('a' sorts before 'B'), a unit
    whose keys are 'B' and 'a' (code point order, as Python and the `pkey` column's "C"
    collation sort them) still finds the stored profile 'a' in its key range: it is merged,
    not copied in again (which would fail the unit over and over)."""
    name = f"{postgres.prefix}_icu_{time.monotonic_ns()}"
    postgres.admin(
        f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
        "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    )
    url = postgres.with_database(name)
    store = open_store(url)
    try:
        prepare(store, Settings(database=url))
        with psycopg.connect(url) as db:
            assert db.execute("SELECT 'a' < 'B'").fetchone() == (True,)  # en-US, not "C"
        for body in (b"batch=thirdPartyId,x\na,1\n", b"batch=thirdPartyId,y\nB,2\na,3\n"):
            accept(store, body, unit_rows=10)
            claim = store.claim_unit("w1", 0, 10**15)
            assert claim is not None
            assert apply(store, claim) is not None
        assert values(store, "a") == {"x": "1", "y": "3"}
        assert values(store, "B") == {"y": "2"}
    finally:
        store.close()
        postgres.admin(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_sessions_run_without_jit_and_keep_the_options_of_the_url(database: str):
    """The store's connections turn JIT off (compiling a statement cost 250 ms among 5
    million profiles not yet analyzed) and keep the options the URL gives."""
    url = database + ("&" if "?" in database else "?") + "options=-c%20statement_timeout%3D12345"
    store = open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        with store.pool.connection() as db:
            assert db.execute("SHOW jit").fetchone() == ("off",)
            assert db.execute("SHOW statement_timeout").fetchone() == ("12345ms",)
    finally:
        store.close()


def test_new_profiles_copied_in_keep_ids_and_values_that_copy_s_text_format_escapes(
    pg_store: Store,
):
    """New profiles go in with COPY's text format, where a backslash, ``\\N`` (its NULL),
    ``\\.`` (its old end of data), a tab, CR and LF mean something: ids (which hold no
    control character) and values holding them are stored as sent."""
    odd = {"back\\slash": "a\\b", "\\N": "\\N", "\\.": "\\.", "tab": "a\tb", "lines": "cr\rlf\n"}
    lines = "".join(
        f"{quote(key, safe='')},{quote(value, safe='')}\n" for key, value in odd.items()
    )
    # One unit: its first holds up to half of unit_rows, 50 lines.
    accept(pg_store, f"batch=thirdPartyId,v\n{lines}".encode(), unit_rows=100)
    claim = pg_store.claim_unit("w1", 0, 10**15)
    assert claim is not None
    counts = apply(pg_store, claim)
    assert counts is not None and counts.successful == len(odd), counts
    for key, value in odd.items():
        assert values(pg_store, key) == {"v": value}
