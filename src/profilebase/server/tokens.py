"""Authorization tokens of the profile API: issue, show, check, revoke.

A token's value is derived from the server secret and a random nonce
(``server_secret.py``); the store keeps the nonce, the value's SHA-256 and its
last four characters, so the server can show the active token again and the
database alone reveals none. Checking a token hashes what was presented, looks
the hash up and compares it in constant time. A fast hash is right here (unlike
the client secret's scrypt): the token has full entropy, so there is nothing to
brute-force, and it is checked on every request. Tokens made before tokens could
be shown (no nonce) are checked the same way and keep working until they expire.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from profilebase.errors import AccessDenied, ConfigError, Unauthenticated
from profilebase.models import Client, Token, from_ms, iso_ms
from profilebase.server.secret import ServerSecret
from profilebase.server.storage.base import Store

#: The one scope profilebase issues; Target's other one, debug_tools, has no use here.
PROFILE_API = "profile_api"


@dataclass(frozen=True)
class IssuedToken:
    """A new token: its value (shown once) and what is stored of it."""

    value: str
    token: Token


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Presented:
    """A token a request carries, and where (for the message if it is refused)."""

    where: str
    value: str


def issue(
    store: Store,
    client: Client,
    secret: ServerSecret,
    ttl_seconds: int,
    grace_seconds: int,
    now_ms: int,
) -> IssuedToken:
    """Create a token for ``client``; its older tokens are revoked after ``grace_seconds``."""
    nonce = secrets.token_hex(16)
    value = secret.derive(nonce)
    token = Token(
        client_id=client.id,
        token_hash=token_hash(value),
        last4=value[-4:],
        scope=PROFILE_API,
        created_at=from_ms(now_ms),
        expires_at=from_ms(now_ms + ttl_seconds * 1000),
        revoked_at=None,
        nonce=nonce,
    )
    store.create_token(token, now_ms + grace_seconds * 1000)
    return IssuedToken(value, token)


def reveal(secret: ServerSecret, token: Token) -> str | None:
    """The value of a stored token, or None for one made before tokens could be shown.

    The value is checked against the stored hash, so a server with another secret never
    shows a value that is not the token.
    """
    if token.nonce is None:
        return None
    value = secret.derive(token.nonce)
    if not hmac.compare_digest(token_hash(value), token.token_hash):
        raise ConfigError(
            "This server's secret is not the one the token was made with, so it cannot show "
            "it: give every server process of the database the same secret "
            "(docs/clients.md, The server secret)."
        )
    return value


def authorize(store: Store, client: Client, presented: Sequence[Presented], now_ms: int) -> None:
    """Refuse the call unless one of the ``presented`` tokens is a valid token of ``client``.

    A client that does not require authorization ignores any token. Otherwise no token
    is ``Unauthenticated`` (401); when none of them is valid the call is ``AccessDenied``
    (403), with a message saying of each token where it came from and what is wrong with
    it: not a token, another client's, revoked or expired.
    """
    if not client.require_auth:
        return
    how = (
        f"get one with POST /{client.code}/target/authentication/token"
        "?authorizationScope=profile_api (HTTP Basic with the client's API key and secret)"
    )
    if not presented:
        raise Unauthenticated(
            f"Client {client.code!r} requires an authorization token: send the header "
            f"`Authorization: Bearer <token>` (or `access_token: <token>`); {how}."
        )
    problems = []
    for credential in presented:
        problem = token_problem(store, client, credential.value, now_ms)
        if problem is None:
            return
        problems.append(f"the authorization token in {credential.where} {problem}")
    if len(problems) == 1:
        message = problems[0][0].upper() + problems[0][1:]
    else:
        message = f"No token the call carries is valid for client {client.code!r}: " + "; ".join(
            problems
        )
    raise AccessDenied(f"{message}; {how}.")


def token_problem(store: Store, client: Client, value: str, now_ms: int) -> str | None:
    """What is wrong with ``value`` as a token of ``client`` now, or None if it is valid."""
    digest = token_hash(value)
    token = store.find_token(digest)
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        return f"is not valid for client {client.code!r}"
    if token.client_id != client.id:
        return f"belongs to another client; it is not valid for client {client.code!r}"
    now = from_ms(now_ms)
    if token.revoked_at is not None and token.revoked_at <= now:
        return (
            f"was revoked at {iso_ms(token.revoked_at)} (a newer token replaced it, or an "
            "operator revoked it)"
        )
    if token.expires_at <= now:
        return f"expired at {iso_ms(token.expires_at)}"
    return None


def revoke(store: Store, client: Client, now_ms: int) -> int:
    """Revoke every token of ``client`` now; return how many were still valid."""
    return store.revoke_tokens(client.id, now_ms)
