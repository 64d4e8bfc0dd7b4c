-- Profiles from every side: visitor identity links, the single-update quota, provenance
-- look-ups. Mirrors sql/sqlite/0003_identities.sql.

-- A tntId linked to a profile stored under another key ('p:' + tntId -> 't:' + thirdPartyId).
CREATE TABLE identities (
    client_id  bigint NOT NULL,
    alias      text COLLATE "C" NOT NULL,
    pkey       text COLLATE "C" NOT NULL,
    linked_seq bigint NOT NULL,
    PRIMARY KEY (client_id, alias)
);
CREATE INDEX identities_profile ON identities (client_id, pkey);

-- Single profile updates per client and minute, for the rolling 24-hour quota.
CREATE TABLE update_counts (
    client_id bigint NOT NULL,
    minute    bigint NOT NULL,                 -- epoch milliseconds / 60000
    updates   integer NOT NULL,
    PRIMARY KEY (client_id, minute)
);

CREATE INDEX writes_kind_at ON writes (kind, at);

-- Every delete of a key while batches are queued, with the created_seq of what it removed.
ALTER TABLE tombstones ADD COLUMN created_seq bigint;
ALTER TABLE tombstones DROP CONSTRAINT tombstones_pkey;
ALTER TABLE tombstones ADD PRIMARY KEY (client_id, pkey, deleted_seq);
