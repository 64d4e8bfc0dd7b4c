"""Clients (tenants): codes, Basic credentials, and the operations the CLI offers.

A client authenticates to the token endpoints with HTTP Basic ``api_key:secret``.
The API key is a public identifier; the secret is shown once, when it is made,
and only a salted scrypt hash of it is stored (docs/design.md#credentials says why).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from profilebase.errors import BadRequest, InvalidClientCode, UnknownClient
from profilebase.models import Client
from profilebase.server.settings import parse_limit
from profilebase.server.storage.base import Store

CODE = re.compile(r"[a-z0-9_-]{1,64}")
#: An Adobe organization id (IMS org), as Target's Administration > Implementation shows it.
ORG_ID = re.compile(r"[A-Za-z0-9]{1,64}@AdobeOrg")

#: Changes this process made to clients: ``generation()`` moves with each, so that the web
#: layer's cache of clients (web/client_cache.py) forgets its copies at once.
_changes = itertools.count(1)
_generation = 0

#: scrypt cost: 16 MiB of memory and some tens of milliseconds per check. The
#: parameters are stored with each hash, so raising them later keeps old hashes valid.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class Credentials:
    """What ``clients create`` and ``clients new-secret`` print once."""

    api_key: str
    secret: str


def generation() -> int:
    """How many changes to clients this process has made (create, change, new secret)."""
    return _generation


def changed() -> None:
    """Note that a client was changed in this process: cached copies are out of date."""
    global _generation
    _generation = next(_changes)


def validate_code(code: str) -> str:
    """Return ``code`` if it is 1-64 characters of a-z, 0-9, ``_`` and ``-``."""
    if not CODE.fullmatch(code):
        raise InvalidClientCode(code)
    return code


def validate_org_id(org_id: str) -> str:
    """Return ``org_id`` if it is an Adobe organization id, or empty (no organization)."""
    if org_id and not ORG_ID.fullmatch(org_id):
        raise BadRequest(
            f"Invalid organization id {org_id!r}: Adobe organization ids are letters and digits "
            "followed by @AdobeOrg, e.g. 65453EA95E702E8C0A495E27@AdobeOrg (Target shows yours "
            "under Administration > Implementation); an empty value removes it."
        )
    return org_id


def hash_secret(secret: str) -> str:
    """A salted scrypt hash, stored as ``scrypt$n$r$p$salt$hash`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    parts = [str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    return "scrypt$" + "$".join(parts)


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches a ``hash_secret`` result; compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            secret.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def check_credentials(client: Client, api_key: str, secret: str) -> bool:
    """Whether ``api_key:secret`` are this client's Basic credentials."""
    if client.api_key is None or client.secret_hash is None:
        return False
    key_matches = hmac.compare_digest(client.api_key.encode(), api_key.encode())
    # Always pay for the hash, so a wrong key and a wrong secret take as long.
    return verify_secret(secret, client.secret_hash) and key_matches


def new_credentials() -> Credentials:
    """A fresh API key (32 hex digits, like Adobe's) and a 256-bit secret."""
    return Credentials(api_key=secrets.token_hex(16), secret=secrets.token_urlsafe(32))


def create(store: Store, code: str, require_auth: bool, now_ms: int) -> tuple[Client, Credentials]:
    """Create client ``code`` with fresh credentials; the secret is only in the result."""
    credentials = new_credentials()
    client = store.create_client(
        validate_code(code),
        require_auth,
        credentials.api_key,
        hash_secret(credentials.secret),
        now_ms,
    )
    changed()
    return client, credentials


def new_secret(store: Store, code: str) -> tuple[Client, Credentials]:
    """Replace the client's API key and secret; the old ones stop working at once."""
    credentials = new_credentials()
    client = store.update_client(
        code, credentials=(credentials.api_key, hash_secret(credentials.secret))
    )
    changed()
    return client, credentials


def get(store: Store, code: str) -> Client:
    """The client ``code``, or ``UnknownClient``."""
    client = store.get_client(code)
    if client is None:
        raise UnknownClient(code)
    return client


def change(
    store: Store,
    code: str,
    *,
    require_auth: bool | None = None,
    disabled: bool | None = None,
    limits: Mapping[str, str] | None = None,
    org_id: str | None = None,
) -> Client:
    """Change a client; ``limits`` maps names to text values, an empty one removes the override;
    an empty ``org_id`` removes the client's organization id."""
    overrides: dict[str, int | float | str] | None = None
    if limits:
        overrides = dict(get(store, code).limits)
        for name, raw in limits.items():
            value = parse_limit(name, raw)
            if value is None:
                overrides.pop(name, None)
            else:
                overrides[name] = value
    client = store.update_client(
        code,
        require_auth=require_auth,
        disabled=disabled,
        limits=overrides,
        org_id=None if org_id is None else validate_org_id(org_id.strip()),
    )
    changed()
    return client


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
