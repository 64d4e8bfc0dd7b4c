"""The server secret: the key every token's value is derived from.

A token's value is ``base64url(HMAC-SHA256(secret, "profilebase token " + nonce))``.
The database keeps the nonce and the SHA-256 of the value, so the server can show a
token again (``GET`` on the token endpoint) while the database alone reveals none.

Where the secret comes from, in this order:

1. the ``secret`` setting (``PROFILEBASE_SECRET``), 32 characters or more;
2. the file ``secret_file`` names, by default ``profilebase.secret`` beside the SQLite
   database (``./profilebase-data/`` for PostgreSQL). On first start the file is
   created with 256 random bits, readable by its owner only.

The database records the secret's fingerprint (an HMAC of a fixed text, which reveals
nothing of the secret). A process started with another secret refuses to start, so that
several server processes of one PostgreSQL database cannot drift apart silently.
``rotate`` replaces the secret on purpose and revokes every token made with the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from profilebase.errors import ConfigError, DatabaseUnavailable, StorageFull
from profilebase.server.settings import Settings
from profilebase.server.storage import sqlite_path
from profilebase.server.storage.base import Store

log = logging.getLogger("profilebase.secret")

MIN_LENGTH = 32
FILE_NAME = "profilebase.secret"
DEFAULT_FOLDER = "profilebase-data"
ENV_NAME = "PROFILEBASE_SECRET"
HOW_TO_MAKE = "python3 -c 'import secrets; print(secrets.token_hex(32))'"


@dataclass(frozen=True)
class ServerSecret:
    """The secret's bytes and where they came from (for messages)."""

    key: bytes = field(repr=False)
    #: ``PROFILEBASE_SECRET`` or the file's path.
    source: str
    #: This process created the file just now.
    created: bool = False

    @property
    def fingerprint(self) -> str:
        """Names the secret in the database without revealing it."""
        return hmac.new(self.key, b"profilebase secret fingerprint", hashlib.sha256).hexdigest()

    def derive(self, nonce: str) -> str:
        """The value of the token with this nonce: 256 bits, URL-safe base64, 43 characters."""
        digest = hmac.new(self.key, b"profilebase token " + nonce.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def secret_path(settings: Settings) -> Path:
    """The secret file: ``secret_file``, else beside the SQLite database file."""
    if settings.secret_file:
        return Path(settings.secret_file)
    if settings.database.split(":", 1)[0].lower() == "sqlite":
        database = sqlite_path(settings.database)
        if database != ":memory:":
            return Path(database).parent / FILE_NAME
    return Path(DEFAULT_FOLDER) / FILE_NAME


def load(settings: Settings) -> ServerSecret:
    """The secret of these settings; the file is created if it does not exist yet."""
    if settings.secret:
        return ServerSecret(checked(settings.secret, ENV_NAME), ENV_NAME)
    path = secret_path(settings)
    try:
        return ServerSecret(checked(path.read_text(), str(path)), str(path))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise unreadable(path, exc) from None
    value = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return ServerSecret(checked(path.read_text(), str(path)), str(path))
    except OSError as exc:
        raise unreadable(path, exc) from None
    with os.fdopen(descriptor, "w") as out:
        out.write(value + "\n")
        out.flush()
        os.fsync(out.fileno())
    return ServerSecret(value.encode(), str(path), created=True)


def checked(text: str, source: str) -> bytes:
    value = text.strip()
    if len(value) < MIN_LENGTH:
        raise ConfigError(
            f"The server secret in {source} is {len(value)} characters long; it needs at least "
            f"{MIN_LENGTH}. Make one with {HOW_TO_MAKE}."
        )
    return value.encode()


def unreadable(path: Path, exc: Exception) -> ConfigError:
    reason = getattr(exc, "strerror", None) or "it is not text"
    return ConfigError(
        f"Cannot use the server secret file {path}: {reason}. Set secret_file "
        f"(PROFILEBASE_SECRET_FILE) to a file this process may read and write, or give the "
        f"secret itself in {ENV_NAME}."
    )


def open_secret(settings: Settings, store: Store, now_ms: int) -> ServerSecret:
    """The secret, once the database confirms it is the one its tokens are made with.

    The first process to start on a database records the fingerprint of its secret.
    """
    secret = load(settings)
    try:
        recorded = store.claim_secret(secret.fingerprint, now_ms)
    except (DatabaseUnavailable, StorageFull) as exc:
        # Serve what can be served (reads; /readyz says what is wrong); the next start checks.
        log.warning("the server secret's fingerprint could not be recorded yet: %s", exc.message)
        return secret
    if recorded != secret.fingerprint:
        created = (
            f" (no secret file was at {secret.source}, so a new one was just created there)"
            if secret.created
            else ""
        )
        raise ConfigError(
            f"The server secret from {secret.source} is not the one this database's tokens "
            f"are made with{created}. Every process of one database needs the same secret: "
            f"copy the secret file of the first server here (or set {ENV_NAME} to the same "
            "value everywhere). To replace the secret on purpose, run `profilebase secret "
            "rotate`; it revokes every token."
        )
    return secret


def rotate(settings: Settings, store: Store, now_ms: int) -> tuple[ServerSecret, int]:
    """Replace the secret: a new random one in the secret file, or the value now in
    ``PROFILEBASE_SECRET``. Every token still valid is revoked (none could be shown again,
    and the old secret may have leaked); returns the new secret and how many were revoked.
    """
    if settings.secret:
        secret = ServerSecret(checked(settings.secret, ENV_NAME), ENV_NAME)
    else:
        path = secret_path(settings)
        value = secrets.token_hex(32)
        fresh = path.with_name(path.name + ".new")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh.unlink(missing_ok=True)
            descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(value + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(fresh, path)
        except OSError as exc:
            raise unreadable(path, exc) from None
        secret = ServerSecret(value.encode(), str(path), created=True)
    store.claim_secret(secret.fingerprint, now_ms, replace=True)
    return secret, store.revoke_all_tokens(now_ms)
