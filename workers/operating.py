"""Holds on (portal, method) for Bitrix24's operating-time limit.

Each answer's `time` block reports the method's accumulated execution time (`operating`, seconds in
the last 10 minutes) and when the oldest minute drops out (`operating_reset_at`). When a method is
close to the limit, or the portal answered 429 OPERATION_TIME_LIMIT, that method is held for that
portal until the reset, while its other methods keep flowing. Portals that send no `time` block
(self-hosted ones) are simply never held pre-emptively.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

#: How long to hold a method after a 429 when no `operating_reset_at` is known.
DEFAULT_HOLD = 60.0


class OperatingHolds:
    """Record `time` blocks and answer "is this method held, and until when" for the whole pool."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "b24q",
        limit: float = 480.0,
        margin: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._limit = limit
        self._margin = margin
        self._clock = clock

    def _hold_key(self, portal: str, method: str) -> str:
        return f"{self._prefix}:hold:{{{portal}}}:{method}"

    def _reset_key(self, portal: str) -> str:
        return f"{self._prefix}:opreset:{{{portal}}}"

    def record(self, portal: str, method: str, time_block: Mapping[str, Any] | None) -> float | None:
        """Note an answer's `time` block; hold the method if its budget is nearly spent. Returns the hold."""
        if not isinstance(time_block, Mapping):
            return None
        try:
            operating = float(time_block.get("operating") or 0.0)
            reset_at = float(time_block.get("operating_reset_at") or 0.0)
        except (TypeError, ValueError):
            return None
        if reset_at:
            self._client.hset(self._reset_key(portal), method, reset_at)
        if operating >= self._limit - self._margin and reset_at > self._clock():
            self.hold(portal, method, reset_at)
            return reset_at
        return None

    def blocked(self, portal: str, method: str) -> float:
        """The portal answered 429 for `method`: hold it until the last known reset. Returns the hold end."""
        now = self._clock()
        raw = self._client.hget(self._reset_key(portal), method)
        until = float(raw) if raw is not None and float(raw) > now else now + DEFAULT_HOLD
        self.hold(portal, method, until)
        return until

    def hold(self, portal: str, method: str, until: float) -> None:
        ttl_ms = max(1, int((until - self._clock()) * 1000))
        self._client.set(self._hold_key(portal, method), f"{until:.3f}", px=ttl_ms)

    def held_until(self, portal: str, methods: Iterable[str]) -> dict[str, float]:
        """For each of `methods` that is held now, the time its hold ends."""
        methods = list(methods)
        if not methods:
            return {}
        values = self._client.mget([self._hold_key(portal, m) for m in methods])
        now = self._clock()
        return {m: float(v) for m, v in zip(methods, values, strict=True) if v is not None and float(v) > now}
