-- A unit may be applied in parts, each in its own transaction: a large unit slice by
-- slice, and a unit whose application failed narrowed down to the rows that cause it.
-- applied_through is the last line of the unit applied so far (NULL: none); the counts
-- of the parts applied add up in consumed, successful, not_found and failed.
-- Mirrors sql/sqlite/0005_unit_progress.sql.
ALTER TABLE batch_units ADD COLUMN applied_through integer;
