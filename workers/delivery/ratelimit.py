"""The pool-wide request limiter: one GCRA bucket per portal, in Redis, shared by every worker.

Bitrix24 throttles each portal with a leaky bucket (2 req/s drain, 50 burst on standard plans;
5/250 on Enterprise). Celery's `rate_limit` is per worker process, so it cannot keep a pool under
that; this limiter can, because every process on every host reserves its slots from the same key,
timed by the Redis server's clock (`workers/delivery/lua/gcra.lua`).

A slot is *reserved*: the caller learns how long to wait and commits to sending then. That lets a
worker sleep exactly as long as needed instead of polling, and lets jobs pile up meanwhile, so each
slot carries a full `batch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from workers.keys import DEFAULT_KEYS, Keys
from workers.portals.limits import Limits

_SCRIPT = (Path(__file__).parent / "lua" / "gcra.lua").read_text()


@dataclass(frozen=True)
class Permit:
    """The answer to `reserve`: `granted` means send after `wait` seconds; otherwise try after `wait`.
    `slack`: how much later than that a granted slot may still be used at no cost to the portal's bucket
    (it keeps draining the requests before it meanwhile)."""

    granted: bool
    wait: float
    slack: float = 0.0


class RateLimiter:
    """GCRA limiter keyed by portal.

    Parameters:
        client: a redis-py client (the one the pool shares).
        keys: the Redis key layout (`B24Q_KEY_PREFIX`).
        bucket: a bucket's Redis key from its name; portals' buckets by default (`Keys.bucket`), the HTTP
            intake's API keys with `Keys.api_bucket`.

    Examples:
        >>> limiter = RateLimiter(redis_client)               # doctest: +SKIP
        >>> limiter.reserve("portal-a", Limits(2.0, 50), max_wait=5.0)  # doctest: +SKIP
        Permit(granted=True, wait=0.0)
    """

    def __init__(
        self, client: redis.Redis, keys: Keys = DEFAULT_KEYS, bucket: Callable[[str], str] | None = None
    ) -> None:
        self._client = client
        self._keys = keys
        self._bucket = bucket or keys.bucket
        self._script = client.register_script(_SCRIPT)

    def reserve(self, portal: str, limits: Limits, max_wait: float) -> Permit:
        """Take the next slot if it comes within `max_wait` seconds."""
        if limits.our_rate <= 0:
            return Permit(True, 0.0)
        granted, wait, *slack = self._script(
            keys=[self._bucket(portal)],
            args=["reserve", 1.0 / limits.our_rate, limits.our_burst, max_wait],
        )
        return Permit(bool(int(granted)), max(0.0, float(wait)), max(0.0, float(slack[0])) if slack else 0.0)

    def set_full(self, portal: str, limits: Limits) -> float:
        """The portal answered QUERY_LIMIT_EXCEEDED: its bucket is at the plan's threshold.

        Returns the seconds until the next slot. The refusal is counted (`refusals`).
        """
        self._client.hincrby(self._keys.refusals(), portal, 1)
        if limits.our_rate <= 0:
            return 0.0
        _, wait = self._script(
            keys=[self._bucket(portal)], args=["full", 1.0 / limits.our_rate, limits.our_burst, limits.burst]
        )
        return max(0.0, float(wait))

    def refusals(self) -> dict[str, int]:
        """QUERY_LIMIT_EXCEEDED answers so far, by portal."""
        return {k.decode(): int(v) for k, v in self._client.hgetall(self._keys.refusals()).items()}

    def level(self, portal: str, limits: Limits) -> float:
        """Requests the bucket holds now (0 = empty), from the stored TAT; for status views."""
        raw = self._client.get(self._bucket(portal))
        if raw is None or limits.our_rate <= 0:
            return 0.0
        seconds, micros = self._client.time()
        now = seconds + micros / 1e6
        return max(0.0, (float(raw) - now) * limits.our_rate)
