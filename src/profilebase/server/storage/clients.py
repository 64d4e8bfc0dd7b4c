"""Clients and tokens: ``ClientQueries``, the tenant side of every backend's store.

Clients with their credentials, authorization switch, organization id and limit
overrides; their tokens (stored as hashes, with the nonce the server secret derives
each value from); and the fingerprint of that secret. The queries are the backend's
named ones; the connections are the store's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from profilebase.errors import ClientExists, OrganizationTaken, UnknownClient
from profilebase.models import Client, Token, from_ms, now_ms
from profilebase.server.storage.queries import SharedQueries
from profilebase.server.storage.records import client_from_row


class ClientQueries(SharedQueries):
    """Clients and tokens, on the connections of the store that inherits this."""

    # -- clients -----------------------------------------------------------------------

    def get_client(self, code: str) -> Client | None:
        row = self._one(self.sql["client_by_code"], (code,))
        return client_from_row(row)

    def find_client_by_org(self, org_id: str) -> Client | None:
        row = self._one(self.sql["client_by_org"], (org_id,))
        return client_from_row(row)

    def list_clients(self) -> list[Client]:
        rows = self._all(self.sql["list_clients"])
        return [client for client in map(client_from_row, rows) if client is not None]

    def create_client(
        self, code: str, require_auth: bool, api_key: str, secret_hash: str, now_ms: int
    ) -> Client:
        with self._write() as db:
            inserted = db.execute(
                self.sql["insert_client"],
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
        # None leaves a field as it is; org_id changes only with set_org.
        changes = {
            "require_auth": None if require_auth is None else int(require_auth),
            "disabled": None if disabled is None else int(disabled),
            "limits": None if limits is None else json.dumps(dict(limits), sort_keys=True),
            "api_key": None if credentials is None else credentials[0],
            "secret_hash": None if credentials is None else credentials[1],
        }
        with self._write() as db:
            found = db.execute(self.sql["client_exists"], (code,)).fetchone()
            if found is None:
                raise UnknownClient(code)
            if org_id:
                owner = db.execute(self.sql["organization_owner"], (org_id, code)).fetchone()
                if owner is not None:
                    raise OrganizationTaken(org_id, str(owner[0]))
            if org_id is not None or any(v is not None for v in changes.values()):
                org = {"set_org": org_id is not None, "org_id": org_id or None}
                db.execute(self.sql["update_client"], {**changes, **org, "code": code})
        client = self.get_client(code)
        assert client is not None
        return client

    # -- tokens ------------------------------------------------------------------------

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
                self.sql["revoke_other_tokens"],
                (
                    others_revoked_at_ms,
                    token.client_id,
                    token.scope,
                    others_revoked_at_ms,
                    others_revoked_at_ms,
                ),
            )
            db.execute(
                self.sql["insert_token"],
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
        row = self._one(self.sql["token_by_hash"], (token_hash,))
        return self._token(row)

    def active_token(self, client_id: int, scope: str, now_ms: int) -> Token | None:
        row = self._one(self.sql["active_token"], (client_id, scope, now_ms, now_ms))
        return self._token(row)

    def revoke_tokens(self, client_id: int, now_ms: int) -> int:
        with self._write() as db:
            return int(
                db.execute(
                    self.sql["revoke_client_tokens"],
                    (now_ms, client_id, now_ms, now_ms),
                ).rowcount
            )

    def revoke_all_tokens(self, now_ms: int) -> int:
        with self._write() as db:
            return int(
                db.execute(
                    self.sql["revoke_all_tokens"],
                    (now_ms, now_ms, now_ms),
                ).rowcount
            )

    # -- the server secret ---------------------------------------------------------------

    def claim_secret(self, fingerprint: str, now_ms: int, replace: bool = False) -> str:
        if not replace:  # a read first: a database that cannot be written still starts
            with self._read() as db:
                row = db.execute(self.sql["server_secret"]).fetchone()
            if row is not None:
                return str(row[0])
        with self._write() as db:
            if replace:
                db.execute(self.sql["forget_server_secret"])
            db.execute(self.sql["record_server_secret"], (fingerprint, now_ms))
            return str(db.execute(self.sql["server_secret"]).fetchone()[0])

    def ensure_client(self, code: str) -> Client:
        with self._write() as db:
            db.execute(self.sql["ensure_client"], (code, now_ms()))
        client = self.get_client(code)
        assert client is not None
        return client

    # -- batches -----------------------------------------------------------------------
