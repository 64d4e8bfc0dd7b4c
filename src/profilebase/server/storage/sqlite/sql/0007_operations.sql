-- Operations on a running server: who cancelled a batch, and when.
-- Cancelling marks every unit not yet applied done, its rows failed with the reason
-- "cancelled", in one transaction; these columns say who asked for it.
ALTER TABLE batches ADD COLUMN cancelled_at INTEGER;
ALTER TABLE batches ADD COLUMN cancelled_by TEXT;
