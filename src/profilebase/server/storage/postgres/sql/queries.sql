-- The named queries of the PostgreSQL backend (storage/statements.py loads them).
--
-- Each block starts with "-- name: <name>", then comment lines saying what it does,
-- then one statement. Parameters are "%s" in order ("%b" for a list bound in binary),
-- or "%(name)s" where the code binds a mapping; a literal percent sign is "%%".
-- sqlite/sql/queries.sql defines the same names; a name starting with "postgres_" belongs
-- to this backend's own mechanics and has no twin there.

-- schema ------------------------------------------------------------------------------

-- name: migrations_table_exists
-- One row, true when the schema_migrations table exists.
SELECT to_regclass('schema_migrations') IS NOT NULL

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,
    name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())

-- name: lock_migrations
-- One process at a time migrates the schema: an advisory lock held until commit
-- (its key spells "pbmg").
SELECT pg_advisory_xact_lock(1885498727)

-- name: applied_migrations
SELECT version FROM schema_migrations

-- name: migration_applied
SELECT 1 FROM schema_migrations WHERE version = %s

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES (%s, %s)

-- name: table_names
-- Every table of the current schema, bookkeeping included.
SELECT table_name FROM information_schema.tables
WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name

-- locks -------------------------------------------------------------------------------

-- name: lock_client
-- Orders a write among its client's writes: its seq becomes visible in order.
SELECT 1 FROM clients WHERE id = %s FOR UPDATE

-- name: lock_batch
-- Of two last units finishing at once, the second sees the first one done.
SELECT 1 FROM batches WHERE seq = %s FOR UPDATE

-- name: lock_profiles
-- Locks the profiles of a list of keys that exist, in key order.
SELECT pkey FROM profiles WHERE client_id = %s AND pkey = ANY(%b) ORDER BY pkey FOR UPDATE

-- clients and tokens ------------------------------------------------------------------

-- name: client_by_code
SELECT id, code, require_auth, disabled, limits, api_key, secret_hash, org_id
FROM clients WHERE code = %s

-- name: client_by_org
SELECT id, code, require_auth, disabled, limits, api_key, secret_hash, org_id
FROM clients WHERE org_id = %s

-- name: list_clients
SELECT id, code, require_auth, disabled, limits, api_key, secret_hash, org_id
FROM clients ORDER BY code

-- name: insert_client
INSERT INTO clients (code, require_auth, api_key, secret_hash, created_at)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT (code) DO NOTHING

-- name: ensure_client
INSERT INTO clients (code, created_at) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING

-- name: client_exists
SELECT 1 FROM clients WHERE code = %s

-- name: organization_owner
-- The other client that has an organization id, if any.
SELECT code FROM clients WHERE org_id = %s AND code <> %s

-- name: update_client
-- Changes the fields given (NULL: unchanged); org_id changes only with set_org.
UPDATE clients SET
    require_auth = coalesce(%(require_auth)s::integer, require_auth),
    disabled = coalesce(%(disabled)s::integer, disabled),
    limits = coalesce(%(limits)s::jsonb, limits),
    api_key = coalesce(%(api_key)s::text, api_key),
    secret_hash = coalesce(%(secret_hash)s::text, secret_hash),
    org_id = CASE WHEN %(set_org)s THEN %(org_id)s::text ELSE org_id END
WHERE code = %(code)s

-- name: revoke_other_tokens
-- A rotation: the client's tokens of a scope still valid then are revoked at that time.
UPDATE tokens SET revoked_at = %s WHERE client_id = %s AND scope = %s
AND expires_at > %s AND (revoked_at IS NULL OR revoked_at > %s)

-- name: insert_token
INSERT INTO tokens (client_id, token_hash, last4, scope, created_at, expires_at, revoked_at, nonce)
VALUES (%s, %s, %s, %s, %s, %s, NULL, %s)

-- name: token_by_hash
SELECT client_id, token_hash, last4, scope, created_at, expires_at, revoked_at, nonce
FROM tokens WHERE token_hash = %s

-- name: active_token
SELECT client_id, token_hash, last4, scope, created_at, expires_at, revoked_at, nonce
FROM tokens WHERE client_id = %s AND scope = %s
AND expires_at > %s AND (revoked_at IS NULL OR revoked_at > %s)
ORDER BY created_at DESC LIMIT 1

-- name: revoke_client_tokens
UPDATE tokens SET revoked_at = %s WHERE client_id = %s AND expires_at > %s
AND (revoked_at IS NULL OR revoked_at > %s)

-- name: revoke_all_tokens
UPDATE tokens SET revoked_at = %s WHERE expires_at > %s AND (revoked_at IS NULL OR revoked_at > %s)

-- name: server_secret
SELECT fingerprint FROM server_secret

-- name: forget_server_secret
DELETE FROM server_secret

-- name: record_server_secret
INSERT INTO server_secret (id, fingerprint, created_at) VALUES (1, %s, %s)
ON CONFLICT (id) DO NOTHING

-- accepting batches -------------------------------------------------------------------

-- name: idempotency_key
SELECT batch_seq, batch_id, digest FROM idempotency_keys WHERE client_id = %s AND key = %s

-- name: recent_batches
SELECT accepted_at, batch_size FROM batches
WHERE client_id = %s AND accepted_at > %s ORDER BY accepted_at

-- name: rows_accepted_since
SELECT coalesce(sum(batch_size), 0) FROM batches WHERE client_id = %s AND accepted_at >= %s

-- name: new_batch_write
INSERT INTO writes (client_id, kind, at) VALUES (%s, 'batch', %s) RETURNING seq

-- name: set_write_ref
UPDATE writes SET ref = %s WHERE seq = %s

-- name: insert_batch
INSERT INTO batches (seq, batch_id, client_id, version, key_kind, header, batch_size,
    units_total, accepted_at, started_at, finished_at, last_progress_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)

-- name: insert_idempotency_key
INSERT INTO idempotency_keys (client_id, key, batch_seq, batch_id, digest, accepted_at)
VALUES (%s, %s, %s, %s, %s, %s)

-- claiming and applying units ---------------------------------------------------------

-- name: claim_unit
-- Lease the oldest claimable unit: pending, or running with an expired lease; SKIP
-- LOCKED lets any number of workers claim at once. A v1 row is "not found" unless its
-- profile was created by an earlier write, so a v1 unit waits until every earlier
-- batch of its client is done; v2 units never wait. A paced client's units (its id
-- in the list) wait for its not_before. Returns what a claim needs, with the length
-- of the unit's lines (read apart, a piece at a time).
WITH candidate AS (
    SELECT u.batch_seq, u.unit_no
    FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
    WHERE u.state <> 'done'
      AND ((u.state = 'pending' AND u.not_before <= %(now)s)
           OR (u.state = 'running' AND u.lease_expires < %(now)s))
      AND (b.version >= 2 OR NOT EXISTS (
          SELECT 1 FROM batch_units e JOIN batches eb ON eb.seq = e.batch_seq
          WHERE eb.client_id = b.client_id AND e.batch_seq < u.batch_seq
            AND e.state <> 'done'))
      AND NOT EXISTS (SELECT 1 FROM ingest_pacing p WHERE p.client_id = b.client_id
                      AND p.not_before > %(now)s AND p.client_id = ANY(%(paced)s))
    ORDER BY u.batch_seq, u.unit_no
    LIMIT 1
    FOR UPDATE OF u SKIP LOCKED
)
UPDATE batch_units u
SET state = 'running', lease_owner = %(owner)s, lease_expires = %(expires)s,
    attempts = u.attempts + 1
FROM candidate n, batches b JOIN clients c ON c.id = b.client_id
WHERE u.batch_seq = n.batch_seq AND u.unit_no = n.unit_no AND b.seq = u.batch_seq
RETURNING u.batch_seq, u.unit_no, u.first_line, u.row_count, octet_length(u.body), u.attempts,
          b.client_id, b.version, b.key_kind, b.header, c.limits

-- name: mark_batch_started
UPDATE batches SET started_at = %s WHERE seq = %s AND started_at IS NULL

-- name: pace_client
-- not_before = max(not_before, now) + pause
INSERT INTO ingest_pacing (client_id, not_before) VALUES (%s, %s)
ON CONFLICT (client_id) DO UPDATE SET not_before = CASE
    WHEN ingest_pacing.not_before + %s > excluded.not_before
    THEN ingest_pacing.not_before + %s ELSE excluded.not_before END

-- name: unit_progress
-- The unit's progress, if this worker still holds its lease; locks the unit's row
-- first (a worker taken over can never commit beside the new owner).
SELECT applied_through FROM batch_units
WHERE batch_seq = %s AND unit_no = %s AND state = 'running' AND lease_owner = %s FOR UPDATE

-- name: client_has_identities
SELECT 1 FROM identities WHERE client_id = %s LIMIT 1

-- name: client_has_tombstones
SELECT 1 FROM tombstones WHERE client_id = %s LIMIT 1

-- name: aliases_of_keys
-- Alias -> stored key, for those of a list of keys that are aliases.
SELECT alias, pkey FROM identities WHERE client_id = %s AND alias = ANY(%b)

-- name: profile_states
-- Step 1 of applying a unit: lock its existing profiles in key order and read what
-- apply_rows needs of them.
SELECT pkey, created_seq, max_seq, octet_length(attrs::text)
FROM profiles WHERE client_id = %s AND pkey = ANY(%b)
ORDER BY pkey FOR UPDATE

-- name: profiles_between
-- Whether the client has any profile with a key in a range (profile_states is skipped if not),
-- compared in the column's collation, "C": the order of code points.
SELECT 1 FROM profiles WHERE client_id = %s AND pkey BETWEEN %s AND %s LIMIT 1

-- name: tombstones_of_keys
SELECT pkey, deleted_seq, created_seq FROM tombstones
WHERE client_id = %s AND pkey = ANY(%b) ORDER BY pkey, deleted_seq

-- name: set_tombstone_created
UPDATE tombstones SET created_seq = %s WHERE client_id = %s AND pkey = %s AND deleted_seq = %s

-- name: profile_attrs
SELECT attrs::text FROM profiles WHERE client_id = %s AND pkey = %s

-- name: record_failure
INSERT INTO batch_failures (batch_seq, line, id, reason, raw) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (batch_seq, line) DO UPDATE
SET id = excluded.id, reason = excluded.reason, raw = excluded.raw

-- name: finish_unit
-- Adds a last part's counts and marks the unit done, its lines dropped.
UPDATE batch_units SET consumed = consumed + %s, successful = successful + %s,
    not_found = not_found + %s, failed = failed + %s, last_error = NULL,
    state = 'done', body = NULL, finished_at = %s
WHERE batch_seq = %s AND unit_no = %s

-- name: record_unit_progress
-- Adds a part's counts; progress never moves back (an empty part may name an earlier line).
UPDATE batch_units SET consumed = consumed + %s, successful = successful + %s,
    not_found = not_found + %s, failed = failed + %s, last_error = NULL,
    applied_through = CASE WHEN applied_through > %s THEN applied_through ELSE %s END
WHERE batch_seq = %s AND unit_no = %s

-- name: mark_batch_progress
UPDATE batches SET last_progress_at = %s WHERE seq = %s

-- name: finish_batch_if_done
UPDATE batches SET last_progress_at = %s, finished_at = CASE WHEN EXISTS (
    SELECT 1 FROM batch_units WHERE batch_seq = %s AND state <> 'done')
    THEN finished_at ELSE %s END
WHERE seq = %s

-- name: release_unit
UPDATE batch_units SET state = 'pending', lease_owner = NULL, lease_expires = NULL,
    not_before = %s, last_error = %s
WHERE batch_seq = %s AND unit_no = %s AND lease_owner = %s AND state = 'running'

-- applying import units (storage/imports.py) ------------------------------------------

-- name: import_profiles
-- What importing needs of the stored profiles of a list of keys (attributes as text,
-- seqs, size in bytes), locked in key order as apply_unit locks them.
SELECT pkey, attrs::text, created_seq, max_seq, octet_length(attrs::text)
FROM profiles WHERE client_id = %s AND pkey = ANY(%b)
ORDER BY pkey FOR UPDATE

-- name: postgres_upsert_imported
-- Every profile of an import unit, in key order, from one JSON array of
-- [pkey, attrs, min seq, max seq, modified ms]: merged per attribute (plain || when the
-- whole change is newer than the profile, pb_merge otherwise); the later modified time stays.
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
SELECT %s, c.value ->> 0, c.value -> 1, (c.value ->> 2)::bigint, (c.value ->> 3)::bigint,
       (c.value ->> 4)::bigint
FROM jsonb_array_elements(%s::jsonb) AS c
ORDER BY (c.value ->> 0) COLLATE "C"
ON CONFLICT (client_id, pkey) DO UPDATE SET
    attrs = CASE WHEN profiles.max_seq < excluded.created_seq
                 THEN profiles.attrs || excluded.attrs
                 ELSE pb_merge(profiles.attrs, excluded.attrs) END,
    created_seq = least(profiles.created_seq, excluded.created_seq),
    max_seq = greatest(profiles.max_seq, excluded.max_seq),
    modified_at = greatest(profiles.modified_at, excluded.modified_at)

-- name: postgres_link_imported
-- Every link of an import unit, in alias order, from one JSON array of
-- [alias, pkey, seq]; a tntId linked later elsewhere keeps its link.
INSERT INTO identities (client_id, alias, pkey, linked_seq)
SELECT %s, c.value ->> 0, c.value ->> 1, (c.value ->> 2)::bigint
FROM jsonb_array_elements(%s::jsonb) AS c
ORDER BY (c.value ->> 0) COLLATE "C"
ON CONFLICT (client_id, alias) DO UPDATE SET
    pkey = excluded.pkey, linked_seq = excluded.linked_seq
WHERE identities.linked_seq < excluded.linked_seq

-- batch status ------------------------------------------------------------------------

-- name: batch_status
-- The columns records.batch_from_row reads.
SELECT b.seq, b.batch_id, b.client_id, c.code, b.version, b.key_kind,
       b.batch_size, b.units_total, b.accepted_at, b.started_at, b.finished_at,
       (SELECT e.last_progress_at FROM batches e WHERE e.seq <= b.seq
        ORDER BY e.last_progress_at DESC LIMIT 1), b.header,
       coalesce(sum(u.consumed), 0), coalesce(sum(u.successful), 0),
       coalesce(sum(u.not_found), 0), coalesce(sum(u.failed), 0),
       count(CASE WHEN u.state = 'done' THEN 1 END),
       (SELECT not_before FROM ingest_pacing p WHERE p.client_id = b.client_id)
FROM batches b JOIN clients c ON c.id = b.client_id
LEFT JOIN batch_units u ON u.batch_seq = b.seq
WHERE b.client_id = %s AND b.batch_id = %s
GROUP BY b.seq, c.code

-- name: unit_counts
SELECT count(CASE WHEN state = 'pending' THEN 1 END),
       count(CASE WHEN state = 'running' THEN 1 END),
       count(CASE WHEN state = 'done' THEN 1 END),
       count(CASE WHEN state = 'pending' AND not_before > %s THEN 1 END),
       min(CASE WHEN state = 'pending' AND not_before > %s THEN not_before END)
FROM batch_units WHERE batch_seq = %s

-- name: unit_last_error
SELECT last_error FROM batch_units WHERE batch_seq = %s AND state <> 'done'
AND last_error IS NOT NULL ORDER BY attempts DESC, unit_no LIMIT 1

-- name: units_ahead
SELECT count(*) FROM batch_units WHERE state <> 'done' AND batch_seq < %s

-- name: failed_rows
SELECT line, id, reason, raw FROM batch_failures
WHERE batch_seq = %s AND line > %s ORDER BY line LIMIT %s

-- name: pending_units
SELECT count(*) FROM batch_units WHERE state <> 'done'

-- name: latest_batch
-- The seq of the batch accepted last (0 if none): an idle worker watches it.
SELECT coalesce(max(seq), 0) FROM batches

-- listing and cancelling batches ------------------------------------------------------

-- name: batch_to_cancel
SELECT seq, version, finished_at, cancelled_at, cancelled_by FROM batches
WHERE client_id = %s AND batch_id = %s

-- name: units_not_done
SELECT unit_no, first_line, body FROM batch_units
WHERE batch_seq = %s AND state <> 'done' ORDER BY unit_no

-- name: stop_units
-- Every unit not done yet is done, its rows not applied counted as failed.
UPDATE batch_units SET state = 'done', body = NULL, lease_owner = NULL,
    lease_expires = NULL, last_error = NULL, consumed = row_count,
    failed = row_count - successful - not_found, finished_at = %s
WHERE batch_seq = %s AND state <> 'done' RETURNING unit_no, applied_through

-- name: record_cancelled_row
INSERT INTO batch_failures (batch_seq, line, id, reason, raw) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (batch_seq, line) DO NOTHING

-- name: cancel_batch
UPDATE batches SET finished_at = coalesce(finished_at, %s), last_progress_at = %s,
    cancelled_at = %s, cancelled_by = %s
WHERE seq = %s

-- name: batch_cancellation
SELECT cancelled_at, cancelled_by FROM batches WHERE seq = %s

-- name: client_batch_ids
SELECT batch_id FROM batches WHERE client_id = %s AND (%s = 0 OR finished_at IS NULL)
ORDER BY seq DESC LIMIT %s

-- the dashboard and the metrics -------------------------------------------------------

-- name: list_batches
-- Newest first, before before_seq; of the clients listed, or every client when NULL;
-- finished or not, both when NULL.
SELECT b.seq, b.batch_id, b.client_id, c.code, b.version, b.key_kind,
       b.batch_size, b.units_total, b.accepted_at, b.started_at, b.finished_at,
       (SELECT e.last_progress_at FROM batches e WHERE e.seq <= b.seq
        ORDER BY e.last_progress_at DESC LIMIT 1), b.header,
       coalesce(sum(u.consumed), 0), coalesce(sum(u.successful), 0),
       coalesce(sum(u.not_found), 0), coalesce(sum(u.failed), 0),
       count(CASE WHEN u.state = 'done' THEN 1 END),
       (SELECT not_before FROM ingest_pacing p WHERE p.client_id = b.client_id)
FROM batches b JOIN clients c ON c.id = b.client_id
LEFT JOIN batch_units u ON u.batch_seq = b.seq
WHERE b.seq < %(before_seq)s
  AND (%(clients)s::bigint[] IS NULL OR b.client_id = ANY(%(clients)s::bigint[]))
  AND (%(finished)s::boolean IS NULL OR (b.finished_at IS NOT NULL) = %(finished)s::boolean)
GROUP BY b.seq, c.code
ORDER BY b.seq DESC LIMIT %(limit)s

-- name: rows_by_minute
SELECT u.finished_at / 60000, sum(u.successful), sum(u.failed), sum(u.not_found)
FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
WHERE u.state = 'done' AND u.finished_at >= %(since)s
  AND (%(clients)s::bigint[] IS NULL OR b.client_id = ANY(%(clients)s::bigint[]))
GROUP BY u.finished_at / 60000 ORDER BY 1

-- name: queue_depth
SELECT c.code, count(*), coalesce(sum(u.row_count), 0) FROM batch_units u
JOIN batches b ON b.seq = u.batch_seq JOIN clients c ON c.id = b.client_id
WHERE u.state <> 'done' GROUP BY c.code ORDER BY c.code

-- name: workers_busy
SELECT count(DISTINCT lease_owner) FROM batch_units
WHERE state = 'running' AND lease_expires >= %s

-- name: rows_accepted_by_client
SELECT client_id, sum(batch_size) FROM batches WHERE accepted_at >= %s GROUP BY client_id

-- name: oldest_stall
SELECT max(e.last_progress_at) FROM batches e
WHERE e.seq <= (SELECT min(seq) FROM batches WHERE finished_at IS NULL)

-- name: batch_event
SELECT b.batch_id, c.code, b.accepted_at, b.finished_at,
       min(u.finished_at), coalesce(sum(u.consumed), 0), coalesce(sum(u.successful), 0),
       coalesce(sum(u.not_found), 0), coalesce(sum(u.failed), 0)
FROM batches b JOIN clients c ON c.id = b.client_id
LEFT JOIN batch_units u ON u.batch_seq = b.seq AND u.state = 'done'
WHERE b.seq = %s GROUP BY b.batch_id, c.code, b.accepted_at, b.finished_at

-- profiles ----------------------------------------------------------------------------

-- name: resolve_alias
SELECT pkey FROM identities WHERE client_id = %s AND alias = %s

-- name: expire_keys
-- Deletes the profiles of a list of keys last active before a time.
DELETE FROM profiles WHERE client_id = %s AND modified_at < %s AND pkey = ANY(%b)
RETURNING pkey

-- name: forget_identities_of_keys
DELETE FROM identities WHERE client_id = %s AND pkey = ANY(%b)

-- name: latest_tnt_alias
-- The tntId linked last to a profile.
SELECT alias FROM identities WHERE client_id = %s AND pkey = %s
AND alias >= 'p:' AND alias < 'p;' ORDER BY linked_seq DESC LIMIT 1

-- name: new_write
INSERT INTO writes (client_id, kind, ref, at) VALUES (%s, %s, %s, %s) RETURNING seq

-- name: profile_attrs_and_size
-- The stored attributes as JSON text and their size in bytes.
SELECT attrs::text, octet_length(attrs::text) FROM profiles WHERE client_id = %s AND pkey = %s

-- name: merge_values
-- Values written at once into an existing, locked profile, attribute by attribute by seq.
UPDATE profiles SET
    attrs = CASE WHEN max_seq < %(seq)s THEN attrs || %(attrs)s::jsonb
                 ELSE pb_merge(attrs, %(attrs)s::jsonb) END,
    max_seq = greatest(max_seq, %(seq)s),
    modified_at = greatest(modified_at, %(now_ms)s)
WHERE client_id = %(client_id)s AND pkey = %(pkey)s

-- name: touch_profile
-- A page call counts as activity, like a visit in Target.
UPDATE profiles SET modified_at = greatest(modified_at, %s) WHERE client_id = %s AND pkey = %s

-- name: update_window
-- The quota window of single updates as its sum and oldest minute, summed here: a day of
-- minutes is 1,440 rows.
SELECT coalesce(sum(updates), 0), min(minute) FROM update_counts
WHERE client_id = %s AND minute >= %s

-- name: update_counts_since
SELECT minute, updates FROM update_counts WHERE client_id = %s AND minute >= %s

-- name: count_update
INSERT INTO update_counts (client_id, minute, updates) VALUES (%s, %s, 1)
ON CONFLICT (client_id, minute) DO UPDATE SET updates = update_counts.updates + 1

-- name: recent_updates
SELECT minute, updates FROM update_counts WHERE client_id = %s AND minute >= %s ORDER BY minute

-- name: insert_empty_profile
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES (%s, %s, '{}', %s, %s, %s)

-- name: rename_profile
UPDATE profiles SET pkey = %s WHERE client_id = %s AND pkey = %s

-- name: move_identities
UPDATE identities SET pkey = %s WHERE client_id = %s AND pkey = %s

-- name: link_alias
INSERT INTO identities (client_id, alias, pkey, linked_seq) VALUES (%s, %s, %s, %s)
ON CONFLICT (client_id, alias) DO UPDATE SET
    pkey = excluded.pkey, linked_seq = excluded.linked_seq

-- name: profile_to_absorb
SELECT attrs::text, created_seq, max_seq FROM profiles WHERE client_id = %s AND pkey = %s

-- name: replace_profile
UPDATE profiles SET attrs = %s, created_seq = %s, max_seq = %s WHERE client_id = %s AND pkey = %s

-- name: delete_profile
DELETE FROM profiles WHERE client_id = %s AND pkey = %s

-- name: forget_identities
DELETE FROM identities WHERE client_id = %s AND pkey = %s

-- name: profile_created_seq
SELECT created_seq FROM profiles WHERE client_id = %s AND pkey = %s

-- name: aliases_of_profile
SELECT alias FROM identities WHERE client_id = %s AND pkey = %s

-- name: client_has_queued_units
SELECT 1 FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
WHERE u.state <> 'done' AND b.client_id = %s LIMIT 1

-- name: insert_tombstone
INSERT INTO tombstones (client_id, pkey, deleted_seq, deleted_at, created_seq)
VALUES (%s, %s, %s, %s, %s)

-- name: expire_client_profiles
DELETE FROM profiles WHERE client_id = %s AND modified_at < %s

-- name: forget_orphan_identities
DELETE FROM identities WHERE client_id = %s AND NOT EXISTS (
    SELECT 1 FROM profiles p WHERE p.client_id = identities.client_id
    AND p.pkey = identities.pkey)

-- name: profile_with_code
SELECT c.code, p.attrs::text, p.modified_at FROM profiles p
JOIN clients c ON c.id = p.client_id
WHERE p.client_id = %s AND p.pkey = %s AND p.modified_at >= %s

-- name: ids_of_profiles
-- The aliases of a list of stored keys, in link order.
SELECT alias, pkey FROM identities WHERE client_id = %s AND pkey = ANY(%b) ORDER BY linked_seq

-- name: writes_of
SELECT seq, kind, ref FROM writes WHERE seq = ANY(%b)

-- exports -----------------------------------------------------------------------------

-- name: begin_snapshot
-- The snapshot starts with the first read and lasts until end_snapshot.
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY

-- name: end_snapshot
COMMIT

-- name: client_code
SELECT code FROM clients WHERE id = %s

-- name: export_page
SELECT p.pkey, p.attrs::text, p.modified_at FROM profiles p
WHERE p.client_id = %s AND p.pkey >= %s AND p.pkey < %s AND p.modified_at >= %s
AND p.pkey > %s ORDER BY p.pkey LIMIT %s

-- housekeeping ------------------------------------------------------------------------

-- name: purge_units
DELETE FROM batch_units WHERE batch_seq IN (
    SELECT seq FROM batches WHERE finished_at IS NOT NULL AND accepted_at < %s)

-- name: purge_failures
DELETE FROM batch_failures WHERE batch_seq IN (
    SELECT seq FROM batches WHERE finished_at IS NOT NULL AND accepted_at < %s)

-- name: purge_idempotency_keys
DELETE FROM idempotency_keys WHERE accepted_at < %s

-- name: purge_tokens
DELETE FROM tokens WHERE expires_at < %s OR revoked_at < %s

-- name: purge_batches
DELETE FROM batches WHERE finished_at IS NOT NULL AND accepted_at < %s

-- name: purge_tombstones
-- A tombstone matters only while a queued row of its client is older than it.
DELETE FROM tombstones WHERE deleted_seq < coalesce((
    SELECT min(u.batch_seq) FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
    WHERE u.state <> 'done' AND b.client_id = tombstones.client_id) * %s, %s)

-- name: purge_update_counts
DELETE FROM update_counts WHERE minute < %s

-- name: purge_writes
DELETE FROM writes WHERE kind IN (%s, %s, %s) AND at < %s

-- copying and backing up --------------------------------------------------------------

-- name: schema_versions
SELECT version FROM schema_migrations

-- name: create_copy_progress
-- The copy's progress in the target, one row per table.
CREATE TABLE IF NOT EXISTS copy_progress (
    table_name TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    after_key  TEXT,
    copied     BIGINT NOT NULL,
    done       INTEGER NOT NULL
)

-- name: copy_progress
SELECT table_name, source, after_key, copied, done FROM copy_progress ORDER BY table_name

-- name: forget_copy_progress
DELETE FROM copy_progress

-- name: drop_copy_progress
DROP TABLE IF EXISTS copy_progress

-- name: record_copy_progress
INSERT INTO copy_progress (table_name, source, after_key, copied, done) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (table_name) DO UPDATE SET source = excluded.source,
    after_key = excluded.after_key, copied = excluded.copied, done = excluded.done

-- PostgreSQL's own mechanics -----------------------------------------------------------

-- name: postgres_copy_units
-- A batch's units, lines included, in one COPY.
COPY batch_units (batch_seq, unit_no, first_line, row_count, body) FROM STDIN (FORMAT BINARY)

-- name: postgres_unit_body_piece
-- A piece of a unit's lines (libpq keeps its buffer as large as the largest message).
SELECT substring(body FROM %s FOR %s) FROM batch_units WHERE batch_seq = %s AND unit_no = %s

-- name: postgres_copy_profiles
-- Step 2 of applying a unit: the new profiles, copied in key order (client_id, pkey, attrs,
-- created_seq, max_seq, modified_at). A profile that exists already fails the copy.
COPY profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at) FROM STDIN

-- name: postgres_tombstone_missed
-- After a unit copied new profiles in: whether a delete left a tombstone newer than the
-- oldest row copied into one of them, one the unit did not see when it read tombstones.
SELECT 1 FROM unnest(%(keys)s::text[], %(lows)s::bigint[]) AS n(pkey, low)
JOIN tombstones t ON t.client_id = %(client)s AND t.pkey = n.pkey AND t.deleted_seq > n.low
LIMIT 1

-- name: postgres_profile_placeholder
-- A delete's wait for a unit copying the same profile in: an insert of the key waits for
-- the unit's uncommitted one, then does nothing; with no such unit it inserts a
-- placeholder, which the delete removes at once (no other transaction sees it).
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES (%s, %s, '{}', 0, 0, 0)
ON CONFLICT DO NOTHING
RETURNING 1

-- name: postgres_update_profiles
-- Step 3: update the locked profiles, merging per attribute (pb_merge, or plain ||
-- when every incoming seq is newer than the whole profile).
UPDATE profiles p SET
    attrs = CASE WHEN p.max_seq < n.min_seq THEN p.attrs || n.attrs
                 ELSE pb_merge(p.attrs, n.attrs) END,
    created_seq = least(p.created_seq, n.min_seq),
    max_seq = greatest(p.max_seq, n.max_seq),
    modified_at = greatest(p.modified_at, %s)
FROM (SELECT c.value ->> 0 AS pkey, c.value -> 1 AS attrs, (c.value ->> 2)::bigint AS min_seq,
             (c.value ->> 3)::bigint AS max_seq
      FROM jsonb_array_elements(%s::jsonb) AS c) AS n
WHERE p.client_id = %s AND p.pkey = n.pkey

-- name: postgres_columns
SELECT column_name, data_type FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position

-- name: postgres_primary_key
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s::regclass AND i.indisprimary
ORDER BY array_position(i.indkey::int2[], a.attnum)

-- name: postgres_references
SELECT confrelid::regclass::text FROM pg_constraint
WHERE conrelid = %s::regclass AND contype = 'f'

-- name: postgres_counted_columns
-- Columns whose values a sequence hands out: identity columns and serials.
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = current_schema()
  AND (is_identity = 'YES' OR column_default LIKE 'nextval(%%')

-- name: postgres_counter
SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, %s))

-- name: postgres_set_counter
SELECT setval(pg_get_serial_sequence(%s, %s), %s)

-- name: postgres_profile_document
-- A fetch in one statement, so in one snapshot without a transaction: the client's code,
-- the profile a key finds (itself or the profile it is an alias of) if active since a
-- time, its aliases in link order, and the writes its attributes came from (seq div
-- SEQ_SPAN) as three arrays, looked up by primary key (= ANY of an array: IN (subquery)
-- lets the planner scan every write). No row when no profile is found.
SELECT c.code, p.attrs::text, p.modified_at, p.pkey,
       ARRAY(SELECT i.alias FROM identities i
             WHERE i.client_id = p.client_id AND i.pkey = p.pkey ORDER BY i.linked_seq),
       w.seqs, w.kinds, w.refs
FROM profiles p
JOIN clients c ON c.id = p.client_id
CROSS JOIN LATERAL (
    SELECT array_agg(w.seq) AS seqs, array_agg(w.kind) AS kinds, array_agg(w.ref) AS refs
    FROM writes w
    WHERE w.seq = ANY(ARRAY(SELECT DISTINCT (e.value ->> 1)::bigint / %(span)s
                            FROM jsonb_each(p.attrs) e))
) w
WHERE p.client_id = %(client)s AND p.modified_at >= %(since)s
  AND p.pkey = coalesce((SELECT i.pkey FROM identities i
                         WHERE i.client_id = %(client)s AND i.alias = %(key)s), %(key)s)

-- name: postgres_lock_keys
-- Locks the profiles a list of keys find (each itself, or the profile it is an alias
-- of), in key order as applying a unit locks them, and returns for each key what
-- postgres_keys_found does. Each key is looked up by the primary key of identities (a
-- join lets the planner read every alias of the client).
WITH k AS MATERIALIZED (
    SELECT key, coalesce((SELECT i.pkey FROM identities i
                          WHERE i.client_id = %(client)s AND i.alias = key), key) AS stored
    FROM unnest(%(keys)s::text[]) AS key
), locked AS MATERIALIZED (
    SELECT p.pkey, p.modified_at, octet_length(p.attrs::text) AS size FROM profiles p
    WHERE p.client_id = %(client)s AND p.pkey = ANY(ARRAY(SELECT stored FROM k))
    ORDER BY p.pkey FOR UPDATE
)
SELECT k.key, k.stored, l.pkey IS NOT NULL, l.modified_at, l.size
FROM k LEFT JOIN locked l ON l.pkey = k.stored

-- name: postgres_quick_update
-- A single update in one statement, in a group of online writes that already holds the
-- client's row lock: the profile a key finds (itself or through an alias), live, locked;
-- when the day's quota has room and the values surely fit (size + a bound of theirs),
-- one more update counted, a write taken and the values merged under its seq, as
-- count_update, new_write and merge_values do. Returns the stored key, the write's
-- number (NULL when nothing was written: the caller takes the shared path, which says
-- why), the tntId linked last and the quota window before this update as its sum and
-- oldest minute (as update_window reads them); no row when no live profile is found.
WITH target AS (
    SELECT p.pkey, octet_length(p.attrs::text) AS size FROM profiles p
    WHERE p.client_id = %(client)s AND p.modified_at >= %(since)s
      AND p.pkey = coalesce((SELECT i.pkey FROM identities i
                             WHERE i.client_id = %(client)s AND i.alias = %(key)s), %(key)s)
    FOR UPDATE
), window_ AS (  -- read once: the room's check and the reply both use it
    SELECT coalesce(sum(u.updates), 0) AS used, min(u.minute) AS oldest FROM update_counts u
    WHERE u.client_id = %(client)s AND u.minute >= %(day_start)s
), room AS (
    SELECT t.pkey FROM target t, window_ w
    WHERE t.size + %(bound)s <= %(max_bytes)s AND w.used < %(per_day)s
), counted AS (
    INSERT INTO update_counts (client_id, minute, updates)
    SELECT %(client)s, %(minute)s, 1 FROM room
    ON CONFLICT (client_id, minute) DO UPDATE SET updates = update_counts.updates + 1
), write AS (
    INSERT INTO writes (client_id, kind, at) SELECT %(client)s, %(kind)s, %(now)s FROM room
    RETURNING seq
), change AS (
    SELECT r.pkey, w.seq * %(span)s + 1 AS seq,
           (SELECT jsonb_object_agg(v.key, jsonb_build_array(v.value, w.seq * %(span)s + 1,
                                                             %(now)s))
            FROM jsonb_each_text(%(values)s::jsonb) v) AS attrs
    FROM room r, write w
), merged AS (
    UPDATE profiles p SET
        attrs = CASE WHEN p.max_seq < c.seq THEN p.attrs || c.attrs
                     ELSE pb_merge(p.attrs, c.attrs) END,
        max_seq = greatest(p.max_seq, c.seq),
        modified_at = greatest(p.modified_at, %(now)s)
    FROM change c WHERE p.client_id = %(client)s AND p.pkey = c.pkey
)
SELECT t.pkey, (SELECT seq FROM write),
       (SELECT i.alias FROM identities i WHERE i.client_id = %(client)s AND i.pkey = t.pkey
        AND i.alias >= 'p:' AND i.alias < 'p;' ORDER BY i.linked_seq DESC LIMIT 1),
       (SELECT json_build_array(w.used, w.oldest)::text FROM window_ w)
FROM target t

-- name: postgres_changes
-- The current snapshot, as text: it differs from one taken before whenever a transaction
-- that wrote anything committed in between (PostgresStore.changes_async). No row on a
-- standby, whose snapshots do not list the transactions running.
SELECT pg_current_snapshot()::text WHERE NOT pg_is_in_recovery()

-- name: postgres_keys_found
-- For each of a list of keys: the stored key it finds (itself unless an alias), whether
-- that profile exists, when it was last active, and its size in bytes.
SELECT k.key, k.stored, p.pkey IS NOT NULL, p.modified_at, octet_length(p.attrs::text)
FROM (SELECT key, coalesce((SELECT i.pkey FROM identities i
                            WHERE i.client_id = %(client)s AND i.alias = key), key) AS stored
      FROM unnest(%(keys)s::text[]) AS key) AS k
LEFT JOIN profiles p ON p.client_id = %(client)s AND p.pkey = k.stored

-- name: postgres_quick_visit
-- A page call that creates, renames and absorbs no profile, in one statement: a write
-- taken, its tntId linked to the call's profile if it is not yet (NULL: linked already),
-- and the profileParameters merged under the next seq, or (NULL) the profile touched,
-- as new_write, link_alias, merge_values and touch_profile do. Returns the write's number.
WITH write AS (
    INSERT INTO writes (client_id, kind, ref, at)
    VALUES (%(client)s, %(kind)s, %(ref)s, %(now)s) RETURNING seq
), linked AS (
    INSERT INTO identities (client_id, alias, pkey, linked_seq)
    SELECT %(client)s, %(alias)s::text, %(target)s, w.seq * %(span)s + 1 FROM write w
    WHERE %(alias)s::text IS NOT NULL
    ON CONFLICT (client_id, alias) DO UPDATE SET
        pkey = excluded.pkey, linked_seq = excluded.linked_seq
), change AS (
    SELECT w.seq * %(span)s + 2 AS seq,
           (SELECT jsonb_object_agg(v.key, jsonb_build_array(v.value, w.seq * %(span)s + 2,
                                                             %(now)s))
            FROM jsonb_each_text(%(values)s::jsonb) v) AS attrs
    FROM write w
), merged AS (
    UPDATE profiles p SET
        attrs = CASE WHEN c.attrs IS NULL THEN p.attrs
                     WHEN p.max_seq < c.seq THEN p.attrs || c.attrs
                     ELSE pb_merge(p.attrs, c.attrs) END,
        max_seq = CASE WHEN c.attrs IS NULL THEN p.max_seq ELSE greatest(p.max_seq, c.seq) END,
        modified_at = greatest(p.modified_at, %(now)s)
    FROM change c WHERE p.client_id = %(client)s AND p.pkey = %(target)s
)
SELECT seq FROM write
