-- What Target's own clients need: the organization a client belongs to, tokens the server can
-- show again, and the fingerprint of the server secret those tokens are derived from.
-- Mirrors sql/sqlite/0006_target_clients.sql.

-- The Adobe organization id (…@AdobeOrg) of a client, matched against imsOrgId.
ALTER TABLE clients ADD COLUMN org_id text;
CREATE UNIQUE INDEX clients_org_id ON clients (org_id) WHERE org_id IS NOT NULL;

-- A token made since this migration is HMAC(server secret, nonce); NULL: an older token.
ALTER TABLE tokens ADD COLUMN nonce text;

-- The fingerprint of the server secret, shared by every process of the database.
CREATE TABLE server_secret (
    id          integer PRIMARY KEY CHECK (id = 1),
    fingerprint text NOT NULL,
    created_at  bigint NOT NULL
);
