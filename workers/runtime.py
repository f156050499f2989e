"""The objects one process needs, built once from `Settings` (I/O lives here, at the edge), and the few of
them the job pipeline uses (`JobServices`).

Tests build a `Runtime` with their own Redis client and HTTP transports; workers and producers use
`get_runtime()`, which builds one lazily per process (and again after a fork).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import httpx
import redis

from workers.bitrix.client import RestClient
from workers.bitrix.oauth import OAuthClient
from workers.delivery.callpool import CallPool
from workers.delivery.dispatcher import Dispatcher
from workers.delivery.operating import OperatingHolds
from workers.delivery.ordering import Ordering
from workers.delivery.ratelimit import RateLimiter
from workers.delivery.verification import VerificationGate
from workers.delivery.wire import LaneConfig, Wire
from workers.jobstart import JobStart
from workers.keys import Keys
from workers.portals.cache import CachedPortals
from workers.portals.endpoints import check_url
from workers.portals.registry import PortalRegistry
from workers.portals.tokens import TokenKeeper
from workers.records.deadletters import DeadLetters
from workers.records.idempotency import IdempotencyKeys
from workers.records.ledger import Ledger
from workers.records.outcomes import Outcomes
from workers.records.parking import Parking
from workers.redisurl import connect
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobServices:
    """What the job pipeline (`workers.pipeline.run_job`) uses of a process, and nothing more."""

    settings: Settings
    #: portal records as read at most a second ago: what every job reads
    portals: CachedPortals
    #: the records read now, where a cached one would mislead; re-authorisation marks
    registry: PortalRegistry
    #: a run's start, and the transient failures it counts
    ledger: Ledger
    #: every end of a job and every retry
    outcomes: Outcomes
    dispatcher: Dispatcher
    ordering: Ordering
    #: a job's start: its run, its portal, its portal's traffic, in one round trip
    start: JobStart


class Runtime:
    """Registry, limiter, token keeper, dispatcher, ledger, dead letters, parking and the outcome recorder of one
    process; `job_services` is what of them the job pipeline uses."""

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
            # every job thread and every lane's sender may be in a round trip at once (redis-py's default is 100,
            # fewer than a worker's default 128 threads; `workers.roundtrip` keeps a few checked out too)
            max_connections=2 * s.worker_concurrency + 64,
        )
        keys = self.keys = Keys(s.key_prefix)
        self.registry = PortalRegistry(self.redis, s)
        self.ledger = Ledger(self.redis, keys, s.ledger_ttl, ttl_applied=s.ledger_ttl_applied)
        self.dead = DeadLetters(self.redis, keys)
        self.parking = Parking(self.redis, keys)
        self.outcomes = Outcomes(self.ledger, self.dead, self.parking)
        self.limiter = RateLimiter(self.redis, keys)
        # the HTTP intake's: a request bucket per API key, and what retried POSTs already got
        self.api_limiter = RateLimiter(self.redis, keys, bucket=keys.api_bucket)
        self.idempotency = IdempotencyKeys(self.redis, keys, s.ledger_ttl)
        # the application side's: what unproven install and update events may cost a portal
        self.verification = VerificationGate(
            self.redis,
            keys,
            s.event_verify_per_minute,
            s.event_verify_burst,
            lock_ttl=s.connect_timeout + s.request_timeout + 5.0,
        )
        self.holds = OperatingHolds(self.redis, keys, s.operating_limit, s.operating_margin)
        self.ordering = Ordering(self.redis, keys, s.ordering_retention)
        self.portals = CachedPortals(self.registry, s)
        self.tokens = TokenKeeper(
            self.redis, self.registry, self._oauth(oauth_transport), keys, s.oauth_timeout, s.refresh_ahead
        )
        self.client = RestClient(
            transport, s.connect_timeout, s.request_timeout, public_only=not s.allow_private_portals
        )
        self.calls = CallPool(self.redis, keys)
        self.dispatcher = self._dispatcher()
        start = JobStart(self.redis, self.portals, self.registry, self.ledger, self.calls, self.holds)
        self.job_services = JobServices(
            s, self.portals, self.registry, self.ledger, self.outcomes, self.dispatcher, self.ordering, start
        )

    def _oauth(self, transport: httpx.BaseTransport | None) -> OAuthClient | None:
        """The application's OAuth client, if it has one (`B24Q_CLIENT_ID`: webhook-only pools have none)."""
        s = self.settings
        if not s.client_id:
            return None
        url = check_url(s.oauth_url, s.allow_insecure_http, "B24Q_OAUTH_URL")
        return OAuthClient(url, s.client_id, s.client_secret.get_secret_value(), s.oauth_timeout, transport)

    def _dispatcher(self) -> Dispatcher:
        s = self.settings
        return Dispatcher(
            Wire(
                self.client,
                self.limiter,
                self.holds,
                self.tokens,
                self.portals,
                self.ordering,
                self.ledger.backlog,
                self.redis,
                self.ledger,
            ),
            LaneConfig(
                batch_max=s.batch_max,
                gather=s.gather_ms / 1000.0,
                gather_max=s.gather_max_ms / 1000.0,
                merge_max=s.merge_max,
                max_reserve=min(5.0, s.permit_wait),
            ),
            in_flight_timeout=s.request_timeout * 2 + s.oauth_timeout * 4 + 30,
            pool=self.calls,
            share_max_rate=s.share_max_rate,
            pressure=self._pressure,
        )

    def _pressure(self, portal: str) -> tuple[int, int]:
        """A portal's unfinished jobs pool-wide and calls waiting in the call pool, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        self.ledger.read_backlog(portal, pipe)
        self.calls.read_depth(portal, pipe)
        backlog, waiting = pipe.execute()
        return int(backlog or 0), int(waiting or 0)

    def finish_sending(self) -> None:
        """A stopping worker (its own jobs done): let each lane finish the request on the wire and answer the
        other workers' jobs it carries, rather than leave them to be retried when this worker's heartbeat
        expires (and applied twice). Bounded by one slot's wait, a request and a token refresh."""
        s = self.settings
        busy = self.dispatcher.drain(self.dispatcher.config.max_reserve + s.request_timeout + s.oauth_timeout)
        if busy:
            log.warning(
                "stopping with requests still on the wire for %d portal(s): their jobs will be retried", len(busy)
            )

    def close(self) -> None:
        """Stop this runtime's threads (the call pool's listener) and release its HTTP connections."""
        self.calls.close()
        self.client.close()


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
