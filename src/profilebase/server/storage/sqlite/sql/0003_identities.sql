-- Profiles from every side: visitor identity links, the single-update quota, provenance look-ups.

-- A tntId linked to a profile stored under another key. A profile that has a thirdPartyId is
-- stored under 't:' + thirdPartyId; each tntId seen with it on a page call is an alias here.
-- An alias never has a profiles row of its own.
CREATE TABLE identities (
    client_id  INTEGER NOT NULL,
    alias      TEXT NOT NULL,                  -- 'p:' + tntId
    pkey       TEXT NOT NULL,                  -- the profile's stored key, 't:' + thirdPartyId
    linked_seq INTEGER NOT NULL,               -- seq of the page call that made the link
    PRIMARY KEY (client_id, alias)
) WITHOUT ROWID;
CREATE INDEX identities_profile ON identities (client_id, pkey);

-- Single profile updates per client and minute, for the rolling 24-hour quota.
CREATE TABLE update_counts (
    client_id INTEGER NOT NULL,
    minute    INTEGER NOT NULL,                -- epoch milliseconds // 60000
    updates   INTEGER NOT NULL,
    PRIMARY KEY (client_id, minute)
) WITHOUT ROWID;

-- Purging old page-call and update writes looks them up by time.
CREATE INDEX writes_kind_at ON writes (kind, at);

-- Every delete of a key while batches are queued (a profile may be deleted, created again and
-- deleted again), each with the created_seq of what it removed, so that a queued v1 row knows
-- whether the profile existed at its seq.
CREATE TABLE tombstones_by_delete (
    client_id   INTEGER NOT NULL,
    pkey        TEXT NOT NULL,
    deleted_seq INTEGER NOT NULL,
    deleted_at  INTEGER NOT NULL,
    created_seq INTEGER,                       -- NULL: nothing existed when it was deleted
    PRIMARY KEY (client_id, pkey, deleted_seq)
) WITHOUT ROWID;
INSERT INTO tombstones_by_delete (client_id, pkey, deleted_seq, deleted_at)
    SELECT client_id, pkey, deleted_seq, deleted_at FROM tombstones;
DROP TABLE tombstones;
ALTER TABLE tombstones_by_delete RENAME TO tombstones;
