"""The OAuth server client: exchange a refresh token for a new pair.

`client_secret` goes to the OAuth server and nowhere else. Errors come back typed: `invalid_grant`
and friends as `AuthLost` (re-authorisation needed), anything the network or a 5xx did as
`OAuthUnavailable` (try again later).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from workers.errors import AuthLost, OAuthUnavailable, RestError, rest_error


@dataclass(frozen=True)
class TokenPair:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires: float
    client_endpoint: str = ""
    member_id: str = ""


class OAuthClient:
    """Calls `{oauth_url}?grant_type=refresh_token&...` (GET, as the docs show)."""

    def __init__(
        self,
        oauth_url: str,
        client_id: str,
        client_secret: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._url = oauth_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._http = httpx.Client(transport=transport, timeout=httpx.Timeout(timeout))

    def refresh(self, refresh_token: str) -> TokenPair:
        params = {
            "grant_type": "refresh_token",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "refresh_token": refresh_token,
        }
        try:
            response = self._http.get(self._url, params=params)
        except httpx.HTTPError as exc:
            raise OAuthUnavailable("OAUTH_UNREACHABLE", f"refresh: {type(exc).__name__}") from None
        try:
            body = json.loads(response.content)
        except ValueError:
            raise OAuthUnavailable("OAUTH_BAD_RESPONSE", f"refresh: HTTP {response.status_code}, not JSON") from None
        if not isinstance(body, dict):
            raise OAuthUnavailable("OAUTH_BAD_RESPONSE", "refresh: JSON body is not an object")
        if "error" in body:
            err = rest_error(str(body["error"]), str(body.get("error_description", "")), response.status_code)
            if response.status_code >= 500 and not isinstance(err, AuthLost):
                raise OAuthUnavailable(err.code, err.description)
            if isinstance(err, AuthLost):
                raise err
            # any other OAuth error (invalid_request, scope): the pair cannot be renewed as things are
            raise AuthLost(err.code, err.description, err.status) from None
        if response.status_code >= 400 or not body.get("access_token") or not body.get("refresh_token"):
            raise OAuthUnavailable("OAUTH_BAD_RESPONSE", f"refresh: HTTP {response.status_code}, no token pair")
        expires = float(body.get("expires") or 0) or time.time() + float(body.get("expires_in") or 3600)
        return TokenPair(
            str(body["access_token"]),
            str(body["refresh_token"]),
            expires,
            str(body.get("client_endpoint", "")),
            str(body.get("member_id", "")),
        )


__all__ = ["OAuthClient", "RestError", "TokenPair"]
