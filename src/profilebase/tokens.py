"""Authorization tokens of the profile API: issue, check, revoke.

A token is 256 random bits, shown once; the store keeps its SHA-256 and its
last four characters. Checking a token hashes what was presented, looks the
hash up and compares it in constant time. A fast hash is right here (unlike the
client secret's scrypt): the token has full entropy, so there is nothing to
brute-force, and it is checked on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from profilebase.errors import AccessDenied, Unauthenticated
from profilebase.models import Client, Token, from_ms, iso_ms
from profilebase.storage.base import Store

#: The one scope profilebase issues; Target's other one, debug_tools, has no use here.
PROFILE_API = "profile_api"


@dataclass(frozen=True)
class IssuedToken:
    """A new token: its value (shown once) and what is stored of it."""

    value: str
    token: Token


def token_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def issue(
    store: Store, client: Client, ttl_seconds: int, grace_seconds: int, now_ms: int
) -> IssuedToken:
    """Create a token for ``client``; its older tokens are revoked after ``grace_seconds``."""
    value = secrets.token_urlsafe(32)
    token = Token(
        client_id=client.id,
        token_hash=token_hash(value),
        last4=value[-4:],
        scope=PROFILE_API,
        created_at=from_ms(now_ms),
        expires_at=from_ms(now_ms + ttl_seconds * 1000),
        revoked_at=None,
    )
    store.create_token(token, now_ms + grace_seconds * 1000)
    return IssuedToken(value, token)


def authorize(store: Store, client: Client, presented: str | None, now_ms: int) -> None:
    """Refuse the call unless ``presented`` is a valid token of ``client``.

    A client that does not require authorization ignores any token. Otherwise a
    missing token is ``Unauthenticated`` (401) and a wrong, another client's, revoked
    or expired one is ``AccessDenied`` (403), each with a message saying which.
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
    digest = token_hash(presented)
    token = store.find_token(digest)
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise AccessDenied(
            f"The authorization token is not valid for client {client.code!r}; {how}."
        )
    if token.client_id != client.id:
        raise AccessDenied(
            f"The authorization token belongs to another client; it is not valid for client "
            f"{client.code!r}."
        )
    now = from_ms(now_ms)
    if token.revoked_at is not None and token.revoked_at <= now:
        raise AccessDenied(
            f"The authorization token of client {client.code!r} was revoked at "
            f"{iso_ms(token.revoked_at)} (a newer token replaced it, or an operator revoked "
            f"it); {how}."
        )
    if token.expires_at <= now:
        raise AccessDenied(
            f"The authorization token of client {client.code!r} expired at "
            f"{iso_ms(token.expires_at)}; {how}."
        )


def revoke(store: Store, client: Client, now_ms: int) -> int:
    """Revoke every token of ``client`` now; return how many were still valid."""
    return store.revoke_tokens(client.id, now_ms)
