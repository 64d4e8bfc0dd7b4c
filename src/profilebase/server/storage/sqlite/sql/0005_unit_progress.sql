-- A unit may be applied in parts, each in its own transaction: a large unit slice by
-- slice, and a unit whose application failed narrowed down to the rows that cause it.
-- applied_through is the last line of the unit applied so far (NULL: none); the counts
-- of the parts applied add up in consumed, successful, not_found and failed.
ALTER TABLE batch_units ADD COLUMN applied_through INTEGER;

-- SQLite writes a whole row again, blob included, on every update of it: a unit's
-- body lives in a table of its own, so that claiming a unit, releasing it and
-- recording its progress never copy its (up to 50 MB of) lines. It is written and read
-- through incremental blob I/O and deleted when the unit is done; batch_units.body
-- stays NULL. (PostgreSQL keeps large values out of line and needs none of this.)
CREATE TABLE unit_bodies (
    batch_seq INTEGER NOT NULL,
    unit_no   INTEGER NOT NULL,
    body      BLOB NOT NULL,
    PRIMARY KEY (batch_seq, unit_no)
);
INSERT INTO unit_bodies (batch_seq, unit_no, body)
    SELECT batch_seq, unit_no, body FROM batch_units WHERE body IS NOT NULL;
UPDATE batch_units SET body = NULL WHERE body IS NOT NULL;
