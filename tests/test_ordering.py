"""Per-profile order: any number of workers, units applied in any order, equal the one-by-one model."""

from __future__ import annotations

import random
import threading

import httpx
import pytest
from helpers import apply_claim, attributes, batch_id_of, status, submit

from profilebase import batchfile
from profilebase.models import now_ms
from profilebase.server.decoder import decode_unit
from profilebase.server.settings import Settings
from profilebase.server.storage import Store
from profilebase.server.worker import Worker

NAMES = ["a", "b", "c", "d"]


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Units of 7 lines, so one batch spans several units that may run out of order."""
    return Settings(database=database_url, workers=0, unit_rows=7)


def random_batches(
    rnd: random.Random, count: int, most_rows: int = 30, ids: int = 13
) -> list[tuple[bool, list[list[str]]]]:
    """Batches of (is_v2, rows) over a small id space, with duplicates and empty cells."""
    batches = []
    for _ in range(count):
        rows = []
        for _ in range(rnd.randint(0, most_rows)):
            row = [f"id{rnd.randint(0, ids - 1)}"]
            row += [
                rnd.choice(["", "", f"v{rnd.randint(0, 99)}", "x y,%+"])
                for _ in NAMES[: rnd.randint(0, len(NAMES))]
            ]
            rows.append(row)
        batches.append((rnd.random() < 0.7, rows))
    return batches


def model(
    batches: list[tuple[bool, list[list[str]]]],
) -> tuple[dict[str, dict[str, str]], list[tuple[int, int]]]:
    """Apply batches one by one in acceptance order; return profiles and (successful, not found)."""
    profiles: dict[str, dict[str, str]] = {}
    counts = []
    for v2, rows in batches:
        ok = missing = 0
        for row in rows:
            if row[0] not in profiles and not v2:
                missing += 1
                continue
            profiles.setdefault(row[0], {}).update(
                {n: v for n, v in zip(NAMES, row[1:], strict=False) if v}
            )
            ok += 1
        counts.append((ok, missing))
    return profiles, counts


def submit_all(http: httpx.Client, batches) -> list[str]:
    ids = []
    for v2, rows in batches:
        response = submit(http, batchfile.encode("thirdPartyId", NAMES, rows), v2=v2)
        assert response.status_code == 200, response.text
        ids.append(batch_id_of(response))
    return ids


def check_counts(http: httpx.Client, batches, ids) -> None:
    """Every batch is complete with the counts of the one-by-one model."""
    _, counts = model(batches)
    for batch_id, (_, rows), (ok, missing) in zip(ids, batches, counts, strict=False):
        fields = status(http, batch_id)
        assert fields["status"] == "complete"
        assert (int(fields["batchSize"]), int(fields["consumedCount"])) == (len(rows), len(rows))
        assert (int(fields["successfulUpdates"]), int(fields["profilesNotFound"])) == (ok, missing)


def check(http: httpx.Client, batches, ids) -> None:
    check_counts(http, batches, ids)
    expected, _ = model(batches)
    for identifier in {row[0] for _, rows in batches for row in rows}:
        assert attributes(http, identifier) == expected.get(identifier), identifier


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_units_applied_in_shuffled_order_equal_the_model(
    http: httpx.Client, store: Store, settings: Settings, seed: int
):
    """Claim every claimable unit, apply them in a random order, repeat: the result is unchanged."""
    rnd = random.Random(seed)
    batches = random_batches(rnd, 15)
    ids = submit_all(http, batches)
    rounds = apply_in_shuffled_order(store, settings, rnd)
    assert rounds > 1  # v1 batches waited for earlier ones: units really ran out of order
    check(http, batches, ids)


def apply_in_shuffled_order(store: Store, settings: Settings, rnd: random.Random) -> int:
    """Claim every claimable unit, apply them in a random order, repeat; return the rounds."""
    rounds = 0
    while store.pending_units():
        rounds += 1
        claims = []
        while (claim := store.claim_unit(f"w{len(claims)}", now_ms(), 600_000)) is not None:
            claims.append(claim)
        rnd.shuffle(claims)
        for claim in claims:
            assert apply_claim(store, claim, settings.max_profile_bytes) is not None
    return rounds


def test_several_worker_threads_equal_the_model(
    http: httpx.Client, store: Store, settings: Settings
):
    """Four workers draining concurrently give exactly the one-by-one result."""
    batches = random_batches(random.Random(7), 25)
    ids = submit_all(http, batches)
    workers = [Worker(store, settings, name=f"w{i}") for i in range(4)]
    threads = [threading.Thread(target=w.run, kwargs={"until_idle": True}) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert store.pending_units() == 0
    check(http, batches, ids)


def test_lost_lease_changes_nothing(http: httpx.Client, store: Store, settings: Settings):
    """A worker whose lease expired and was taken over cannot apply the unit a second time."""
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nx,1\n"))
    first = store.claim_unit("slow", now_ms() - 10_000, 1)  # lease already expired
    assert first is not None
    second = store.claim_unit("fast", now_ms(), 60_000)
    assert second is not None and second.unit_no == first.unit_no
    header = batchfile.Header(first.key_kind, first.names)
    rows, failures = decode_unit(second.body, second.first_line, header, second.batch_seq, now_ms())
    assert (
        store.apply_unit(second, rows, failures, now_ms(), settings.max_profile_bytes) is not None
    )
    assert store.apply_unit(first, rows, failures, now_ms(), settings.max_profile_bytes) is None
    assert status(http, batch_id)["consumedCount"] == "1"


def test_failing_unit_is_retried_not_dropped(
    http: httpx.Client, store: Store, settings: Settings, drain
):
    """A unit whose application raises goes back to the queue and completes later."""
    batch_id = batch_id_of(submit(http, b"batch=thirdPartyId,a\nr1,1\n"))
    claim = store.claim_unit("w", now_ms(), 60_000)
    assert claim is not None
    store.release_unit(claim, "RuntimeError('boom')", now_ms())
    assert status(http, batch_id)["status"] == "incomplete"
    drain()
    assert status(http, batch_id)["status"] == "complete"
    assert attributes(http, "r1") == {"a": "1"}


# -- single updates, page calls and deletes in the same order ----------------------------------

PC_IDS = [f"p{n}" for n in range(8)]


def random_operations(rnd: random.Random, count: int) -> list[tuple]:
    """Batches keyed by pcId mixed with single updates, page calls (tntId only) and deletes."""
    operations: list[tuple] = []
    for _ in range(count):
        roll = rnd.random()
        identifier = rnd.choice(PC_IDS)
        values = {
            name: f"{name}{rnd.randint(0, 99)}" for name in rnd.sample(NAMES, rnd.randint(1, 3))
        }
        if roll < 0.45:
            rows = []
            for _ in range(rnd.randint(1, 12)):
                rows.append(
                    [rnd.choice(PC_IDS)]
                    + [rnd.choice(["", f"b{rnd.randint(0, 99)}"]) for _ in NAMES]
                )
            operations.append(("batch", rnd.random() < 0.7, rows))
        elif roll < 0.65:
            operations.append(("update", identifier, values))
        elif roll < 0.85:
            operations.append(("visit", identifier, values))
        else:
            operations.append(("delete", identifier))
    return operations


def test_updates_page_calls_and_deletes_take_their_place_in_the_order(
    http: httpx.Client, store: Store, settings: Settings
):
    """Immediate writes interleaved with queued batches, units then applied in shuffled order,
    equal applying everything one by one in acceptance order.

    A single update or a delete finds its profile only if it exists when the call is made:
    a batch still queued has not created it yet (the model tracks that as `live`).
    """
    rnd = random.Random(11)
    for attempt in range(4):
        model: dict[str, dict[str, str]] = {}
        live: set[str] = set()
        batches: list[tuple[str, list[list[str]], tuple[int, int]]] = []
        client = store.ensure_client(f"mixed{attempt}")
        for operation in random_operations(rnd, 40):
            kind = operation[0]
            if kind == "batch":
                _, v2, rows = operation
                ok = missing = 0
                for row in rows:
                    if row[0] not in model and not v2:
                        missing += 1
                        continue
                    model.setdefault(row[0], {}).update(
                        {n: v for n, v in zip(NAMES, row[1:], strict=False) if v}
                    )
                    ok += 1
                response = submit(
                    http, batchfile.encode("pcId", NAMES, rows), client=client.code, v2=v2
                )
                batches.append((batch_id_of(response), rows, (ok, missing)))
            elif kind == "update":
                _, identifier, values = operation
                query = {"mboxPC": identifier} | {f"profile.{n}": v for n, v in values.items()}
                response = http.get(f"/m2/{client.code}/profile/update", params=query)
                assert response.status_code == (200 if identifier in live else 404)
                if identifier in live:
                    model[identifier].update(values)
            elif kind == "visit":
                _, identifier, values = operation
                payload = {
                    "id": {"tntId": identifier},
                    "execute": {"pageLoad": {"profileParameters": values}},
                }
                response = http.post(
                    "/rest/v1/delivery",
                    params={"client": client.code, "sessionId": "s"},
                    json=payload,
                )
                assert response.status_code == 200
                model.setdefault(identifier, {}).update(values)
                live.add(identifier)
            else:
                _, identifier = operation
                response = http.delete(
                    f"/rest/v1/profiles/{identifier}", params={"client": client.code}
                )
                assert response.status_code == (204 if identifier in live else 404)
                model.pop(identifier, None)
                live.discard(identifier)
        apply_in_shuffled_order(store, settings, rnd)
        for batch_id, rows, (ok, missing) in batches:
            fields = status(http, batch_id, client=client.code)
            assert (fields["status"], int(fields["consumedCount"])) == ("complete", len(rows))
            assert (int(fields["successfulUpdates"]), int(fields["profilesNotFound"])) == (
                ok,
                missing,
            ), batch_id
        for identifier in PC_IDS:
            found = attributes(http, identifier, third_party=False, client=client.code)
            assert found == model.get(identifier), (attempt, identifier)
