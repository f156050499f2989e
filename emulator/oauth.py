"""The OAuth server (``oauth.bitrix.info``): refresh-token grants with single-use rotating refresh tokens.

Facts §2.1: a refresh returns a new access/refresh pair and invalidates both the used refresh token *and* the
access token issued with it (old docs: "both such query and jointly issued access_token become invalid").  Using
a refresh token twice is ``invalid_grant``, which is how an unserialized refresh by two workers shows up.
What the superseded access token then gets on the portal is a guess, see :mod:`emulator.auth`.

Error choices (⚠️ the statuses of OAuth-server errors are not documented officially):

* missing parameters or a grant type other than ``refresh_token`` → 400 ``invalid_request``;
* unknown ``client_id`` → 400 ``invalid_client``, except that an unknown client_id sent with the secret of a
  known app gets PySDK's ``wrong_client`` with HTTP **200**; a known client_id with a wrong secret → 400
  ``invalid_client``;
* unknown / used refresh token, or one issued to another client → 400 ``invalid_grant``;
* the app was uninstalled from the token's portal → 401 ``NOT_INSTALLED`` (PySDK) by default, or 400
  ``invalid_client`` (the docs' "app is not installed" reading) when the uninstall asked for that.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from .faults import OAUTH_DOWN_HTML
from .querystring import parse_query
from .rest import Reply, json_reply, parse_body
from .state import Portal, Registry


def _err(status: int, code: str, description: str) -> Reply:
    return json_reply(status, {"error": code, "error_description": description})


class OAuthServer:
    def __init__(self, registry: Registry, base_url: str) -> None:
        self.registry = registry
        self.base_url = base_url.rstrip("/")

    @property
    def host(self) -> str:
        return self.base_url.split("://", 1)[-1]

    def token_payload(self, portal: Portal, access_token: str, refresh_token: str) -> dict[str, Any]:
        """The refresh answer.  ``status`` is the installation's letter (``L`` for a local app).
        ``client_endpoint`` names the portal's announced domain: after a move, the new one (§7.5; see
        ``Emulator.move_portal`` for the UNCONFIRMED alternative).  Hold ``portal.lock``."""
        record = self.registry.access_tokens[access_token]
        installation = portal.installations.get(record.client_id)
        return {
            "access_token": access_token,
            "expires": record.expires_wall,
            "expires_in": int(portal.options.token_ttl),
            "scope": portal.options.scope,
            "domain": self.host,
            "server_endpoint": f"{self.base_url}/oauth/rest/",
            "status": installation.status if installation else "L",
            "client_endpoint": f"{self.base_url}/{portal.endpoint_domain}/rest/",
            "member_id": portal.member_id,
            "user_id": record.user_id,
            "refresh_token": refresh_token,
        }

    def handle(self, http_method: str, query: str, headers: Mapping[str, str], body: bytes) -> Reply:
        registry = self.registry
        params: dict[str, Any] = parse_query(query)
        if http_method == "POST" and body:
            with contextlib.suppress(Exception):
                params.update(parse_body(headers, body))
        refresh = params.get("refresh_token")
        record = registry.refresh_tokens.get(refresh) if isinstance(refresh, str) else None
        portal = registry.portal(record.domain) if record else None
        with registry.lock:
            registry.oauth.requests += 1

        if portal is not None:
            faults = portal.faults
            if faults.oauth_delay > 0:
                time.sleep(faults.oauth_delay)
            if faults.oauth_down:
                with portal.lock:
                    portal.counters.faults["oauth_down"] += 1
                if faults.oauth_down == "drop":
                    return Reply(status=0, drop=True)
                return Reply(status=503, body=OAUTH_DOWN_HTML, content_type="text/html")

        grant = params.get("grant_type")
        client_id, secret = params.get("client_id"), params.get("client_secret")
        if grant != "refresh_token" or not client_id or not secret or not refresh:
            with registry.lock:
                registry.oauth.invalid_request += 1
            return _err(
                400,
                "invalid_request",
                "Invalid request: grant_type=refresh_token, client_id, client_secret and refresh_token are required",
            )
        known_secret = registry.secret_of(str(client_id))
        if known_secret is None:
            if secret in registry.secrets():
                with registry.lock:
                    registry.oauth.wrong_client += 1
                return _err(200, "wrong_client", "Wrong client")
            with registry.lock:
                registry.oauth.invalid_client += 1
            return _err(400, "invalid_client", "Invalid client credentials")
        if known_secret != secret:
            with registry.lock:
                registry.oauth.invalid_client += 1
            return _err(400, "invalid_client", "Invalid client credentials")

        if record is None or portal is None:
            with registry.lock:
                registry.oauth.unknown_invalid_grants += 1
            return _err(400, "invalid_grant", "Invalid grant: unknown refresh token")

        with portal.lock:
            if record.used or record.client_id != client_id:
                portal.counters.invalid_grants += 1
                portal.count_error("invalid_grant")
                return _err(400, "invalid_grant", "Invalid grant: the refresh token was already used or revoked")
            installation = portal.installations.get(record.client_id)
            if installation is None or not installation.installed:
                code = installation.oauth_error if installation else "NOT_INSTALLED"
                portal.count_error(code)
                if code == "invalid_client":
                    return _err(400, "invalid_client", "Application not installed")
                return _err(401, "NOT_INSTALLED", "Application not installed")
            record.used = True
            old_access = registry.access_tokens.get(record.access_token)
            if old_access is not None:
                old_access.superseded = True  # answered per the portal's superseded_token_error (emulator.auth)
            access, new_refresh = registry.issue_pair(portal, record.client_id, record.user_id)
            portal.counters.refreshes += 1
            payload = self.token_payload(portal, access.token, new_refresh.token)
        return json_reply(200, payload)
