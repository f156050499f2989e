"""Who is calling: an OAuth application (app context) or an incoming webhook (no app context).

Token lookup follows ``auth.php``/``getAuthKey`` (facts §2.1): the ``Authorization: Bearer`` header first, then
``auth`` or ``access_token`` in the query, then in the body.  A webhook authenticates with the user id and the
secret code in the URL path and is *not* application context, which is what makes messageservice.* and
imconnector.* refuse it (facts §2.2).

**A token a refresh superseded.**  A refresh returns a new pair, and (old docs, facts §2.1) "both such query and
jointly issued access_token become invalid".  Which error the old access token then gets, the facts do not say,
so the answer is a **guess**, selectable per portal (``superseded_token_error``):

* ``invalid_token`` (default) — 401 "Unable to get application by token", documented by PySDK (facts §2.1,
  §4.5).  Reasoning: the portal does not decide on a token it has not cached; it asks the OAuth server
  (``rest.check``) and passes that server's error through (Src ``modules/rest/lib/oauth/auth.php``, ``check``),
  and PySDK's integration test against a live portal (``tests/integration/errors/test_errors.py``,
  ``test_error_bitrix_api_invalid_token``) expects ``invalid_token`` for an OAuth token the server does not know;
* ``NO_AUTH_FOUND`` — the docs' system-errors table: 401 "Wrong authorization data", "invalid access token or
  webhook code" (facts §4.5).  It is what the emulator answers for a token it never issued (and, per PySDK's
  tests, what a request with no auth at all gets);
* ``expired_token`` — what the emulator answered before.  But the source raises it only when the token's own
  ``expires`` has passed (``auth.php``, ``onRestCheckAuth``), which a superseded token's has not.

Not modelled: the portal caches a checked token's answer for up to an hour (Src ``oauth/storagecache.php``,
``CACHE_TTL = 3600``), so a superseded token it had already seen might go on working until its ``expires``.
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
    superseded = portal.options.superseded_token_error
    if record.superseded and superseded != "expired_token":
        raise errors.superseded_token(superseded)  # the OAuth server's verdict comes first (auth.php, check)
    installation = portal.installations.get(record.client_id)
    if installation is None or not installation.installed:
        raise errors.application_not_found()
    if record.revoked or record.superseded or registry.clock() >= record.expires_at:
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
