-- Clients, authorization tokens and quotas: Basic credentials of the token endpoints,
-- the tokens themselves (hashes only), and the pacing of throttled ingestion.

-- The API key is public; of the secret only a salted scrypt hash is kept.
ALTER TABLE clients ADD COLUMN api_key TEXT;
ALTER TABLE clients ADD COLUMN secret_hash TEXT;
CREATE UNIQUE INDEX clients_api_key ON clients (api_key) WHERE api_key IS NOT NULL;

-- A token is stored as the SHA-256 of its value; the value is shown once, at creation.
-- Expired and revoked tokens stay a while so that a refusal can say which it was.
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    client_id  INTEGER NOT NULL,
    last4      TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER              -- may lie ahead: the grace period of a rotation
) WITHOUT ROWID;
CREATE INDEX tokens_client ON tokens (client_id, scope, created_at);

-- While a client's ingest_rows_per_second applies, no unit of it is claimed before
-- not_before; each claim moves it on by the unit's rows divided by the rate.
CREATE TABLE ingest_pacing (
    client_id  INTEGER PRIMARY KEY,
    not_before INTEGER NOT NULL
);
