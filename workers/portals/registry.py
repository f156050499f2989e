"""The portal registry: which portals b24q delivers to and how it authenticates to each.

One Redis hash per portal (its record: `workers.portals.record`), an index of their keys, and aliases
(a domain, a member_id) pointing at a key. Every state change applies `workers.portals.state`'s table;
the writes that must be atomic run `lua/write_if.lua`. Provider bookkeeping: `workers.portals.providers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import chain
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from workers.bitrix.addresses import Resolve
from workers.errors import ConfigError
from workers.keys import Keys
from workers.portals.crypto import TokenCipher
from workers.portals.endpoints import EndpointPolicy, domain_of
from workers.portals.providers import ProviderBook
from workers.portals.record import Portal, secret_fields
from workers.portals.state import TRANSITIONS, PortalEvent, PortalState, after, applies, sources
from workers.settings import Settings

log = logging.getLogger(__name__)

_LUA = Path(__file__).parent / "lua"


class PortalRegistry:
    """Add, read, list and remove portals; rotate token pairs atomically.

    Every endpoint it stores passes `endpoints` (`resolve`: the name lookup it uses, DNS by default).
    """

    def __init__(self, client: redis.Redis, settings: Settings, resolve: Resolve | None = None) -> None:
        self._client = client
        self._settings = settings
        self._resolve = resolve
        self._keys = Keys(settings.key_prefix)
        self._write_if = client.register_script((_LUA / "write_if.lua").read_text())
        self._rekey = client.register_script((_LUA / "rekey.lua").read_text())
        self._providers = ProviderBook(client, self._keys)
        self._cipher = TokenCipher.from_raw(settings.token_keys.get_secret_value())

    @property
    def endpoints(self) -> EndpointPolicy:
        """The endpoint rules as the settings say now."""
        return EndpointPolicy.of(self._settings, self._resolve)

    def _write(
        self,
        key: str,
        fields: Mapping[str, str | bytes],
        event: PortalEvent | None = None,
        reason: str = "",
        unless_changed: tuple[str, str | bytes] = ("", ""),
    ) -> bool:
        """Write `fields` in one step if the record is in a state `event` applies in (then with the event's
        state and `reason`; no event: any state) and the field `unless_changed` names still holds its value
        as read; else write nothing and return False (a missing record too, when an event is given)."""
        if event is not None:
            fields = {**fields, "state": TRANSITIONS[event].target, "reason": reason}
        states = sources(event) if event is not None else ""
        args = [*unless_changed, states, *chain.from_iterable(fields.items())]
        return bool(self._write_if(keys=[self._keys.portal(key)], args=args))

    def _save(self, portal: Portal) -> Portal:
        pipe = self._client.pipeline()
        pipe.delete(self._keys.portal(portal.key))
        pipe.hset(self._keys.portal(portal.key), mapping=portal.stored(self._cipher))
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
                PortalState.ACTIVE,
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
        return self.portal_from(self._client.hgetall(self._keys.portal(key)))

    def queue_get(self, pipe: Any, key: str) -> None:
        """Queue `get(key)` in a pipeline; its reply goes to `portal_from`."""
        pipe.hgetall(self._keys.portal(key))

    def portal_from(self, raw: Any) -> Portal | None:
        return Portal.from_stored(raw, self._cipher) if raw else None

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
        fields = {
            "access_token": self._cipher.encrypt(access),
            "refresh_token": self._cipher.encrypt(refresh),
            "expires": f"{expires:.3f}",
            "updated_at": f"{time.time():.3f}",
        }
        # compare-and-set on the value as stored (a ciphertext differs at every encryption)
        return self._write(key, fields, PortalEvent.TOKENS_ROTATED, unless_changed=("refresh_token", stored_text))

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
                for name in secret_fields(data.get("kind", "")):
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
            state=after(current.state, PortalEvent.TOKENS_STORED),
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
        if current is None or current.kind != "oauth" or not applies(current.state, PortalEvent.TOKENS_ROTATED):
            return False
        if not access or not refresh or expires <= current.expires:
            return False
        stored = self._client.hget(self._keys.portal(key), "refresh_token") or b""
        fields = {
            "access_token": self._cipher.encrypt(access),
            "refresh_token": self._cipher.encrypt(refresh),
            "expires": f"{expires:.3f}",
        }
        return self._write(key, fields, PortalEvent.TOKENS_ROTATED, unless_changed=("refresh_token", stored))

    def mark_reauth(self, key: str, reason: str) -> bool:
        """Its credentials are lost (jobs park), unless the app was uninstalled meanwhile (False)."""
        return self._write(key, {}, PortalEvent.CREDENTIALS_LOST, reason)

    def mark_active(self, key: str) -> bool:
        """Clear a `reauth` state (after fixing a webhook or the app by hand); False if it was in no such state."""
        return self._write(key, {}, PortalEvent.REACTIVATED)

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
        changes: dict[str, str | bytes] = {"app_version": version}
        if plan is not None and portal.plan_from != "operator":
            changes |= {"plan": plan, "plan_from": "license"}
        if application_token:
            changes["application_token"] = self._cipher.encrypt(application_token)
        self._write(key, changes, PortalEvent.INSTALLED)
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
        erased = {
            "access_token": self._cipher.encrypt(""),
            "refresh_token": self._cipher.encrypt(""),
            "application_token": self._cipher.encrypt(""),
            "expires": "0",
            "providers_pending": "",
            "updated_at": f"{time.time():.3f}",
        }
        reason = "APP_UNINSTALLED: the application was uninstalled from the portal"
        self._write(key, erased, PortalEvent.UNINSTALLED, reason)

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
        fields = {"endpoint": new, "domain": domain, "updated_at": f"{time.time():.3f}"}
        ok = self._write(key, fields, unless_changed=("endpoint", stored or b""))
        if ok:
            self.set_aliases(key, domain)
        return ok

    def set_providers(self, key: str, providers: str) -> None:
        """The SMS providers (JSON) this portal should have, instead of `B24Q_PROVIDERS`."""
        self._providers.set(key, providers)

    def providers_pending(self, key: str, codes: Sequence[str]) -> None:
        """These providers are being registered: the portal's status jobs wait for them."""
        self._providers.pending(key, codes)

    def provider_ready(self, key: str, code: str) -> int:
        """A provider is registered; returns how many are still pending."""
        return self._providers.ready(key, code)
