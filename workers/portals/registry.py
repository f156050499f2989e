"""The portal registry: which portals b24q delivers to and how it authenticates to each.

A portal is named by a stable key of the user's choosing (its member_id or domain); jobs carry that
key, never a token. Two kinds:

- `oauth`: an application installed on the portal: `client_endpoint` plus an access/refresh pair
  that `workers.portals.tokens` renews. Required for every method but `im.dialog.unread`.
- `webhook`: an incoming webhook URL `https://{portal}/rest/{user}/{code}/`.

Records live in one Redis hash per portal; secrets are kept out of `repr`, logs and CLI output, and
with `B24Q_TOKEN_KEYS` set they are encrypted at rest (`workers.portals.crypto`): the access and refresh
tokens of OAuth portals and the URL (with its secret code) of webhook portals.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import redis

from workers.bitrix.client import Credentials
from workers.errors import ConfigError
from workers.keys import Keys
from workers.portals.crypto import TokenCipher
from workers.portals.limits import Limits
from workers.redaction import webhook_url
from workers.settings import Settings

#: Fields encrypted at rest (`endpoint` only for webhook portals: its path holds the webhook's secret code).
SECRET_FIELDS = ("access_token", "refresh_token")

_REKEY = """
-- replace a record's secret fields only if none changed since they were read (no rotation lost)
for i = 1, #ARGV, 3 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return 0 end
end
for i = 1, #ARGV, 3 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end
return 1
"""

_ROTATE = """
-- write a rotated token pair only if the refresh token it replaces is still the stored one
-- (ARGV[1] is the stored value as read: with encryption at rest, the ciphertext)
if redis.call('HGET', KEYS[1], 'refresh_token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'access_token', ARGV[2], 'refresh_token', ARGV[3], 'expires', ARGV[4],
           'updated_at', ARGV[5], 'state', 'active', 'reason', '')
return 1
"""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure: bool, what: str) -> str:
    """Refuse a URL that is not https, unless it is on loopback or insecure URLs are allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an http(s) URL")
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname):
        raise ConfigError(f"{what} must use https (set B24Q_ALLOW_INSECURE_HTTP=1 to allow http)")
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class Portal:
    """One portal's record. `state` is `active`, or `reauth` when its credentials were lost."""

    key: str
    kind: Literal["oauth", "webhook"]
    endpoint: str
    access_token: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)
    expires: float = 0.0
    member_id: str = ""
    domain: str = ""
    plan: str = "standard"
    rate: float = 0.0
    burst: int = 0
    state: str = "active"
    reason: str = ""
    added_at: float = 0.0
    updated_at: float = 0.0

    def credentials(self) -> Credentials:
        if self.kind == "webhook":
            return Credentials(self.endpoint)
        return Credentials(self.endpoint, self.access_token)

    def limits(self, settings: Settings) -> Limits:
        return Limits.of(self.plan, self.rate, self.burst, settings)

    def public(self) -> dict[str, Any]:
        """The record without secrets, for the CLI and status views."""
        out = asdict(self)
        out.pop("access_token")
        out.pop("refresh_token")
        if self.kind == "webhook":
            out["endpoint"] = webhook_url(self.endpoint)
        return out


class PortalRegistry:
    """Add, read, list and remove portals; rotate token pairs atomically."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._rotate = client.register_script(_ROTATE)
        self._rekey = client.register_script(_REKEY)
        self._cipher = TokenCipher.from_raw(settings.token_keys.get_secret_value())

    @staticmethod
    def _secret_fields(kind: str) -> tuple[str, ...]:
        return (*SECRET_FIELDS, "endpoint") if kind == "webhook" else SECRET_FIELDS

    def _save(self, portal: Portal) -> Portal:
        mapping = {k: str(v) for k, v in asdict(portal).items()}
        for name in self._secret_fields(portal.kind):
            mapping[name] = self._cipher.encrypt(mapping[name])
        pipe = self._client.pipeline()
        pipe.delete(self._keys.portal(portal.key))
        pipe.hset(self._keys.portal(portal.key), mapping=mapping)
        pipe.sadd(self._keys.portal_index(), portal.key)
        pipe.execute()
        return portal

    def add_oauth(
        self,
        key: str,
        client_endpoint: str,
        access_token: str,
        refresh_token: str,
        expires: float,
        member_id: str = "",
        domain: str = "",
        plan: str | None = None,
        rate: float = 0.0,
        burst: int = 0,
    ) -> Portal:
        endpoint = check_url(client_endpoint, self._settings.allow_insecure_http, "client_endpoint")
        if not access_token or not refresh_token:
            raise ConfigError("an OAuth portal needs both access_token and refresh_token")
        now = time.time()
        return self._save(
            Portal(
                key,
                "oauth",
                endpoint,
                access_token,
                refresh_token,
                float(expires),
                member_id,
                domain,
                plan or self._settings.plan,
                rate,
                burst,
                "active",
                "",
                now,
                now,
            )
        )

    def add_webhook(self, key: str, url: str, plan: str | None = None, rate: float = 0.0, burst: int = 0) -> Portal:
        endpoint = check_url(url, self._settings.allow_insecure_http, "webhook URL")
        parts = [p for p in urlsplit(endpoint).path.split("/") if p]
        if len(parts) < 3 or parts[-3] != "rest" or not parts[-2].isdigit():
            raise ConfigError("a webhook URL looks like https://{portal}/rest/{user_id}/{code}/")
        now = time.time()
        domain = urlsplit(endpoint).hostname or ""
        return self._save(
            Portal(
                key,
                "webhook",
                endpoint,
                domain=domain,
                plan=plan or self._settings.plan,
                rate=rate,
                burst=burst,
                added_at=now,
                updated_at=now,
            )
        )

    def get(self, key: str) -> Portal | None:
        raw = self._client.hgetall(self._keys.portal(key))
        if not raw:
            return None
        data = {k.decode(): v.decode() for k, v in raw.items()}
        for name in self._secret_fields(data.get("kind", "")):
            if name in data:
                data[name] = self._cipher.decrypt(data[name], f"portal {key!r} {name}")
        return Portal(
            key=data["key"],
            kind=data["kind"],  # type: ignore[arg-type]
            endpoint=data["endpoint"],
            access_token=data.get("access_token", ""),
            refresh_token=data.get("refresh_token", ""),
            expires=float(data.get("expires") or 0),
            member_id=data.get("member_id", ""),
            domain=data.get("domain", ""),
            plan=data.get("plan", "standard"),
            rate=float(data.get("rate") or 0),
            burst=int(float(data.get("burst") or 0)),
            state=data.get("state", "active"),
            reason=data.get("reason", ""),
            added_at=float(data.get("added_at") or 0),
            updated_at=float(data.get("updated_at") or 0),
        )

    def keys(self) -> list[str]:
        """Every registered portal's key, sorted."""
        return sorted(k.decode() for k in self._client.smembers(self._keys.portal_index()))

    def list(self) -> list[Portal]:
        return [p for p in (self.get(k) for k in self.keys()) if p is not None]

    def remove(self, key: str) -> bool:
        pipe = self._client.pipeline()
        pipe.delete(self._keys.portal(key))
        pipe.srem(self._keys.portal_index(), key)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def rotate(self, key: str, old_refresh: str, access: str, refresh: str, expires: float) -> bool:
        """Store a refreshed pair, unless someone else already replaced `old_refresh` (then False)."""
        stored = self._client.hget(self._keys.portal(key), "refresh_token")
        stored_text = stored.decode() if stored is not None else ""
        if stored is None or self._cipher.decrypt(stored_text, f"portal {key!r} refresh_token") != old_refresh:
            return False
        # compare-and-set on the value as stored (a ciphertext differs at every encryption)
        ok = self._rotate(
            keys=[self._keys.portal(key)],
            args=[
                stored_text,
                self._cipher.encrypt(access),
                self._cipher.encrypt(refresh),
                f"{expires:.3f}",
                f"{time.time():.3f}",
            ],
        )
        return bool(ok)

    def rekey(self) -> int:
        """Re-encrypt every record's secrets with the first key (plaintext records get encrypted).

        Safe while workers run: a record whose secrets changed meanwhile (a refresh) is read again.
        Returns the number of records rewritten.
        """
        changed = 0
        for raw_key in self._client.smembers(self._keys.portal_index()):
            key = raw_key.decode()
            for _ in range(5):
                raw = self._client.hgetall(self._keys.portal(key))
                if not raw:
                    break
                data = {k.decode(): v.decode() for k, v in raw.items()}
                args: list[str] = []
                for name in self._secret_fields(data.get("kind", "")):
                    old = data.get(name, "")
                    new = self._cipher.reencrypt(old, f"portal {key!r} {name}")
                    if new != old:
                        args += [name, old, new]
                if not args or self._rekey(keys=[self._keys.portal(key)], args=args):
                    changed += bool(args)
                    break
        return changed

    def store_auth(self, key: str, auth: Mapping[str, Any]) -> Portal:
        """Store a fresh pair from a Bitrix24 `auth` block (install event, OAuth code exchange).

        Accepts `access_token` / `refresh_token` and `expires` (unix time) or `expires_in`
        (seconds); `client_endpoint`, `member_id`, `domain` update the record when present.
        Clears a `reauth` state.
        """
        current = self.get(key)
        access = str(auth.get("access_token") or auth.get("AUTH_ID") or "")
        refresh = str(auth.get("refresh_token") or auth.get("REFRESH_ID") or "")
        if not access or not refresh:
            raise ConfigError("the auth block needs access_token and refresh_token")
        expires = float(auth.get("expires") or 0) or time.time() + float(
            auth.get("expires_in") or auth.get("AUTH_EXPIRES") or 3600
        )
        endpoint = str(auth.get("client_endpoint") or (current.endpoint if current else ""))
        if not endpoint:
            raise ConfigError(f"portal {key!r} is new: the auth block needs client_endpoint")
        if current is None or current.kind != "oauth":
            return self.add_oauth(
                key, endpoint, access, refresh, expires, str(auth.get("member_id", "")), str(auth.get("domain", ""))
            )
        updated = replace(
            current,
            endpoint=check_url(endpoint, self._settings.allow_insecure_http, "client_endpoint"),
            access_token=access,
            refresh_token=refresh,
            expires=expires,
            state="active",
            reason="",
            member_id=str(auth.get("member_id") or current.member_id),
            updated_at=time.time(),
        )
        return self._save(updated)

    def mark_reauth(self, key: str, reason: str) -> None:
        self._client.hset(self._keys.portal(key), mapping={"state": "reauth", "reason": reason})

    def mark_active(self, key: str) -> None:
        """Clear a `reauth` state (after fixing a webhook or the app by hand)."""
        self._client.hset(self._keys.portal(key), mapping={"state": "active", "reason": ""})
