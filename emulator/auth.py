"""Who is calling: an OAuth application (app context) or an incoming webhook (no app context).

Token lookup follows ``auth.php``/``getAuthKey`` (facts §2.1): the ``Authorization: Bearer`` header first, then
``auth`` or ``access_token`` in the query, then in the body.  A webhook authenticates with the user id and the
secret code in the URL path and is *not* application context, which is what makes messageservice.* and
imconnector.* refuse it (facts §2.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import errors
from .state import Portal, Registry

OAUTH = "oauth"
WEBHOOK = "webhook"
AUTH_PARAMS = ("auth", "access_token")


@dataclass(frozen=True)
class CallContext:
    """The caller of one REST call (and of every sub-call of a batch: auth carries into sub-calls)."""

    portal: Portal
    auth_type: str
    client_id: str | None
    user_id: int
    subject: str  # what the operating limit is counted per: the app or the webhook

    @property
    def app_context(self) -> bool:
        return self.auth_type == OAUTH and bool(self.client_id)


def _as_token(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    return None


def find_token(headers: Mapping[str, str], query: Mapping[str, Any], body: Mapping[str, Any]) -> str | None:
    """The access token in the documented precedence order, or None."""
    header = headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
        if token:
            return token
    for source in (query, body):
        for name in AUTH_PARAMS:
            found = _as_token(source.get(name))
            if found:
                return found
    return None


def authenticate_token(registry: Registry, portal: Portal, token: str | None) -> CallContext:
    """Resolve an OAuth access token for ``portal``, raising the error Bitrix would send."""
    if not token:
        raise errors.no_auth_found()
    record = registry.access_tokens.get(token)
    if record is None or record.domain != portal.domain:
        raise errors.no_auth_found()
    installation = portal.installations.get(record.client_id)
    if installation is None or not installation.installed:
        raise errors.application_not_found()
    if record.revoked or registry.clock() >= record.expires_at:
        raise errors.expired_token()
    return CallContext(
        portal=portal,
        auth_type=OAUTH,
        client_id=record.client_id,
        user_id=record.user_id,
        subject=f"app:{record.client_id}",
    )


def authenticate_webhook(portal: Portal, user_id: int, code: str) -> CallContext:
    hook = portal.webhooks.get((user_id, code))
    if hook is None:
        raise errors.no_auth_found()
    return CallContext(
        portal=portal, auth_type=WEBHOOK, client_id=None, user_id=user_id, subject=f"webhook:{user_id}:{code}"
    )
