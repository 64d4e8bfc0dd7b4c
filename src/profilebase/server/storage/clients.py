"""Clients and tokens: ``ClientQueries``, the tenant side of every backend's store.

Clients with their credentials, authorization switch, organization id and limit
overrides; their tokens (stored as hashes, with the nonce the server secret derives
each value from); and the fingerprint of that secret. The SQL is the same on SQLite and PostgreSQL
(``SharedQueries._sql`` adapts the placeholders); the connections are the store's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from profilebase.errors import ClientExists, OrganizationTaken, UnknownClient
from profilebase.models import Client, Token, from_ms, now_ms
from profilebase.server.storage.queries import SharedQueries
from profilebase.server.storage.records import CLIENT_COLUMNS, client_from_row


class ClientQueries(SharedQueries):
    """Clients and tokens, on the connections of the store that inherits this."""

    # -- clients -----------------------------------------------------------------------

    def get_client(self, code: str) -> Client | None:
        row = self._one(f"SELECT {CLIENT_COLUMNS} FROM clients WHERE code = ?", (code,))
        return client_from_row(row)

    def find_client_by_org(self, org_id: str) -> Client | None:
        row = self._one(f"SELECT {CLIENT_COLUMNS} FROM clients WHERE org_id = ?", (org_id,))
        return client_from_row(row)

    def list_clients(self) -> list[Client]:
        rows = self._all(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY code")
        return [client for client in map(client_from_row, rows) if client is not None]

    def create_client(
        self, code: str, require_auth: bool, api_key: str, secret_hash: str, now_ms: int
    ) -> Client:
        with self._write() as db:
            inserted = db.execute(
                self._sql(
                    "INSERT INTO clients (code, require_auth, api_key, secret_hash, created_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (code) DO NOTHING"
                ),
                (code, int(require_auth), api_key, secret_hash, now_ms),
            ).rowcount
        if not inserted:
            raise ClientExists(code)
        client = self.get_client(code)
        assert client is not None
        return client

    def update_client(
        self,
        code: str,
        *,
        require_auth: bool | None = None,
        disabled: bool | None = None,
        limits: Mapping[str, int | float | str] | None = None,
        credentials: tuple[str, str] | None = None,
        org_id: str | None = None,
    ) -> Client:
        changes: dict[str, object] = {}
        if require_auth is not None:
            changes["require_auth"] = int(require_auth)
        if disabled is not None:
            changes["disabled"] = int(disabled)
        if limits is not None:
            changes["limits"] = json.dumps(dict(limits), sort_keys=True)
        if credentials is not None:
            changes["api_key"], changes["secret_hash"] = credentials
        if org_id is not None:
            changes["org_id"] = org_id or None
        with self._write() as db:
            found = db.execute(
                self._sql("SELECT 1 FROM clients WHERE code = ?"), (code,)
            ).fetchone()
            if found is None:
                raise UnknownClient(code)
            if org_id:
                owner = db.execute(
                    self._sql("SELECT code FROM clients WHERE org_id = ? AND code <> ?"),
                    (org_id, code),
                ).fetchone()
                if owner is not None:
                    raise OrganizationTaken(org_id, str(owner[0]))
            if changes:
                assignments = ", ".join(f"{name} = ?" for name in changes)
                db.execute(
                    self._sql(f"UPDATE clients SET {assignments} WHERE code = ?"),
                    (*changes.values(), code),
                )
        client = self.get_client(code)
        assert client is not None
        return client

    # -- tokens ------------------------------------------------------------------------

    TOKEN_COLUMNS = "client_id, token_hash, last4, scope, created_at, expires_at, revoked_at, nonce"

    @staticmethod
    def _token(
        row: tuple[int, str, str, str, int, int, int | None, str | None] | None,
    ) -> Token | None:
        if row is None:
            return None
        client_id, token_hash, last4, scope, created, expires, revoked, nonce = row
        return Token(
            client_id=client_id,
            token_hash=token_hash,
            last4=last4,
            scope=scope,
            created_at=from_ms(created),
            expires_at=from_ms(expires),
            revoked_at=None if revoked is None else from_ms(revoked),
            nonce=nonce,
        )

    def create_token(self, token: Token, others_revoked_at_ms: int) -> None:
        with self._write() as db:
            db.execute(
                self._sql(
                    "UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND scope = ? "
                    "AND expires_at > ? AND (revoked_at IS NULL OR revoked_at > ?)"
                ),
                (
                    others_revoked_at_ms,
                    token.client_id,
                    token.scope,
                    others_revoked_at_ms,
                    others_revoked_at_ms,
                ),
            )
            db.execute(
                self._sql(
                    f"INSERT INTO tokens ({self.TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)"
                ),
                (
                    token.client_id,
                    token.token_hash,
                    token.last4,
                    token.scope,
                    int(token.created_at.timestamp() * 1000),
                    int(token.expires_at.timestamp() * 1000),
                    token.nonce,
                ),
            )

    def find_token(self, token_hash: str) -> Token | None:
        row = self._one(
            f"SELECT {self.TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,)
        )
        return self._token(row)

    def active_token(self, client_id: int, scope: str, now_ms: int) -> Token | None:
        row = self._one(
            f"SELECT {self.TOKEN_COLUMNS} FROM tokens WHERE client_id = ? AND scope = ? "
            "AND expires_at > ? AND (revoked_at IS NULL OR revoked_at > ?) "
            "ORDER BY created_at DESC LIMIT 1",
            (client_id, scope, now_ms, now_ms),
        )
        return self._token(row)

    def revoke_tokens(self, client_id: int, now_ms: int) -> int:
        with self._write() as db:
            return int(
                db.execute(
                    self._sql(
                        "UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND expires_at > ? "
                        "AND (revoked_at IS NULL OR revoked_at > ?)"
                    ),
                    (now_ms, client_id, now_ms, now_ms),
                ).rowcount
            )

    def revoke_all_tokens(self, now_ms: int) -> int:
        with self._write() as db:
            return int(
                db.execute(
                    self._sql(
                        "UPDATE tokens SET revoked_at = ? WHERE expires_at > ? "
                        "AND (revoked_at IS NULL OR revoked_at > ?)"
                    ),
                    (now_ms, now_ms, now_ms),
                ).rowcount
            )

    # -- the server secret ---------------------------------------------------------------

    def claim_secret(self, fingerprint: str, now_ms: int, replace: bool = False) -> str:
        if not replace:  # a read first: a database that cannot be written still starts
            with self._read() as db:
                row = db.execute(self._sql("SELECT fingerprint FROM server_secret")).fetchone()
            if row is not None:
                return str(row[0])
        with self._write() as db:
            if replace:
                db.execute(self._sql("DELETE FROM server_secret"))
            db.execute(
                self._sql(
                    "INSERT INTO server_secret (id, fingerprint, created_at) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                (fingerprint, now_ms),
            )
            return str(db.execute(self._sql("SELECT fingerprint FROM server_secret")).fetchone()[0])

    def ensure_client(self, code: str) -> Client:
        with self._write() as db:
            db.execute(
                self._sql(
                    "INSERT INTO clients (code, created_at) VALUES (?, ?) "
                    "ON CONFLICT (code) DO NOTHING"
                ),
                (code, now_ms()),
            )
        client = self.get_client(code)
        assert client is not None
        return client

    # -- batches -----------------------------------------------------------------------
