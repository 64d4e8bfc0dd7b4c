"""The operator's commands run directly on a database (``--database``), without a server.

``profilebase export``, ``import``, ``delete`` and ``batches`` talk to a server's
URL through the SDK, or, given ``--database``, do the same here on the store:
the same rules, the same results, shaped like the SDK's (``BatchStatus``) so the
CLI prints both alike. Useful when no server runs, or to script against a
database file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import IO

from profilebase.client.imports import ImportFailure, ImportResult, split
from profilebase.client.replies import BatchStatus
from profilebase.errors import NotFound
from profilebase.models import Batch, Client, KeyKind, from_ms
from profilebase.server import batches, clients, export, profile_import
from profilebase.server.batches import rows_per_second
from profilebase.server.settings import Settings, client_limits
from profilebase.server.storage import Store
from profilebase.server.storage.batch_control import Cancellation, Cancelled
from profilebase.server.worker import Worker

#: Profiles read per round trip while exporting, as the server does.
EXPORT_PAGE = 500


def export_profiles(
    store: Store,
    settings: Settings,
    code: str,
    out: IO[bytes],
    form: str,
    key_kind: KeyKind,
    now_ms: int,
) -> export.BatchPlan | None:
    """Write the client's profiles to ``out`` from one snapshot, as the export route does;
    for a batch file, return what the first pass found (the profiles it cannot key)."""
    client = clients.get(store, code)
    before = client_limits(settings, client.limits).expire_before_ms(now_ms)
    snapshot = store.open_export(client.id, None, before)
    try:
        plan = None
        if form == "batch":
            plan = export.plan_batch(snapshot.pages(EXPORT_PAGE), key_kind)
        for chunk in export.export_chunks(snapshot.pages(EXPORT_PAGE), form, key_kind, plan):
            out.write(chunk.encode())
        return plan
    finally:
        snapshot.close()


def delete_profile(store: Store, settings: Settings, code: str, key: str, now_ms: int) -> bool:
    """Delete the profile ``key`` ('p:' or 't:' prefixed) finds, with all its ids."""
    client = clients.get(store, code)
    before = client_limits(settings, client.limits).expire_before_ms(now_ms)
    return store.delete_profile(client.id, key, now_ms, before)


def status_of(
    store: Store,
    settings: Settings,
    client: Client,
    batch: Batch,
    cancellation: Cancellation | None,
    now_ms: int,
) -> BatchStatus:
    """A stored batch as the JSON status endpoint describes it, in the SDK's shape."""
    units = store.units_summary(batch.seq, now_ms)
    limits = client_limits(settings, client.limits)
    standing = batches.standing(batch, units, now_ms, settings.stuck_after_seconds, limits)
    counts = batch.counts
    return BatchStatus(
        batch_id=batch.batch_id,
        status=standing.state.target_status,
        batch_size=batch.batch_size,
        consumed=counts.consumed,
        successful=counts.successful,
        not_found=counts.not_found,
        failed=counts.failed,
        state=standing.state,
        reason=standing.reason,
        throttled_until=None if standing.until is None else from_ms(standing.until),
        accepted_at=batch.accepted_at,
        started_at=batch.started_at,
        finished_at=batch.finished_at,
        rows_per_second=rows_per_second(batch, now_ms),
        cancelled_at=None if cancellation is None else cancellation.at,
        cancelled_by=None if cancellation is None else cancellation.by,
    )


def list_batches(
    store: Store, settings: Settings, code: str, unfinished: bool, limit: int, now_ms: int
) -> list[BatchStatus]:
    """The client's batches, newest first."""
    client = clients.get(store, code)
    return [
        status_of(store, settings, client, item.batch, item.cancellation, now_ms)
        for item in store.batch_listings(client.id, limit, unfinished)
    ]


def batch_status(
    store: Store, settings: Settings, code: str, batch_id: str, now_ms: int
) -> BatchStatus:
    """One batch's status; ``NotFound`` if the client has no such batch."""
    client = clients.get(store, code)
    batch = find_batch(store, settings, client, batch_id)
    cancellation = store.batch_cancellation(batch.seq)
    return status_of(store, settings, client, batch, cancellation, now_ms)


def find_batch(store: Store, settings: Settings, client: Client, batch_id: str) -> Batch:
    batch = store.get_batch(client.id, batch_id)
    if batch is None:
        raise NotFound(
            f"No batch {batch_id!r} for client {client.code!r}: check the batch id "
            f"(`profilebase batches list --client {client.code}`), or the status has expired "
            f"(statuses are kept {settings.status_retention_days:g} days)."
        )
    return batch


def cancel_batch(
    store: Store,
    settings: Settings,
    code: str,
    batch_id: str,
    by: str,
    now_ms: int,
) -> tuple[Cancelled, BatchStatus]:
    """Cancel the batch (``Store.cancel_batch``) and return what it did and its status."""
    client = clients.get(store, code)
    find_batch(store, settings, client, batch_id)
    outcome = store.cancel_batch(client.id, batch_id, by, now_ms)
    if outcome is None:
        raise NotFound(f"No batch {batch_id!r} for client {client.code!r}.")
    batch = find_batch(store, settings, client, batch_id)
    status = status_of(store, settings, client, batch, outcome.cancellation, now_ms)
    return outcome, status


def import_file(
    store: Store,
    settings: Settings,
    code: str,
    path: str | os.PathLike[str],
    idempotency_key: str | None,
    wait: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import a JSON-lines file as the server's import endpoint does, part by part, then
    apply it here (as a worker: with a batch queued before it on this database, that
    one too, in order) unless ``wait`` is False."""
    import uuid

    client = clients.get(store, code)
    limits = client_limits(settings, client.limits)
    prefix = idempotency_key or uuid.uuid4().hex
    sent = []
    for part in split(path, limits.max_batch_bytes, limits.max_batch_rows):
        intake = profile_import.ImportIntake(limits, settings.unit_rows, digest=True)
        intake.feed(part.data)
        intake.finish()
        _, batch_id = profile_import.accept(
            store, client, intake, limits, now(), f"{prefix}-{part.number}"
        )
        sent.append((part, batch_id))
    rows = sum(part.rows for part, _ in sent)
    ids = tuple(batch_id for _, batch_id in sent)
    if not wait:
        return ImportResult(rows, ids, finished=False)
    worker = Worker(store, settings)
    while True:
        batches = [store.get_batch(client.id, batch_id) for _, batch_id in sent]
        if on_progress is not None:
            on_progress(sum(b.counts.consumed for b in batches if b is not None), rows)
        if all(b is None or b.finished_at is not None for b in batches):
            break
        if not worker.run_once():  # another process holds the rest: wait for it
            time.sleep(settings.poll_interval)
    failures = []
    applied = 0
    for (part, _), batch in zip(sent, batches, strict=True):
        if batch is None:
            continue
        applied += batch.counts.successful
        after = 0
        while True:
            page = store.failed_rows(batch.seq, after, 10_000)
            failures += [ImportFailure(part.file_line(f.line), f.id, f.reason) for f in page]
            if len(page) < 10_000:
                break
            after = page[-1].line
    return ImportResult(rows, ids, applied, tuple(sorted(failures, key=lambda f: f.line)))


def now() -> int:
    from profilebase.models import now_ms

    return now_ms()
