-- Idempotency keys (a profilebase extension): a batchUpdate sent again with the same
-- Idempotency-Key returns the batch first accepted under it and is not applied again.
-- A key outlives its batch's status if need be: it is purged only when older than
-- both the status retention and 24 hours. Mirrors sql/sqlite/0004_idempotency.sql.
CREATE TABLE idempotency_keys (
    client_id   bigint NOT NULL,
    key         text NOT NULL,
    batch_seq   bigint NOT NULL,
    batch_id    text NOT NULL,
    digest      text NOT NULL,                   -- SHA-256 of the body, hex
    accepted_at bigint NOT NULL,
    PRIMARY KEY (client_id, key)
);
CREATE INDEX idempotency_keys_accepted ON idempotency_keys (accepted_at);
