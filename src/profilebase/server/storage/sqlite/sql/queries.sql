-- The named queries of the SQLite backend (storage/statements.py loads them).
--
-- Each block starts with "-- name: <name>", then comment lines saying what it does,
-- then one statement. Parameters are "?" in order, or ":name" where the code binds
-- a mapping. postgres/sql/queries.sql defines the same names; a name starting with
-- "sqlite_" belongs to this backend's own mechanics and has no twin there.

-- schema ------------------------------------------------------------------------------

-- name: migrations_table_exists
-- One row, true when the schema_migrations table exists.
SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)

-- name: lock_migrations
-- One migrator at a time: BEGIN IMMEDIATE already made this transaction the only writer.
SELECT 1

-- name: applied_migrations
SELECT version FROM schema_migrations

-- name: migration_applied
SELECT 1 FROM schema_migrations WHERE version = ?

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, datetime('now'))

-- name: table_names
-- Every table, bookkeeping and SQLite's own included.
SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name

-- locks -------------------------------------------------------------------------------

-- name: lock_client
-- Orders a write among its client's writes. BEGIN IMMEDIATE already made this
-- transaction the only writer: reading the row is all there is to do.
SELECT 1 FROM clients WHERE id = ?

-- name: lock_batch
-- As lock_client: the only writer needs no row lock.
SELECT 1 FROM batches WHERE seq = ?

-- name: lock_profiles
-- The profiles of a JSON list of keys that exist (no row locks needed, as above).
SELECT pkey FROM profiles WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?))

-- clients and tokens ------------------------------------------------------------------

-- name: client_by_code
SELECT id, code, require_auth, disabled, limits, api_key, secret_hash, org_id
FROM clients WHERE code = ?

-- name: client_by_org
SELECT id, code, require_auth, disabled, limits, api_key, secret_hash, org_id
FROM clients WHERE org_id = ?

-- name: list_clients
SELECT id, code, require_auth, disabled, limits, api_key, secret_hash, org_id
FROM clients ORDER BY code

-- name: insert_client
INSERT INTO clients (code, require_auth, api_key, secret_hash, created_at)
VALUES (?, ?, ?, ?, ?) ON CONFLICT (code) DO NOTHING

-- name: ensure_client
INSERT INTO clients (code, created_at) VALUES (?, ?) ON CONFLICT (code) DO NOTHING

-- name: client_exists
SELECT 1 FROM clients WHERE code = ?

-- name: organization_owner
-- The other client that has an organization id, if any.
SELECT code FROM clients WHERE org_id = ? AND code <> ?

-- name: update_client
-- Changes the fields given (NULL: unchanged); org_id changes only with :set_org.
UPDATE clients SET
    require_auth = coalesce(:require_auth, require_auth),
    disabled = coalesce(:disabled, disabled),
    limits = coalesce(:limits, limits),
    api_key = coalesce(:api_key, api_key),
    secret_hash = coalesce(:secret_hash, secret_hash),
    org_id = CASE WHEN :set_org THEN :org_id ELSE org_id END
WHERE code = :code

-- name: revoke_other_tokens
-- A rotation: the client's tokens of a scope still valid then are revoked at that time.
UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND scope = ?
AND expires_at > ? AND (revoked_at IS NULL OR revoked_at > ?)

-- name: insert_token
INSERT INTO tokens (client_id, token_hash, last4, scope, created_at, expires_at, revoked_at, nonce)
VALUES (?, ?, ?, ?, ?, ?, NULL, ?)

-- name: token_by_hash
SELECT client_id, token_hash, last4, scope, created_at, expires_at, revoked_at, nonce
FROM tokens WHERE token_hash = ?

-- name: active_token
SELECT client_id, token_hash, last4, scope, created_at, expires_at, revoked_at, nonce
FROM tokens WHERE client_id = ? AND scope = ?
AND expires_at > ? AND (revoked_at IS NULL OR revoked_at > ?)
ORDER BY created_at DESC LIMIT 1

-- name: revoke_client_tokens
UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND expires_at > ?
AND (revoked_at IS NULL OR revoked_at > ?)

-- name: revoke_all_tokens
UPDATE tokens SET revoked_at = ? WHERE expires_at > ? AND (revoked_at IS NULL OR revoked_at > ?)

-- name: server_secret
SELECT fingerprint FROM server_secret

-- name: forget_server_secret
DELETE FROM server_secret

-- name: record_server_secret
INSERT INTO server_secret (id, fingerprint, created_at) VALUES (1, ?, ?)
ON CONFLICT (id) DO NOTHING

-- accepting batches -------------------------------------------------------------------

-- name: idempotency_key
SELECT batch_seq, batch_id, digest FROM idempotency_keys WHERE client_id = ? AND key = ?

-- name: recent_batches
SELECT accepted_at, batch_size FROM batches
WHERE client_id = ? AND accepted_at > ? ORDER BY accepted_at

-- name: rows_accepted_since
SELECT coalesce(sum(batch_size), 0) FROM batches WHERE client_id = ? AND accepted_at >= ?

-- name: new_batch_write
INSERT INTO writes (client_id, kind, at) VALUES (?, 'batch', ?) RETURNING seq

-- name: set_write_ref
UPDATE writes SET ref = ? WHERE seq = ?

-- name: insert_batch
INSERT INTO batches (seq, batch_id, client_id, version, key_kind, header, batch_size,
    units_total, accepted_at, started_at, finished_at, last_progress_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: insert_idempotency_key
INSERT INTO idempotency_keys (client_id, key, batch_seq, batch_id, digest, accepted_at)
VALUES (?, ?, ?, ?, ?, ?)

-- name: sqlite_insert_unit
INSERT INTO batch_units (batch_seq, unit_no, first_line, row_count) VALUES (?, ?, ?, ?)

-- name: sqlite_insert_unit_body
-- Room for a unit's lines, written afterwards piece by piece through blob I/O.
INSERT INTO unit_bodies (batch_seq, unit_no, body) VALUES (?, ?, zeroblob(?))

-- claiming and applying units ---------------------------------------------------------

-- name: claim_unit
-- Lease the oldest claimable unit: pending, or running with an expired lease. A v1
-- row is "not found" unless its profile was created by an earlier write, so a v1 unit
-- waits until every earlier batch of its client is done; v2 units never wait. A paced
-- client's units (its id in the JSON list) wait for its not_before.
UPDATE batch_units SET state = 'running', lease_owner = ?, lease_expires = ?,
    attempts = attempts + 1
WHERE rowid = (
    SELECT u.rowid FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
    WHERE u.state <> 'done'
      AND ((u.state = 'pending' AND u.not_before <= ?)
           OR (u.state = 'running' AND u.lease_expires < ?))
      AND (b.version >= 2 OR NOT EXISTS (
          SELECT 1 FROM batch_units e JOIN batches eb ON eb.seq = e.batch_seq
          WHERE eb.client_id = b.client_id AND e.batch_seq < u.batch_seq
            AND e.state <> 'done'))
      AND NOT EXISTS (SELECT 1 FROM ingest_pacing p
                      WHERE p.client_id = b.client_id AND p.not_before > ?
                      AND p.client_id IN (SELECT value FROM json_each(?)))
    ORDER BY u.batch_seq, u.unit_no LIMIT 1)
RETURNING batch_seq, unit_no, first_line, row_count, attempts

-- name: sqlite_claimed_batch
-- What a claim needs of the claimed unit's batch and client.
SELECT b.client_id, b.version, b.key_kind, b.header, c.limits
FROM batches b JOIN clients c ON c.id = b.client_id WHERE b.seq = ?

-- name: sqlite_unit_body_row
-- The rowid of a unit's lines, for blob I/O.
SELECT rowid FROM unit_bodies WHERE batch_seq = ? AND unit_no = ?

-- name: sqlite_unit_body_inline
-- A unit's lines kept in its own row, as before migration 0005.
SELECT body FROM batch_units WHERE batch_seq = ? AND unit_no = ?

-- name: sqlite_forget_unit_body
DELETE FROM unit_bodies WHERE batch_seq = ? AND unit_no = ?

-- name: mark_batch_started
UPDATE batches SET started_at = coalesce(started_at, ?) WHERE seq = ?

-- name: pace_client
-- not_before = max(not_before, now) + pause
INSERT INTO ingest_pacing (client_id, not_before) VALUES (?, ?)
ON CONFLICT (client_id) DO UPDATE SET not_before = CASE
    WHEN ingest_pacing.not_before + ? > excluded.not_before
    THEN ingest_pacing.not_before + ? ELSE excluded.not_before END

-- name: unit_progress
-- The unit's progress, if this worker still holds its lease.
SELECT applied_through FROM batch_units
WHERE batch_seq = ? AND unit_no = ? AND state = 'running' AND lease_owner = ?

-- name: client_has_identities
SELECT 1 FROM identities WHERE client_id = ? LIMIT 1

-- name: client_has_tombstones
SELECT 1 FROM tombstones WHERE client_id = ? LIMIT 1

-- name: aliases_of_keys
-- Alias -> stored key, for the keys of a JSON list that are aliases.
SELECT alias, pkey FROM identities
WHERE client_id = ? AND alias IN (SELECT value FROM json_each(?))

-- name: profile_states
-- What applying a unit needs of the stored profiles of a JSON list of keys.
SELECT pkey, created_seq, max_seq, length(CAST(attrs AS BLOB))
FROM profiles WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?))

-- name: profiles_between
-- Whether the client has any profile with a key in a range (profile_states is skipped if not).
SELECT 1 FROM profiles WHERE client_id = ? AND pkey BETWEEN ? AND ? LIMIT 1

-- name: tombstones_of_keys
SELECT pkey, deleted_seq, created_seq FROM tombstones
WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?))
ORDER BY pkey, deleted_seq

-- name: set_tombstone_created
UPDATE tombstones SET created_seq = ? WHERE client_id = ? AND pkey = ? AND deleted_seq = ?

-- name: profile_attrs
SELECT attrs FROM profiles WHERE client_id = ? AND pkey = ?

-- name: sqlite_upsert_profile
-- A decoded row, or an import unit's rows of one profile merged (with their lowest and
-- highest seq), into a profile, attribute by attribute by seq: json_patch when every
-- incoming seq is newer than the whole profile, pb_merge (merge.merge_attrs) otherwise.
-- The later modified time stays.
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (client_id, pkey) DO UPDATE SET
    attrs = CASE WHEN profiles.max_seq < excluded.created_seq
                 THEN json_patch(profiles.attrs, excluded.attrs)
                 ELSE pb_merge(profiles.attrs, excluded.attrs) END,
    created_seq = min(profiles.created_seq, excluded.created_seq),
    max_seq = max(profiles.max_seq, excluded.max_seq),
    modified_at = max(profiles.modified_at, excluded.modified_at)

-- name: sqlite_upsert_decoded_rows
-- sqlite_upsert_profile binding decoded rows (line, id, seq, attrs) as they are; the
-- client, key prefix and time are filled in as literals (statements.py says why).
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES ({client_id}, '{prefix}' || ?2, ?4, ?3, ?3, {now_ms})
ON CONFLICT (client_id, pkey) DO UPDATE SET
    attrs = CASE WHEN profiles.max_seq < excluded.max_seq
                 THEN json_patch(profiles.attrs, excluded.attrs)
                 ELSE pb_merge(profiles.attrs, excluded.attrs) END,
    created_seq = min(profiles.created_seq, excluded.created_seq),
    max_seq = max(profiles.max_seq, excluded.max_seq),
    modified_at = max(profiles.modified_at, excluded.modified_at)

-- name: record_failure
INSERT INTO batch_failures (batch_seq, line, id, reason, raw) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (batch_seq, line) DO UPDATE
SET id = excluded.id, reason = excluded.reason, raw = excluded.raw

-- name: finish_unit
-- Adds a last part's counts and marks the unit done, its lines dropped.
UPDATE batch_units SET consumed = consumed + ?, successful = successful + ?,
    not_found = not_found + ?, failed = failed + ?, last_error = NULL,
    state = 'done', body = NULL, finished_at = ?
WHERE batch_seq = ? AND unit_no = ?

-- name: record_unit_progress
-- Adds a part's counts; progress never moves back (an empty part may name an earlier line).
UPDATE batch_units SET consumed = consumed + ?, successful = successful + ?,
    not_found = not_found + ?, failed = failed + ?, last_error = NULL,
    applied_through = CASE WHEN applied_through > ? THEN applied_through ELSE ? END
WHERE batch_seq = ? AND unit_no = ?

-- name: mark_batch_progress
UPDATE batches SET last_progress_at = ? WHERE seq = ?

-- name: finish_batch_if_done
UPDATE batches SET last_progress_at = ?, finished_at = CASE WHEN EXISTS (
    SELECT 1 FROM batch_units WHERE batch_seq = ? AND state <> 'done')
    THEN finished_at ELSE ? END
WHERE seq = ?

-- name: release_unit
UPDATE batch_units SET state = 'pending', lease_owner = NULL, lease_expires = NULL,
    not_before = ?, last_error = ?
WHERE batch_seq = ? AND unit_no = ? AND lease_owner = ? AND state = 'running'

-- applying import units (storage/imports.py) ------------------------------------------

-- name: import_profiles
-- What importing needs of the stored profiles of a JSON list of keys: attributes,
-- seqs and size in bytes.
SELECT pkey, attrs, created_seq, max_seq, length(CAST(attrs AS BLOB))
FROM profiles WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?))

-- name: sqlite_link_imported
-- Links a tntId of an import to its profile unless it was linked later elsewhere.
INSERT INTO identities (client_id, alias, pkey, linked_seq) VALUES (?, ?, ?, ?)
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
WHERE b.client_id = ? AND b.batch_id = ?
GROUP BY b.seq, c.code

-- name: unit_counts
SELECT count(CASE WHEN state = 'pending' THEN 1 END),
       count(CASE WHEN state = 'running' THEN 1 END),
       count(CASE WHEN state = 'done' THEN 1 END),
       count(CASE WHEN state = 'pending' AND not_before > ? THEN 1 END),
       min(CASE WHEN state = 'pending' AND not_before > ? THEN not_before END)
FROM batch_units WHERE batch_seq = ?

-- name: unit_last_error
SELECT last_error FROM batch_units WHERE batch_seq = ? AND state <> 'done'
AND last_error IS NOT NULL ORDER BY attempts DESC, unit_no LIMIT 1

-- name: units_ahead
SELECT count(*) FROM batch_units WHERE state <> 'done' AND batch_seq < ?

-- name: failed_rows
SELECT line, id, reason, raw FROM batch_failures
WHERE batch_seq = ? AND line > ? ORDER BY line LIMIT ?

-- name: pending_units
SELECT count(*) FROM batch_units WHERE state <> 'done'

-- name: latest_batch
-- The seq of the batch accepted last (0 if none): an idle worker watches it.
SELECT coalesce(max(seq), 0) FROM batches

-- listing and cancelling batches ------------------------------------------------------

-- name: batch_to_cancel
SELECT seq, version, finished_at, cancelled_at, cancelled_by FROM batches
WHERE client_id = ? AND batch_id = ?

-- name: units_not_done
SELECT unit_no, first_line, body FROM batch_units
WHERE batch_seq = ? AND state <> 'done' ORDER BY unit_no

-- name: stop_units
-- Every unit not done yet is done, its rows not applied counted as failed.
UPDATE batch_units SET state = 'done', body = NULL, lease_owner = NULL,
    lease_expires = NULL, last_error = NULL, consumed = row_count,
    failed = row_count - successful - not_found, finished_at = ?
WHERE batch_seq = ? AND state <> 'done' RETURNING unit_no, applied_through

-- name: record_cancelled_row
INSERT INTO batch_failures (batch_seq, line, id, reason, raw) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (batch_seq, line) DO NOTHING

-- name: cancel_batch
UPDATE batches SET finished_at = coalesce(finished_at, ?), last_progress_at = ?,
    cancelled_at = ?, cancelled_by = ?
WHERE seq = ?

-- name: batch_cancellation
SELECT cancelled_at, cancelled_by FROM batches WHERE seq = ?

-- name: client_batch_ids
SELECT batch_id FROM batches WHERE client_id = ? AND (? = 0 OR finished_at IS NULL)
ORDER BY seq DESC LIMIT ?

-- the dashboard and the metrics -------------------------------------------------------

-- name: list_batches
-- Newest first, before :before_seq; :clients (a JSON list) or every client when NULL;
-- finished or not when :finished is 1 or 0, both when NULL.
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
WHERE b.seq < :before_seq
  AND (:clients IS NULL OR b.client_id IN (SELECT value FROM json_each(:clients)))
  AND (:finished IS NULL OR (b.finished_at IS NOT NULL) = :finished)
GROUP BY b.seq, c.code
ORDER BY b.seq DESC LIMIT :limit

-- name: rows_by_minute
SELECT u.finished_at / 60000, sum(u.successful), sum(u.failed), sum(u.not_found)
FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
WHERE u.state = 'done' AND u.finished_at >= :since
  AND (:clients IS NULL OR b.client_id IN (SELECT value FROM json_each(:clients)))
GROUP BY u.finished_at / 60000 ORDER BY 1

-- name: queue_depth
SELECT c.code, count(*), coalesce(sum(u.row_count), 0) FROM batch_units u
JOIN batches b ON b.seq = u.batch_seq JOIN clients c ON c.id = b.client_id
WHERE u.state <> 'done' GROUP BY c.code ORDER BY c.code

-- name: workers_busy
SELECT count(DISTINCT lease_owner) FROM batch_units
WHERE state = 'running' AND lease_expires >= ?

-- name: rows_accepted_by_client
SELECT client_id, sum(batch_size) FROM batches WHERE accepted_at >= ? GROUP BY client_id

-- name: oldest_stall
SELECT max(e.last_progress_at) FROM batches e
WHERE e.seq <= (SELECT min(seq) FROM batches WHERE finished_at IS NULL)

-- name: batch_event
SELECT b.batch_id, c.code, b.accepted_at, b.finished_at,
       min(u.finished_at), coalesce(sum(u.consumed), 0), coalesce(sum(u.successful), 0),
       coalesce(sum(u.not_found), 0), coalesce(sum(u.failed), 0)
FROM batches b JOIN clients c ON c.id = b.client_id
LEFT JOIN batch_units u ON u.batch_seq = b.seq AND u.state = 'done'
WHERE b.seq = ? GROUP BY b.batch_id, c.code, b.accepted_at, b.finished_at

-- profiles ----------------------------------------------------------------------------

-- name: resolve_alias
SELECT pkey FROM identities WHERE client_id = ? AND alias = ?

-- name: expire_keys
-- Deletes the profiles of a JSON list of keys last active before a time.
DELETE FROM profiles WHERE client_id = ? AND modified_at < ?
AND pkey IN (SELECT value FROM json_each(?)) RETURNING pkey

-- name: forget_identities_of_keys
DELETE FROM identities WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?))

-- name: latest_tnt_alias
-- The tntId linked last to a profile (INDEXED BY: as ids_of_profiles).
SELECT alias FROM identities INDEXED BY identities_profile WHERE client_id = ? AND pkey = ?
AND alias >= 'p:' AND alias < 'p;' ORDER BY linked_seq DESC LIMIT 1

-- name: new_write
INSERT INTO writes (client_id, kind, ref, at) VALUES (?, ?, ?, ?) RETURNING seq

-- name: profile_attrs_and_size
-- The stored attributes as JSON text and their size in bytes.
SELECT attrs, length(CAST(attrs AS BLOB)) FROM profiles WHERE client_id = ? AND pkey = ?

-- name: merge_values
-- Values written at once into an existing profile, attribute by attribute by seq; returns
-- the profile's size in bytes once merged (SQLiteStore._merge_values checks it).
UPDATE profiles SET
    attrs = CASE WHEN max_seq < :seq THEN json_patch(attrs, :attrs)
                 ELSE pb_merge(attrs, :attrs) END,
    max_seq = max(max_seq, :seq),
    modified_at = max(modified_at, :now_ms)
WHERE client_id = :client_id AND pkey = :pkey
RETURNING length(CAST(attrs AS BLOB))

-- name: touch_profile
-- A page call counts as activity, like a visit in Target.
UPDATE profiles SET modified_at = max(modified_at, ?) WHERE client_id = ? AND pkey = ?

-- name: update_window
-- The quota window of single updates as its sum and oldest minute, summed here: a day of
-- minutes is 1,440 rows.
SELECT coalesce(sum(updates), 0), min(minute) FROM update_counts
WHERE client_id = ? AND minute >= ?

-- name: update_counts_since
SELECT minute, updates FROM update_counts WHERE client_id = ? AND minute >= ?

-- name: count_update
INSERT INTO update_counts (client_id, minute, updates) VALUES (?, ?, 1)
ON CONFLICT (client_id, minute) DO UPDATE SET updates = updates + 1

-- name: recent_updates
SELECT minute, updates FROM update_counts WHERE client_id = ? AND minute >= ? ORDER BY minute

-- name: insert_empty_profile
INSERT INTO profiles (client_id, pkey, attrs, created_seq, max_seq, modified_at)
VALUES (?, ?, '{}', ?, ?, ?)

-- name: rename_profile
UPDATE profiles SET pkey = ? WHERE client_id = ? AND pkey = ?

-- name: move_identities
UPDATE identities SET pkey = ? WHERE client_id = ? AND pkey = ?

-- name: link_alias
INSERT INTO identities (client_id, alias, pkey, linked_seq) VALUES (?, ?, ?, ?)
ON CONFLICT (client_id, alias) DO UPDATE SET
    pkey = excluded.pkey, linked_seq = excluded.linked_seq

-- name: profile_to_absorb
SELECT attrs, created_seq, max_seq FROM profiles WHERE client_id = ? AND pkey = ?

-- name: replace_profile
UPDATE profiles SET attrs = ?, created_seq = ?, max_seq = ? WHERE client_id = ? AND pkey = ?

-- name: delete_profile
DELETE FROM profiles WHERE client_id = ? AND pkey = ?

-- name: forget_identities
DELETE FROM identities WHERE client_id = ? AND pkey = ?

-- name: profile_created_seq
SELECT created_seq FROM profiles WHERE client_id = ? AND pkey = ?

-- name: aliases_of_profile
SELECT alias FROM identities WHERE client_id = ? AND pkey = ?

-- name: client_has_queued_units
SELECT 1 FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
WHERE u.state <> 'done' AND b.client_id = ? LIMIT 1

-- name: insert_tombstone
INSERT INTO tombstones (client_id, pkey, deleted_seq, deleted_at, created_seq)
VALUES (?, ?, ?, ?, ?)

-- name: expire_client_profiles
DELETE FROM profiles WHERE client_id = ? AND modified_at < ?

-- name: forget_orphan_identities
DELETE FROM identities WHERE client_id = ? AND NOT EXISTS (
    SELECT 1 FROM profiles p WHERE p.client_id = identities.client_id
    AND p.pkey = identities.pkey)

-- name: sqlite_find_to_update
-- As sqlite_live_key, with the tntId linked last to the profile when its stored key is not
-- one (as latest_tnt_alias): what a single update needs, in one statement.
SELECT k.pkey, p.modified_at,
    CASE WHEN k.pkey >= 'p:' AND k.pkey < 'p;' THEN NULL ELSE (
        SELECT alias FROM identities INDEXED BY identities_profile
        WHERE client_id = :client_id AND pkey = k.pkey AND alias >= 'p:' AND alias < 'p;'
        ORDER BY linked_seq DESC LIMIT 1) END
FROM (SELECT coalesce(
    (SELECT pkey FROM identities WHERE client_id = :client_id AND alias = :key), :key) AS pkey) k
LEFT JOIN profiles p ON p.client_id = :client_id AND p.pkey = k.pkey

-- name: sqlite_count_updates
-- The single updates a group counted in one minute of its client, added at its end.
INSERT INTO update_counts (client_id, minute, updates) VALUES (?, ?, ?)
ON CONFLICT (client_id, minute) DO UPDATE SET updates = updates + excluded.updates

-- name: sqlite_live_key
-- The stored key a key finds (itself unless an alias) and, if that profile exists, when it
-- was last active: resolving and finding in one statement.
SELECT k.pkey, p.modified_at
FROM (SELECT coalesce(
    (SELECT pkey FROM identities WHERE client_id = :client_id AND alias = :key), :key) AS pkey) k
LEFT JOIN profiles p ON p.client_id = :client_id AND p.pkey = k.pkey

-- name: sqlite_profile_document
-- A fetch in one statement (one snapshot, no transaction to open): the client's code, the
-- profile the key finds (through its alias, if it is one) unless expired, its aliases in
-- link order (INDEXED BY: as ids_of_profiles) and the writes its attributes came from, as
-- JSON arrays.
SELECT c.code, p.pkey, p.attrs, p.modified_at,
    (SELECT json_group_array(alias) FROM (
        SELECT alias FROM identities i INDEXED BY identities_profile
        WHERE i.client_id = p.client_id AND i.pkey = p.pkey ORDER BY i.linked_seq)),
    (SELECT json_group_array(json_array(w.seq, w.kind, w.ref)) FROM writes w
        WHERE w.seq IN (SELECT json_extract(a.value, '$[1]') / 100000000 FROM json_each(p.attrs) a))
FROM profiles p JOIN clients c ON c.id = p.client_id
WHERE p.client_id = :client_id
AND p.pkey = coalesce(
    (SELECT pkey FROM identities WHERE client_id = :client_id AND alias = :key), :key)
AND p.modified_at >= :before

-- name: profile_with_code
SELECT c.code, p.attrs, p.modified_at FROM profiles p
JOIN clients c ON c.id = p.client_id
WHERE p.client_id = ? AND p.pkey = ? AND p.modified_at >= ?

-- name: ids_of_profiles
-- The aliases of a JSON list of stored keys, in link order. Without INDEXED BY, SQLite
-- (no statistics) reads every alias of the client through the primary key instead.
SELECT alias, pkey FROM identities INDEXED BY identities_profile
WHERE client_id = ? AND pkey IN (SELECT value FROM json_each(?)) ORDER BY linked_seq

-- name: writes_of
SELECT seq, kind, ref FROM writes WHERE seq IN (SELECT value FROM json_each(?))

-- exports -----------------------------------------------------------------------------

-- name: begin_snapshot
-- The snapshot starts with the first read and lasts until end_snapshot.
BEGIN

-- name: end_snapshot
COMMIT

-- name: client_code
SELECT code FROM clients WHERE id = ?

-- name: export_page
SELECT p.pkey, p.attrs, p.modified_at FROM profiles p
WHERE p.client_id = ? AND p.pkey >= ? AND p.pkey < ? AND p.modified_at >= ?
AND p.pkey > ? ORDER BY p.pkey LIMIT ?

-- housekeeping ------------------------------------------------------------------------

-- name: purge_units
DELETE FROM batch_units WHERE batch_seq IN (
    SELECT seq FROM batches WHERE finished_at IS NOT NULL AND accepted_at < ?)

-- name: purge_failures
DELETE FROM batch_failures WHERE batch_seq IN (
    SELECT seq FROM batches WHERE finished_at IS NOT NULL AND accepted_at < ?)

-- name: purge_idempotency_keys
DELETE FROM idempotency_keys WHERE accepted_at < ?

-- name: purge_tokens
DELETE FROM tokens WHERE expires_at < ? OR revoked_at < ?

-- name: purge_batches
DELETE FROM batches WHERE finished_at IS NOT NULL AND accepted_at < ?

-- name: purge_tombstones
-- A tombstone matters only while a queued row of its client is older than it.
DELETE FROM tombstones WHERE deleted_seq < coalesce((
    SELECT min(u.batch_seq) FROM batch_units u JOIN batches b ON b.seq = u.batch_seq
    WHERE u.state <> 'done' AND b.client_id = tombstones.client_id) * ?, ?)

-- name: purge_update_counts
DELETE FROM update_counts WHERE minute < ?

-- name: purge_writes
DELETE FROM writes WHERE kind IN (?, ?, ?) AND at < ?

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
INSERT INTO copy_progress (table_name, source, after_key, copied, done) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (table_name) DO UPDATE SET source = excluded.source,
    after_key = excluded.after_key, copied = excluded.copied, done = excluded.done

-- name: sqlite_counters
SELECT name, seq FROM sqlite_sequence

-- name: sqlite_autoincrement_tables
SELECT name FROM sqlite_master WHERE type = 'table' AND upper(sql) LIKE '%AUTOINCREMENT%'

-- name: sqlite_raise_counter
UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?

-- name: sqlite_insert_counter
INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)

-- name: sqlite_move_copied_bodies
-- Copied units bring their lines in batch_units.body: they go where SQLite keeps them.
INSERT OR REPLACE INTO unit_bodies (batch_seq, unit_no, body)
SELECT batch_seq, unit_no, body FROM batch_units WHERE body IS NOT NULL

-- name: sqlite_clear_copied_bodies
UPDATE batch_units SET body = NULL WHERE body IS NOT NULL
