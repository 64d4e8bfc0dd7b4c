"""Errors of profilebase.

Every error the user can cause is a ``ProfilebaseError``; its ``status`` is the
HTTP status the web layer answers with and its message is one clear sentence
saying what is wrong and how to fix it. The docstring of each class is its
default message.

    ProfilebaseError
    ├── ConfigError            bad setting or database URL
    ├── InvalidClientCode      400: a client code outside 1-64 of a-z 0-9 _ -
    ├── ClientExists           409: `clients create` of a code that is taken
    ├── OrganizationTaken      409: `clients set --org-id` of an id another client has
    ├── UnknownClient          404: no such client code
    ├── NotFound               404: no such batch, profile or token
    ├── Unauthenticated        401: no credentials where they are required
    ├── AccessDenied           403: credentials wrong, expired, revoked or another client's
    │   └── ClientDisabled     403: the client is disabled
    ├── BadRequest             400: a parameter is missing or invalid
    │   ├── RequestTooLarge    413: a request, or the profile it would make, is too large
    │   ├── UnsupportedEncoding  415: a Content-Encoding other than gzip or identity
    │   └── BatchRejected      400: the batch body is malformed
    │       └── BatchTooLarge  413: too many bytes or rows
    ├── IdempotencyConflict    409: an Idempotency-Key was already used for another body
    ├── BatchFinished          409: a batch to cancel has already finished
    ├── CopyRefused            `profilebase copy` cannot start or go on (target not empty, ...)
    ├── QuotaExceeded          429: a quota or rate is used up (carries retry_after)
    │   └── TooManyFailures    429: too many failed authentications from one address
    ├── StorageError           500: the database failed in a way the user cannot fix
    │   ├── DatabaseUnavailable  503: the database cannot be reached now (carries Retry-After)
    │   └── StorageFull          507: the database has no room to write (disk full)
    └── ClientError            the client side (SDK and `push`): talking to a server failed
        ├── InputError         the input file cannot be read or mapped to a batch
        ├── RemoteRejected     the server refused the request (4xx; carries http_status)
        ├── RemoteUnavailable  no usable answer after every retry (network, 429, 5xx)
        └── BatchStuck         the server reports a batch as stuck

The server raises the first group; ``profilebase.Client`` raises ``ClientError``
subclasses, and ``BatchRejected`` when its own check of a header fails, the same
check the server makes. ``headers`` holds extra HTTP headers the reply carries
(Retry-After, WWW-Authenticate, the X-RateLimit-* quota headers).
"""

from __future__ import annotations


class ProfilebaseError(Exception):
    """Something went wrong in profilebase."""

    status = 500

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.headers: dict[str, str] = {}
        super().__init__(self.message)


class ConfigError(ProfilebaseError):
    """The configuration is invalid."""

    status = 500


class UnknownClient(ProfilebaseError):
    """Unknown client code."""

    status = 404

    #: Characters of the name sent that the message quotes: a code has at most 64.
    QUOTED = 64

    def __init__(self, client: str) -> None:
        self.client = client
        shown = repr(client)
        if len(client) > self.QUOTED:  # a caller may send 60,000: not echoed back in full
            shown = (
                f"{client[: self.QUOTED]!r}… ({len(client):,} characters; a client code has at "
                f"most {self.QUOTED})"
            )
        super().__init__(
            f"Unknown client {shown}: no client with this code exists on this server. "
            "Check the client code in the URL (the fresh database has the client `demo`)."
        )


class InvalidClientCode(ProfilebaseError):
    """Invalid client code."""

    status = 400

    def __init__(self, code: str) -> None:
        super().__init__(
            f"Invalid client code {code!r}: use 1 to 64 characters of lower-case letters a-z, "
            "digits 0-9, `_` and `-`."
        )


class ClientExists(ProfilebaseError):
    """The client exists already."""

    status = 409

    def __init__(self, code: str) -> None:
        super().__init__(
            f"Client {code!r} exists already; `profilebase clients show {code}` shows it."
        )


class OrganizationTaken(ProfilebaseError):
    """The organization id belongs to another client."""

    status = 409

    def __init__(self, org_id: str, owner: str) -> None:
        super().__init__(
            f"Organization id {org_id!r} belongs to client {owner!r} already: a request that "
            "carries it must find one client. Remove it there first with "
            f"`profilebase clients set {owner} --org-id ''`."
        )


class NotFound(ProfilebaseError):
    """Not found."""

    status = 404


class Unauthenticated(ProfilebaseError):
    """Authentication is required."""

    status = 401

    def __init__(self, message: str, scheme: str = "Bearer") -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = f'{scheme} realm="profilebase"'


class AccessDenied(ProfilebaseError):
    """Access denied."""

    status = 403


class ClientDisabled(AccessDenied):
    """The client is disabled."""

    def __init__(self, code: str) -> None:
        super().__init__(
            f"Client {code!r} is disabled: the server refuses every call for it until an "
            f"operator runs `profilebase clients enable {code}`."
        )


class BadRequest(ProfilebaseError):
    """The request is invalid."""

    status = 400


class RequestTooLarge(BadRequest):
    """The request is too large."""

    status = 413


class UnsupportedEncoding(BadRequest):
    """The request body's Content-Encoding is not supported; send it uncompressed or as gzip."""

    status = 415


class BatchRejected(BadRequest):
    """The batch is malformed."""

    status = 400


class BatchTooLarge(BatchRejected):
    """The batch is too large."""

    status = 413


class QuotaExceeded(ProfilebaseError):
    """A quota is used up."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.headers["Retry-After"] = str(self.retry_after)


class TooManyFailures(QuotaExceeded):
    """Too many failed authentications from this address."""


class IdempotencyConflict(ProfilebaseError):
    """This Idempotency-Key was already used for a different batch body."""

    status = 409


class BatchFinished(ProfilebaseError):
    """The batch has already finished: there is nothing left to cancel."""

    status = 409


class CopyRefused(ProfilebaseError):
    """The copy cannot start or go on."""

    status = 409


class StorageError(ProfilebaseError):
    """The database failed."""

    status = 500

    def __init__(self, message: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        #: What the database said: for the log and the operator's command line, never for
        #: an HTTP reply (it may name files, hosts, SQL or library classes).
        self.detail = detail


class DatabaseUnavailable(StorageError):
    """The database is unavailable right now; nothing was changed. Try again in a few seconds."""

    status = 503

    def __init__(self, message: str | None = None, retry_after: int = 5, detail: str = "") -> None:
        super().__init__(message, detail)
        self.retry_after = retry_after
        self.headers["Retry-After"] = str(retry_after)


class StorageFull(StorageError):
    """The database has no room to write; nothing was changed. Free disk space and try again."""

    status = 507


class ClientError(ProfilebaseError):
    """The request to the profile server failed."""


class InputError(ClientError):
    """The input cannot be read."""


class RemoteRejected(ClientError):
    """The server refused the request."""

    def __init__(self, message: str, http_status: int) -> None:
        self.http_status = http_status
        super().__init__(message)


class RemoteUnavailable(ClientError):
    """The server could not be reached or did not answer usefully, even after retries."""


class BatchStuck(ClientError):
    """The server reports the batch as stuck."""
