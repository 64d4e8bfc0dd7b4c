-- What Target's own clients need: the organization a client belongs to, tokens the server can
-- show again, and the fingerprint of the server secret those tokens are derived from.

-- The Adobe organization id (…@AdobeOrg) of a client: a request that names no client but
-- carries imsOrgId (the Delivery SDKs do) is for the client with that id.
ALTER TABLE clients ADD COLUMN org_id TEXT;
CREATE UNIQUE INDEX clients_org_id ON clients (org_id) WHERE org_id IS NOT NULL;

-- A token made since this migration is HMAC(server secret, nonce): the server can show it
-- again, the database alone cannot. NULL: an older token, kept as its hash only.
ALTER TABLE tokens ADD COLUMN nonce TEXT;

-- The fingerprint of the server secret (HMAC of a fixed text under it, never the secret):
-- a server process started with another secret refuses to start instead of making tokens
-- the others cannot show.
CREATE TABLE server_secret (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
