"""The objects one process needs, built once from `Settings` (I/O lives here, at the edge).

Tests build a `Runtime` with their own Redis client and HTTP transports; workers and producers use
`get_runtime()`, which builds one lazily per process (and again after a fork).
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import redis

from workers.callpool import CallPool
from workers.client import RestClient
from workers.deadletters import DeadLetters
from workers.dispatcher import Dispatcher
from workers.errors import RestError
from workers.ledger import Ledger
from workers.oauth import OAuthClient
from workers.operating import OperatingHolds
from workers.parking import Parking
from workers.portals import Portal, PortalRegistry, check_url
from workers.ratelimit import RateLimiter
from workers.redisurl import connect
from workers.settings import Settings, get_settings
from workers.tokens import TokenKeeper


class CachedPortals:
    """Portal records as this process last read them, for at most `ttl` seconds.

    Every job and every request needs its portal's record; reading it from Redis each time was ~3.5% of
    a worker's CPU (docs/benchmarks.md). A token another process rotated meanwhile costs at most one
    `expired_token`, after which the token keeper re-reads the registry itself.
    """

    def __init__(self, registry: PortalRegistry, ttl: float = 1.0) -> None:
        self._registry = registry
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Portal | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Portal | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        portal = self._registry.get(key)
        with self._lock:
            self._cache[key] = (now, portal)
        return portal

    def __call__(self, key: str) -> Portal:
        portal = self.get(key)
        if portal is None:
            raise RestError("UNKNOWN_PORTAL", f"portal {key} is not in the registry")
        return portal

    def forget(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)


class Runtime:
    """Registry, limiter, token keeper, dispatcher, ledger, dead letters and parking of one process."""

    def __init__(
        self,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
        transport: httpx.BaseTransport | None = None,
        oauth_transport: httpx.BaseTransport | None = None,
    ) -> None:
        s = self.settings = settings or get_settings()
        self.redis = client or connect(
            s.redis_url,
            s.redis_sentinel_master,
            s.redis_sentinel_password.get_secret_value(),
            health_check_interval=30,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry_on_timeout=True,
        )
        p = s.key_prefix
        self.registry = PortalRegistry(self.redis, s)
        self.ledger = Ledger(self.redis, p, s.ledger_ttl)
        self.dead = DeadLetters(self.redis, p)
        self.parking = Parking(self.redis, p)
        self.limiter = RateLimiter(self.redis, p)
        self.holds = OperatingHolds(self.redis, p, s.operating_limit, s.operating_margin)
        oauth = None
        if s.client_id:
            url = check_url(s.oauth_url, s.allow_insecure_http, "B24Q_OAUTH_URL")
            oauth = OAuthClient(url, s.client_id, s.client_secret.get_secret_value(), s.oauth_timeout, oauth_transport)
        self.portals = CachedPortals(self.registry)
        self.tokens = TokenKeeper(self.redis, self.registry, oauth, p, s.oauth_timeout, s.refresh_ahead)
        self.client = RestClient(transport, s.connect_timeout, s.request_timeout)
        self.calls = CallPool(self.redis, p)
        self.dispatcher = Dispatcher(
            self.client,
            self.limiter,
            self.holds,
            self.tokens,
            self.portals,
            lambda portal: portal.limits(s),
            batch_max=s.batch_max,
            gather=s.gather_ms / 1000.0,
            gather_max=s.gather_max_ms / 1000.0,
            merge_max=s.merge_max,
            backlog=self.ledger.backlog,
            max_reserve=min(5.0, s.permit_wait),
            in_flight_timeout=s.request_timeout * 2 + s.oauth_timeout * 4 + 30,
            pool=self.calls,
            share_max_rate=s.share_max_rate,
        )


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime()
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime (tests) or drop the current one."""
    global _runtime
    with _lock:
        _runtime = runtime


def _after_fork() -> None:
    global _runtime
    _runtime = None  # sockets and threads do not survive a fork


os.register_at_fork(after_in_child=_after_fork)
