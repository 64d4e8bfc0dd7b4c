-- Clients, authorization tokens and quotas: Basic credentials of the token endpoints,
-- the tokens themselves (hashes only), and the pacing of throttled ingestion.
-- Mirrors sql/sqlite/0002_clients_tokens.sql.

-- The API key is public; of the secret only a salted scrypt hash is kept.
ALTER TABLE clients ADD COLUMN api_key text;
ALTER TABLE clients ADD COLUMN secret_hash text;
CREATE UNIQUE INDEX clients_api_key ON clients (api_key) WHERE api_key IS NOT NULL;

-- A token is stored as the SHA-256 of its value; the value is shown once, at creation.
CREATE TABLE tokens (
    token_hash text PRIMARY KEY,
    client_id  bigint NOT NULL,
    last4      text NOT NULL,
    scope      text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    revoked_at bigint              -- may lie ahead: the grace period of a rotation
);
CREATE INDEX tokens_client ON tokens (client_id, scope, created_at);

-- While a client's ingest_rows_per_second applies, no unit of it is claimed before
-- not_before; each claim moves it on by the unit's rows divided by the rate.
CREATE TABLE ingest_pacing (
    client_id  bigint PRIMARY KEY,
    not_before bigint NOT NULL
);
