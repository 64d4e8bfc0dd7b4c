"""Dashboard logins: a signed cookie holds who is logged in, and guards the forms.

The cookie is a small JSON object signed with itsdangerous (HMAC, with the time it
was made), so the browser can read it but not forge or prolong it:

- ``csrf``: a random token every form of the session must send back (a hidden
  field), checked in constant time: another site can make a browser post a form,
  but cannot read the token;
- ``admin``: set after the admin password was given, to a fingerprint of that
  password, so that changing ``admin_password`` ends every admin session;
- ``client`` and ``token``: a client's code and the SHA-256 of the profile API token
  it logged in with, checked again on every page, so that revoking the token (or
  its expiry, or disabling the client) ends the session.

The cookie is ``HttpOnly``, ``SameSite=Strict``, limited to ``/ui`` and marked
``Secure`` on HTTPS; a session lasts ``MAX_AGE`` seconds at most.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from profilebase.errors import AccessDenied

COOKIE = "profilebase_session"
PATH = "/ui"
#: A login lasts 12 hours.
MAX_AGE = 12 * 3600
SALT = "profilebase.dashboard.session"
#: Longest cookie value read; a signed session is a few hundred bytes.
MAX_COOKIE = 4096


class Sessions:
    """Reads and writes the signed session cookie with the app's key."""

    def __init__(self, secret: str) -> None:
        # Without a configured key, a random one: logins end when the process restarts.
        self.key = secret or secrets.token_hex(32)
        self.serializer = URLSafeTimedSerializer(self.key, salt=SALT)

    def read(self, request: Request) -> dict[str, Any]:
        """The session of the request, or an empty one (missing, forged, too old)."""
        raw = request.cookies.get(COOKIE, "")
        if not raw or len(raw) > MAX_COOKIE:
            return {}
        try:
            data = self.serializer.loads(raw, max_age=MAX_AGE)
        except BadSignature:  # includes an expired signature
            return {}
        return data if isinstance(data, dict) else {}

    def current(self, request: Request) -> tuple[dict[str, Any], bool]:
        """The request's session, or a new one with a CSRF token; True if it is new (its
        cookie must be set on the response)."""
        session = self.read(request)
        if "csrf" in session:
            return session, False
        return {"csrf": new_csrf()}, True

    def write(self, request: Request, response: Response, data: dict[str, Any]) -> None:
        response.set_cookie(
            COOKIE,
            self.serializer.dumps(data),
            max_age=MAX_AGE,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")

    def admin_fingerprint(self, password: str) -> str:
        """A value that stands for the admin password in a session, useless without the key."""
        return hmac.new(self.key.encode(), password.encode(), hashlib.sha256).hexdigest()[:32]


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def check_csrf(request: Request, session: dict[str, Any], sent: object) -> None:
    """Refuse a form post that does not carry the session's token, or comes from elsewhere."""
    origin = request.headers.get("origin")
    # Hosts only: behind a proxy that ends TLS the scheme seen here is not the browser's.
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise AccessDenied("This form was sent from another site; open the dashboard and retry.")
    expected = session.get("csrf")
    if (
        not isinstance(expected, str)
        or not isinstance(sent, str)
        or not hmac.compare_digest(expected.encode(), sent.encode())
    ):
        raise AccessDenied(
            "The form has expired or did not come from this dashboard; reload the page and "
            "send it again."
        )
