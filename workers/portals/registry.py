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

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import redis

from workers.bitrix.addresses import Resolve
from workers.bitrix.client import Credentials
from workers.errors import ConfigError
from workers.keys import Keys
from workers.portals.crypto import TokenCipher
from workers.portals.endpoints import EndpointPolicy, is_loopback
from workers.portals.limits import Limits
from workers.redaction import webhook_url
from workers.settings import Settings

log = logging.getLogger(__name__)

#: Fields encrypted at rest (`endpoint` only for webhook portals: its path holds the webhook's secret code).
#: `application_token` proves an event comes from Bitrix24 (bitrix24-facts.md §7.3): a secret as well.
SECRET_FIELDS = ("access_token", "refresh_token", "application_token")

#: Portal states: `active`; `reauth` (credentials lost, jobs parked); `uninstalled` (the app was removed
#: from the portal: its jobs end as dead letters `APP_UNINSTALLED` until a reinstall).
STATES = ("active", "reauth", "uninstalled")

_REKEY = """
-- replace a record's secret fields only if none changed since they were read (no rotation lost)
for i = 1, #ARGV, 3 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return 0 end
end
for i = 1, #ARGV, 3 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) end
return 1
"""

_SET_IF = """
-- set fields only if ARGV[1] (a field) still holds ARGV[2] (as stored), e.g. an endpoint a redirect moved
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_PROVIDER_READY = """
-- a provider is registered: drop its code from the portal's pending list
local pending = redis.call('HGET', KEYS[1], 'providers_pending')
if not pending or pending == '' then return 0 end
local left = {}
for code in string.gmatch(pending, '%S+') do
  if code ~= ARGV[1] then table.insert(left, code) end
end
redis.call('HSET', KEYS[1], 'providers_pending', table.concat(left, ' '))
return #left
"""

_MARK_REAUTH = """
-- an uninstalled portal stays uninstalled: its jobs are dead letters, not parked
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'uninstalled' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'reauth', 'reason', ARGV[1])
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


def check_url(url: str, allow_insecure: bool, what: str) -> str:
    """Refuse a URL that is not https, unless it is on loopback or insecure URLs are allowed (the OAuth
    server's URL; a portal's endpoint answers to `EndpointPolicy`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an http(s) URL")
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        raise ConfigError(f"{what} must use https (set B24Q_ALLOW_INSECURE_HTTP=1 to allow http)")
    return url if url.endswith("/") else url + "/"


def domain_of(endpoint: str) -> str:
    """The portal domain an endpoint names: its host; on loopback (the emulator, where a portal is a
    path prefix because there is no DNS) the first segment of its path."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if is_loopback(host):
        segments = [p for p in parts.path.split("/") if p]
        return segments[0] if segments and segments[0] != "rest" else host
    return host


@dataclass(frozen=True)
class Portal:
    """One portal's record. `state` is one of `STATES`.

    Set by the application's lifecycle (`edges.lifecycle`): `application_token`, `app_version`, the plan
    read from the license (`plan_from` = `license`; an operator's `--plan` is `operator` and stays), the
    SMS providers the portal should have (`providers`, JSON) and those not registered yet
    (`providers_pending`, codes separated by spaces: its status jobs wait until it is empty).
    """

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
    application_token: str = field(default="", repr=False)
    app_version: str = ""
    plan_from: str = "default"
    providers: str = ""
    providers_pending: str = ""

    def credentials(self) -> Credentials:
        if self.kind == "webhook":
            return Credentials(self.endpoint)
        return Credentials(self.endpoint, self.access_token)

    def limits(self, settings: Settings) -> Limits:
        return Limits.of(self.plan, self.rate, self.burst, settings)

    def provider_list(self, settings: Settings) -> list[dict[str, Any]]:
        """The SMS providers this portal should have: its own list, else `B24Q_PROVIDERS`."""
        raw = self.providers or settings.providers
        if not raw.strip():
            return []
        value = json.loads(raw)
        if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
            raise ConfigError("providers must be a JSON list of {code, name, handler, description?}")
        return [dict(p) for p in value]

    def public(self) -> dict[str, Any]:
        """The record without secrets, for the CLI and status views."""
        out = asdict(self)
        out.pop("access_token")
        out.pop("refresh_token")
        out.pop("application_token")
        if self.kind == "webhook":
            out["endpoint"] = webhook_url(self.endpoint)
        return out


class PortalRegistry:
    """Add, read, list and remove portals; rotate token pairs atomically.

    Every endpoint it stores passes `endpoints` (`resolve`: the name lookup it uses, DNS by default).
    """

    def __init__(self, client: redis.Redis, settings: Settings, resolve: Resolve | None = None) -> None:
        self._client = client
        self._settings = settings
        self._resolve = resolve
        self._keys = Keys(settings.key_prefix)
        self._rotate = client.register_script(_ROTATE)
        self._set_if = client.register_script(_SET_IF)
        self._mark_reauth = client.register_script(_MARK_REAUTH)
        self._provider_ready = client.register_script(_PROVIDER_READY)
        self._rekey = client.register_script(_REKEY)
        self._cipher = TokenCipher.from_raw(settings.token_keys.get_secret_value())

    @property
    def endpoints(self) -> EndpointPolicy:
        """The endpoint rules as the settings say now."""
        return EndpointPolicy.of(self._settings, self._resolve)

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
        hosts: bool = False,
    ) -> Portal:
        """Register an OAuth portal: by hand (`b24q portal add`), the operator names its host, so any host
        passes (`hosts=False`); scheme, port and address still answer to `endpoints`. From an auth block
        (`store_auth`), the host must be one of `B24Q_PORTAL_HOSTS` too."""
        if not access_token or not refresh_token:
            raise ConfigError("an OAuth portal needs both access_token and refresh_token")
        endpoint = self.endpoints.check(client_endpoint, "client_endpoint", hosts=hosts)
        now = time.time()
        portal = self._save(
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
                plan_from="operator" if plan else "default",
            )
        )
        # an app's install finds it by these (one read each) and takes it over instead of registering the
        # portal a second time; names another portal already has stay its own
        self.set_aliases(key, member_id, domain or domain_of(endpoint), replace=False)
        return portal

    def add_webhook(self, key: str, url: str, plan: str | None = None, rate: float = 0.0, burst: int = 0) -> Portal:
        endpoint = self.endpoints.check(url, "webhook URL", hosts=False)
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
                plan_from="operator" if plan else "default",
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
            application_token=data.get("application_token", ""),
            app_version=data.get("app_version", ""),
            plan_from=data.get("plan_from", "default"),
            providers=data.get("providers", ""),
            providers_pending=data.get("providers_pending", ""),
        )

    def resolve(self, name: str) -> str | None:
        """The registry key of the portal called `name` (its key, member_id or domain), or None."""
        if self._client.exists(self._keys.portal(name)):
            return name
        return self.alias(name)

    def alias(self, name: str) -> str | None:
        """The registry key `name` is another name of (a domain, a member_id), or None."""
        key = self._client.get(self._keys.alias(name))
        return key.decode() if key is not None else None

    def set_aliases(self, key: str, *names: str, replace: bool = True) -> None:
        """Let producers name the portal by these too (a domain, a member_id); a moved domain's old
        name keeps pointing here until another portal takes it (`replace=False`: names taken stay)."""
        pipe = self._client.pipeline()
        for name in names:
            if name and name != key:
                pipe.set(self._keys.alias(name), key, nx=not replace)
        pipe.execute()

    def aliases(self, key: str) -> list[str]:
        portal = self.get(key)
        if portal is None:
            return []
        names = [n for n in (portal.member_id, portal.domain) if n and n != key]
        return [n for n in names if self.resolve(n) == key]

    def keys(self) -> list[str]:
        """Every registered portal's key, sorted."""
        return sorted(k.decode() for k in self._client.smembers(self._keys.portal_index()))

    def list(self) -> list[Portal]:
        return [p for p in (self.get(k) for k in self.keys()) if p is not None]

    def remove(self, key: str) -> bool:
        aliases = self.aliases(key)
        pipe = self._client.pipeline()
        for name in aliases:
            pipe.delete(self._keys.alias(name))
        pipe.delete(self._keys.portal(key))
        pipe.srem(self._keys.portal_index(), key)
        *_, deleted, _ = pipe.execute()
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
        Clears a `reauth` state. The endpoint must be one of `B24Q_PORTAL_HOSTS` or the portal's own host.
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
            if current is not None:  # a webhook portal taking OAuth: its own host is allowed too
                endpoint = self.endpoints.check(endpoint, "client_endpoint", current.endpoint)
            member_id, domain = str(auth.get("member_id", "")), str(auth.get("domain", ""))
            return self.add_oauth(key, endpoint, access, refresh, expires, member_id, domain, hosts=current is None)
        endpoint = self.endpoints.check(endpoint, "client_endpoint", current.endpoint)
        updated = replace(
            current,
            endpoint=endpoint,
            access_token=access,
            refresh_token=refresh,
            expires=expires,
            state="active",
            reason="",
            member_id=str(auth.get("member_id") or current.member_id),
            domain=str(auth.get("domain") or current.domain),
            updated_at=time.time(),
        )
        return self._save(updated)

    def offer_auth(self, key: str, auth: Mapping[str, Any]) -> bool:
        """Take the pair an event's `auth` block carries if it is newer than the stored one (a later
        `expires`): an event delivered late never rolls back what the refresher stored meanwhile."""
        current = self.get(key)
        access, refresh = str(auth.get("access_token") or ""), str(auth.get("refresh_token") or "")
        expires = float(auth.get("expires") or 0)
        if current is None or current.kind != "oauth" or current.state == "uninstalled":
            return False
        if not access or not refresh or expires <= current.expires:
            return False
        stored = self._client.hget(self._keys.portal(key), "refresh_token") or b""
        return bool(
            self._set_if(
                keys=[self._keys.portal(key)],
                args=[
                    "refresh_token",
                    stored,
                    "access_token",
                    self._cipher.encrypt(access),
                    "refresh_token",
                    self._cipher.encrypt(refresh),
                    "expires",
                    f"{expires:.3f}",
                    "state",
                    "active",
                    "reason",
                    "",
                ],
            )
        )

    def mark_reauth(self, key: str, reason: str) -> bool:
        """Its credentials are lost (jobs park), unless the app was uninstalled meanwhile (False)."""
        return bool(self._mark_reauth(keys=[self._keys.portal(key)], args=[reason]))

    def mark_active(self, key: str) -> None:
        """Clear a `reauth` state (after fixing a webhook or the app by hand)."""
        self._client.hset(self._keys.portal(key), mapping={"state": "active", "reason": ""})

    def install(
        self,
        key: str,
        auth: Mapping[str, Any],
        application_token: str,
        version: str,
        plan: str | None,
    ) -> Portal:
        """Register or update the portal an application install names (bitrix24-facts.md §7.1).

        Tokens go through `store_auth` (compare-free: an install is the newest word on them); the
        plan comes from the license unless an operator set one; an `uninstalled` portal is active again.
        """
        portal = self.store_auth(key, auth)
        changes: dict[str, str] = {"app_version": version, "state": "active", "reason": ""}
        if plan is not None and portal.plan_from != "operator":
            changes |= {"plan": plan, "plan_from": "license"}
        if application_token:
            changes["application_token"] = self._cipher.encrypt(application_token)
        self._client.hset(self._keys.portal(key), mapping=changes)
        self.set_aliases(key, portal.member_id, portal.domain)
        stored = self.get(key)
        assert stored is not None
        return stored

    def set_application_token(self, key: str, token: str, version: str | None = None) -> None:
        """An update carries a new `application_token` (§7.3): later events are checked against it."""
        mapping = {"application_token": self._cipher.encrypt(token)}
        if version is not None:
            mapping["app_version"] = version
        self._client.hset(self._keys.portal(key), mapping=mapping)

    def mark_uninstalled(self, key: str) -> None:
        """The app was removed from the portal: erase its tokens (API access is already revoked, §7.2) and its
        `application_token`, so that no event carrying the old one (a replayed update) brings it back; only an
        install, verified by the portal, does."""
        self._client.hset(
            self._keys.portal(key),
            mapping={
                "state": "uninstalled",
                "reason": "APP_UNINSTALLED: the application was uninstalled from the portal",
                "access_token": self._cipher.encrypt(""),
                "refresh_token": self._cipher.encrypt(""),
                "application_token": self._cipher.encrypt(""),
                "expires": "0",
                "providers_pending": "",
                "updated_at": f"{time.time():.3f}",
            },
        )

    def host_allowed(self, url: str, current: str = "") -> bool:
        """May a portal's endpoint be this URL (`endpoints`: https on 443, one of `B24Q_PORTAL_HOSTS` or the
        host of `current`, the address the portal already had, and a public address)? Keeps tokens from
        following a redirect anywhere, and installs from registering arbitrary hosts."""
        try:
            self.endpoints.check(url, "the endpoint", current)
        except ConfigError as exc:
            log.warning("portal endpoint refused: %s", exc)
            return False
        return True

    def move(self, key: str, old_endpoint: str, new_endpoint: str) -> bool:
        """Point the portal at its new address (a domain change, §7.5), unless someone already did
        or the new host is not allowed."""
        if not self.host_allowed(new_endpoint, old_endpoint):
            return False
        domain = domain_of(new_endpoint)
        portal = self.get(key)
        if portal is None or portal.endpoint != old_endpoint:
            return False
        stored = self._client.hget(self._keys.portal(key), "endpoint")
        new = self._cipher.encrypt(new_endpoint) if portal.kind == "webhook" else new_endpoint
        ok = bool(
            self._set_if(
                keys=[self._keys.portal(key)],
                args=["endpoint", stored or b"", "endpoint", new, "domain", domain, "updated_at", f"{time.time():.3f}"],
            )
        )
        if ok:
            self.set_aliases(key, domain)
        return ok

    def set_providers(self, key: str, providers: str) -> None:
        """The SMS providers (JSON) this portal should have, instead of `B24Q_PROVIDERS`."""
        self._client.hset(self._keys.portal(key), "providers", providers)

    def providers_pending(self, key: str, codes: Sequence[str]) -> None:
        """These providers are being registered: the portal's status jobs wait for them."""
        self._client.hset(self._keys.portal(key), "providers_pending", " ".join(codes))

    def provider_ready(self, key: str, code: str) -> int:
        """A provider is registered; returns how many are still pending."""
        return int(self._provider_ready(keys=[self._keys.portal(key)], args=[code]))
