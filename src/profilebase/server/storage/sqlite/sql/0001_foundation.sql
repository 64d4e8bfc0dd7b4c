-- Foundation: clients, the write sequence, batches and their work units, profiles.

CREATE TABLE clients (
    id           INTEGER PRIMARY KEY,
    code         TEXT NOT NULL UNIQUE,
    require_auth INTEGER NOT NULL DEFAULT 0,
    disabled     INTEGER NOT NULL DEFAULT 0,
    limits       TEXT NOT NULL DEFAULT '{}',   -- JSON object: limit name -> value
    created_at   INTEGER NOT NULL
);

-- Every write (a batch, later a single update or a delete) takes the next seq here;
-- a row's seq is write_seq * 100000000 + its line, so seqs order all writes.
CREATE TABLE writes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    ref       TEXT,
    at        INTEGER NOT NULL
);

CREATE TABLE batches (
    seq              INTEGER PRIMARY KEY,       -- = writes.seq
    batch_id         TEXT NOT NULL UNIQUE,
    client_id        INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    key_kind         TEXT NOT NULL,
    header           TEXT NOT NULL,             -- JSON array of attribute names
    batch_size       INTEGER NOT NULL,
    units_total      INTEGER NOT NULL,
    accepted_at      INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    last_progress_at INTEGER NOT NULL
);
CREATE INDEX batches_client_accepted ON batches (client_id, accepted_at);
CREATE INDEX batches_progress ON batches (last_progress_at);

CREATE TABLE batch_units (
    batch_seq     INTEGER NOT NULL,
    unit_no       INTEGER NOT NULL,
    first_line    INTEGER NOT NULL,
    row_count     INTEGER NOT NULL,
    body          BLOB,                          -- raw lines; cleared once applied
    state         TEXT NOT NULL DEFAULT 'pending',   -- pending | running | done
    lease_owner   TEXT,
    lease_expires INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    consumed      INTEGER NOT NULL DEFAULT 0,
    successful    INTEGER NOT NULL DEFAULT 0,
    not_found     INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    finished_at   INTEGER,
    PRIMARY KEY (batch_seq, unit_no)
);
CREATE INDEX batch_units_todo ON batch_units (batch_seq, unit_no) WHERE state <> 'done';

CREATE TABLE batch_failures (
    batch_seq INTEGER NOT NULL,
    line      INTEGER NOT NULL,
    id        TEXT NOT NULL,
    reason    TEXT NOT NULL,
    raw       TEXT NOT NULL,
    PRIMARY KEY (batch_seq, line)
) WITHOUT ROWID;

-- attrs: JSON object name -> [value, seq, modified_at_ms]; the entry with the higher
-- seq wins, so applying writes in any order gives the result of acceptance order.
CREATE TABLE profiles (
    client_id   INTEGER NOT NULL,
    pkey        TEXT NOT NULL,                   -- 'p:' + pcId or 't:' + thirdPartyId
    attrs       TEXT NOT NULL,
    created_seq INTEGER NOT NULL,
    max_seq     INTEGER NOT NULL,
    modified_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, pkey)
) WITHOUT ROWID;

-- A deleted profile: rows with a lower seq must not bring it back.
CREATE TABLE tombstones (
    client_id   INTEGER NOT NULL,
    pkey        TEXT NOT NULL,
    deleted_seq INTEGER NOT NULL,
    deleted_at  INTEGER NOT NULL,
    PRIMARY KEY (client_id, pkey)
) WITHOUT ROWID;
