"""Idempotency keys of batch submissions: the rule every backend shares.

A client that sends ``Idempotency-Key`` with a batch may send the same request
again (after a dropped connection, say) without the batch being applied twice:
the store finds the key and answers with the batch first accepted under it.
The key is bound to the body's SHA-256, so a key reused for another body is a
client mistake reported as such, not a silent "already done".
"""

from __future__ import annotations

from profilebase.errors import IdempotencyConflict
from profilebase.server.storage.base import NewBatch

#: Keys are kept at least this long (and longer if batch statuses are).
KEY_TTL_MS = 86_400_000


def replay(earlier: tuple[int, str, str], batch: NewBatch) -> tuple[int, str]:
    """Return (seq, batch id) of the batch first accepted under the key, if the body is the same.

    ``earlier`` is the stored (batch seq, batch id, digest) of the key.
    """
    seq, batch_id, digest = earlier
    if digest != batch.digest:
        raise IdempotencyConflict(
            f"The Idempotency-Key {batch.idempotency_key!r} was already used for batch "
            f"{batch_id}, whose body differs from this one: use a new key for a new body."
        )
    return int(seq), str(batch_id)
