"""The clients and tokens of the SQLite backend: ``SQLiteClients``, a base of ``SQLiteStore``.

It holds the tenant side of the Store protocol: clients with their credentials,
authorization switch and limit overrides, and their tokens (stored as hashes).
The connections are ``SQLiteStore``'s: the methods below that raise
``NotImplementedError`` are the store's own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from profilebase.errors import ClientExists, UnknownClient
from profilebase.models import Client, Token, from_ms


class SQLiteClients:
    """Clients and tokens, on the connections of the store that inherits this."""

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _one(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        raise NotImplementedError

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        raise NotImplementedError

    # -- clients -----------------------------------------------------------------------

    CLIENT_COLUMNS = "id, code, require_auth, disabled, limits, api_key, secret_hash"

    def _client(self, row: tuple[object, ...] | None) -> Client | None:
        if row is None:
            return None
        return Client(
            id=int(row[0]),  # type: ignore[call-overload]
            code=str(row[1]),
            require_auth=bool(row[2]),
            disabled=bool(row[3]),
            limits=json.loads(str(row[4])),
            api_key=None if row[5] is None else str(row[5]),
            secret_hash=None if row[6] is None else str(row[6]),
        )

    def get_client(self, code: str) -> Client | None:
        row = self._one(f"SELECT {self.CLIENT_COLUMNS} FROM clients WHERE code = ?", (code,))
        return self._client(row)

    def list_clients(self) -> list[Client]:
        rows = self._all(f"SELECT {self.CLIENT_COLUMNS} FROM clients ORDER BY code")
        return [client for client in map(self._client, rows) if client is not None]

    def create_client(
        self, code: str, require_auth: bool, api_key: str, secret_hash: str, now_ms: int
    ) -> Client:
        with self._write() as db:
            inserted = db.execute(
                "INSERT INTO clients (code, require_auth, api_key, secret_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (code) DO NOTHING",
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
        with self._write() as db:
            found = db.execute("SELECT 1 FROM clients WHERE code = ?", (code,)).fetchone()
            if found is None:
                raise UnknownClient(code)
            if changes:
                assignments = ", ".join(f"{name} = ?" for name in changes)
                db.execute(
                    f"UPDATE clients SET {assignments} WHERE code = ?", (*changes.values(), code)
                )
        client = self.get_client(code)
        assert client is not None
        return client

    # -- tokens ------------------------------------------------------------------------

    TOKEN_COLUMNS = "client_id, token_hash, last4, scope, created_at, expires_at, revoked_at"

    @staticmethod
    def _token(row: tuple[int, str, str, str, int, int, int | None] | None) -> Token | None:
        if row is None:
            return None
        client_id, token_hash, last4, scope, created, expires, revoked = row
        return Token(
            client_id=client_id,
            token_hash=token_hash,
            last4=last4,
            scope=scope,
            created_at=from_ms(created),
            expires_at=from_ms(expires),
            revoked_at=None if revoked is None else from_ms(revoked),
        )

    def create_token(self, token: Token, others_revoked_at_ms: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND scope = ? "
                "AND expires_at > ? AND (revoked_at IS NULL OR revoked_at > ?)",
                (
                    others_revoked_at_ms,
                    token.client_id,
                    token.scope,
                    others_revoked_at_ms,
                    others_revoked_at_ms,
                ),
            )
            db.execute(
                f"INSERT INTO tokens ({self.TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    token.client_id,
                    token.token_hash,
                    token.last4,
                    token.scope,
                    int(token.created_at.timestamp() * 1000),
                    int(token.expires_at.timestamp() * 1000),
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
                    "UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND expires_at > ? "
                    "AND (revoked_at IS NULL OR revoked_at > ?)",
                    (now_ms, client_id, now_ms, now_ms),
                ).rowcount
            )

    def ensure_client(self, code: str) -> Client:
        with self._write() as db:
            db.execute(
                "INSERT INTO clients (code, created_at) VALUES (?, strftime('%s','now') * 1000) "
                "ON CONFLICT (code) DO NOTHING",
                (code,),
            )
        client = self.get_client(code)
        assert client is not None
        return client
