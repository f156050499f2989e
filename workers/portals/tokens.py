"""Tokens that heal themselves: one refresh per portal for the whole pool, never a stampede.

Refresh tokens are single-use and rotate (bitrix24-facts.md §2.1): two workers refreshing the same
pair at once kill the portal's credentials with `invalid_grant`. So a refresh is a distributed
single-flight:

1. take the portal's refresh lock in Redis (`SET NX PX`; it expires, so a dead holder cannot keep
   it, and it outlives the OAuth call's timeout, so a live holder never loses it mid-call);
2. re-read the stored pair: if its access token is not the one that failed, another worker has
   refreshed already, so use that;
3. call the OAuth server and store the rotated pair with a compare-and-set on the old refresh token;
4. release the lock. Workers that did not get the lock wait for it and re-read.

`invalid_grant`, `invalid_client` and friends mark the portal `reauth`: its jobs are parked until
new tokens arrive (`b24q portal auth`, or `tasks.producer.store_tokens` from an install handler).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import redis

from workers.bitrix.oauth import OAuthClient
from workers.errors import AuthLost, OAuthUnavailable
from workers.events import events
from workers.keys import DEFAULT_KEYS, Keys
from workers.portals.admission import admission
from workers.portals.record import Portal
from workers.portals.registry import PortalRegistry

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class TokenKeeper:
    """Hands out usable credentials and refreshes them once for the pool.

    Parameters:
        client: the shared Redis client.
        registry: where token pairs live.
        oauth: the OAuth server client (None when no app credentials are configured).
        oauth_timeout: seconds one refresh call may take; the lock lives 2x that plus 5 s.
        refresh_ahead: refresh when the token expires within this many seconds.
    """

    def __init__(
        self,
        client: redis.Redis,
        registry: PortalRegistry,
        oauth: OAuthClient | None,
        keys: Keys = DEFAULT_KEYS,
        oauth_timeout: float = 10.0,
        refresh_ahead: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._registry = registry
        self._oauth = oauth
        self._keys = keys
        self._lock_ttl = oauth_timeout * 2 + 5
        self._refresh_ahead = refresh_ahead
        self._clock = clock
        self._sleep = sleep
        self._release = client.register_script(_RELEASE)

    def _count(self, portal: str, what: str) -> None:
        self._client.hincrby(self._keys.token_stats(), f"{portal}:{what}", 1)

    def usable(self, portal: Portal) -> Portal:
        """The portal with a token that is not about to expire (refreshing only close to `expires`).

        "Close" is `refresh_ahead` seconds, but never more than half the token's lifetime (from when the
        pair was stored to `expires`): tokens that live less than the window would otherwise be refreshed
        at every call. Bitrix24's live an hour, so the cap only matters for short-lived ones."""
        if portal.kind != "oauth" or not portal.expires:
            return portal
        ahead = self._refresh_ahead
        if portal.updated_at and portal.expires > portal.updated_at:
            ahead = min(ahead, (portal.expires - portal.updated_at) / 2)
        if self._clock() < portal.expires - ahead:
            return portal
        return self.refresh(portal.key, portal.access_token)

    def refresh(self, key: str, stale_access_token: str) -> Portal:
        """Renew the pair whose access token `stale_access_token` was refused; once for the pool."""
        deadline = self._clock() + self._lock_ttl + 5
        lock_key = self._keys.refresh_lock(key)
        owner = uuid.uuid4().hex
        delay = 0.02
        while True:
            portal = self._current(key)
            if portal.access_token != stale_access_token:
                return portal  # someone else refreshed already
            if self._client.set(lock_key, owner, nx=True, px=int(self._lock_ttl * 1000)):
                try:
                    return self._refresh_locked(key, stale_access_token)
                finally:
                    self._release(keys=[lock_key], args=[owner])
            if self._clock() > deadline:
                raise OAuthUnavailable("REFRESH_WAIT_TIMEOUT", f"portal {key}: another worker's refresh did not finish")
            self._sleep(delay)
            delay = min(delay * 2, 0.5)

    def _current(self, key: str) -> Portal:
        portal = self._registry.get(key)
        refusal = admission(portal, key)
        if portal is None:
            raise AuthLost("PORTAL_REMOVED", f"portal {key} is no longer in the registry")
        if refusal is not None and refusal.park:
            raise AuthLost("REAUTH_NEEDED", f"portal {key} needs re-authorisation ({refusal.description})")
        # an uninstalled portal's pair is erased: its lane ends its calls APP_UNINSTALLED, not the keeper
        return portal

    def _refresh_locked(self, key: str, stale_access_token: str) -> Portal:
        portal = self._current(key)  # re-read under the lock
        if portal.access_token != stale_access_token:
            return portal
        if self._oauth is None:
            raise AuthLost("NO_CLIENT_CREDENTIALS", "B24Q_CLIENT_ID / B24Q_CLIENT_SECRET are not set")
        try:
            pair = self._oauth.refresh(portal.refresh_token)
        except AuthLost as exc:
            self._count(key, "refresh_failed")
            events.token_refresh(key, "refused")
            self._registry.mark_reauth(key, f"{exc.code}: {exc.description}")
            log.warning("portal %s: refresh refused (%s); jobs are parked until re-authorisation", key, exc.code)
            raise
        except OAuthUnavailable:
            self._count(key, "refresh_unavailable")
            events.token_refresh(key, "unavailable")
            raise
        if not self._registry.rotate(key, portal.refresh_token, pair.access_token, pair.refresh_token, pair.expires):
            # only possible if the lock expired under us; whoever wrote last holds the live pair
            log.error("portal %s: token pair changed during refresh; keeping the stored pair", key)
        self._count(key, "refreshed")
        events.token_refresh(key, "refreshed")
        log.info("portal %s: token refreshed", key)
        return self._current(key)

    def stats(self) -> dict[str, int]:
        raw = self._client.hgetall(self._keys.token_stats())
        return {k.decode(): int(v) for k, v in raw.items()}
