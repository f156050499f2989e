"""The operator's console's sessions: a signed cookie, no server-side state (every app instance reads it).

`key_id.expires.nonce.mac`: the admin key's id, an expiry, a random nonce, and an HMAC over the three under a
key derived from the admin key's digest and the app's client_secret. So a session ends when it expires or when
its API key's entry leaves B24Q_API_KEYS, and forging one takes both settings. The CSRF token of a session is
another HMAC of its nonce: every form carries it and every POST is checked against it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from edges.http.apikeys import ApiKey

COOKIE = "b24q_console"
#: How long a sign-in lasts.
LIFETIME = 8 * 3600


@dataclass(frozen=True)
class Session:
    key_id: str
    expires: int
    csrf: str


def _signing_key(key: ApiKey, secret: bytes) -> bytes:
    return hmac.new(secret, b"b24q console session\x00" + key.digest, hashlib.sha256).digest()


def _mac(signing: bytes, text: str) -> str:
    return hmac.new(signing, text.encode(), hashlib.sha256).hexdigest()


def _csrf(signing: bytes, nonce: str) -> str:
    return _mac(signing, f"csrf\x00{nonce}")[:40]


def issue(key: ApiKey, secret: bytes, now: float) -> tuple[str, Session]:
    """A new session for an admin key: the cookie's value and the session."""
    expires = int(now) + LIFETIME
    nonce = secrets.token_urlsafe(18)
    signing = _signing_key(key, secret)
    body = f"{key.id}.{expires}.{nonce}"
    return f"{body}.{_mac(signing, body)}", Session(key.id, expires, _csrf(signing, nonce))


def read(cookie: str, keys: Iterable[ApiKey], secret: bytes, now: float) -> Session | None:
    """The session a cookie carries, or None: malformed, forged, expired, or its key is no longer an admin key."""
    parts = cookie.split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    key_id, expires, nonce, mac = parts
    if int(expires) <= now:
        return None
    for key in keys:
        if key.admin and key.id == key_id:
            signing = _signing_key(key, secret)
            if hmac.compare_digest(_mac(signing, f"{key_id}.{expires}.{nonce}"), mac):
                return Session(key_id, int(expires), _csrf(signing, nonce))
    return None


def csrf_ok(session: Session, presented: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), presented.encode())
