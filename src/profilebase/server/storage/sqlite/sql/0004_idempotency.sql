-- Idempotency keys (a profilebase extension): a batchUpdate sent again with the same
-- Idempotency-Key returns the batch first accepted under it and is not applied again.
-- A key outlives its batch's status if need be: it is purged only when older than
-- both the status retention and 24 hours.
CREATE TABLE idempotency_keys (
    client_id   INTEGER NOT NULL,
    key         TEXT NOT NULL,
    batch_seq   INTEGER NOT NULL,
    batch_id    TEXT NOT NULL,
    digest      TEXT NOT NULL,                   -- SHA-256 of the body, hex
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_accepted ON idempotency_keys (accepted_at);
