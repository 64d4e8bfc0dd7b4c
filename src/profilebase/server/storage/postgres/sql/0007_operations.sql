-- Operations on a running server: who cancelled a batch, and when.
-- Mirrors sql/sqlite/0007_operations.sql.
ALTER TABLE batches ADD COLUMN cancelled_at bigint;
ALTER TABLE batches ADD COLUMN cancelled_by text;
