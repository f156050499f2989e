"""Portal records as this process last read them: what the delivery path reads for every request."""

from __future__ import annotations

import threading
import time

from workers.errors import RestError
from workers.portals.limits import Limits
from workers.portals.record import Portal
from workers.portals.registry import PortalRegistry
from workers.portals.state import PortalState
from workers.settings import Settings


class CachedPortals:
    """Portal records as this process last read them, for at most `ttl` seconds.

    Every job and every request needs its portal's record; reading it from Redis each time was ~3.5% of
    a worker's CPU (docs/benchmarks.md). A token another process rotated meanwhile costs at most one
    `expired_token`, after which the token keeper re-reads the registry itself.
    """

    def __init__(self, registry: PortalRegistry, settings: Settings, ttl: float = 1.0) -> None:
        self._registry = registry
        self._settings = settings
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Portal | None]] = {}
        self._keys: set[str] | None = None  # names known to be registry keys (`is_key`)
        self._lock = threading.Lock()

    def get(self, key: str) -> Portal | None:
        """The portal `key` names (its registry key or an alias), as read at most `ttl` seconds ago."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        portal = self._registry.get(key)
        if portal is None and (canonical := self._registry.alias(key)) is not None:
            portal = self._registry.get(canonical)  # `key` is an alias: its domain or member_id
        with self._lock:
            self._cache[key] = (now, portal)
            if portal is not None and self._keys is not None:
                self._keys.add(portal.key)
        return portal

    def is_key(self, name: str) -> bool:
        """Is `name` a portal's registry key (not an alias, not unknown)? As this process knows: the registry's
        index when first asked, and every key read since (a portal removed since is still answered True)."""
        with self._lock:
            known = self._keys
        if known is None:
            known = set(self._registry.keys())
            with self._lock:
                self._keys = known = known | (self._keys or set())
        return name in known

    def cached(self, key: str) -> tuple[Portal | None, bool]:
        """The record as cached (None if none) and whether it is fresh: read under `ttl` seconds ago."""
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            return None, False
        return hit[1], time.monotonic() - hit[0] < self._ttl

    def alias_now(self, name: str) -> bool:
        """Does `name`, no longer a registry key, name another portal now? (Read now; it is then no longer
        taken for a key, and what it names is resolved as an alias's is.)"""
        if self._registry.alias(name) is None:
            return False
        with self._lock:
            if self._keys is not None:
                self._keys.discard(name)
            self._cache.pop(name, None)
        return True

    def keep(self, key: str, portal: Portal | None) -> None:
        """A record read just now by another path (`workers.jobstart`: with the job's other reads)."""
        with self._lock:
            self._cache[key] = (time.monotonic(), portal)

    def current(self, key: str) -> Portal | None:
        """The record to decide a job's admission on (`workers.portals.admission`): as cached, unless the cached
        one may be a moment behind a change that ends its refusal (none yet: an install; `uninstalled`: a
        reinstall), which is read again now. The producer and the pipeline ask this, so both decide alike."""
        portal = self.get(key)
        if portal is None or portal.state == PortalState.UNINSTALLED:
            portal = self.fresh(key) or portal
        return portal

    def fresh(self, key: str) -> Portal | None:
        """The record read now, not as cached: for decisions a stale `uninstalled` must not make."""
        self.forget(key)
        return self.get(key)

    def __call__(self, key: str) -> Portal:
        portal = self.get(key)
        if portal is None:
            raise RestError("UNKNOWN_PORTAL", f"portal {key} is not in the registry")
        return portal

    def limits(self, portal: Portal) -> Limits:
        return portal.limits(self._settings)

    def forget(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def move(self, key: str, old_endpoint: str, new_endpoint: str) -> Portal:
        """Follow a domain change (`PortalRegistry.move`); the record as it is now."""
        self._registry.move(key, old_endpoint, new_endpoint)
        self.forget(key)
        return self(key)
