"""Holds on (portal, method) for Bitrix24's operating-time limit.

Each answer's `time` block reports the method's accumulated execution time (`operating`, seconds in
the last 10 minutes) and when the oldest minute drops out (`operating_reset_at`). When a method is
close to the limit, or the portal answered 429 OPERATION_TIME_LIMIT, that method is held for that
portal until the reset, while its other methods keep flowing. Portals that send no `time` block
(self-hosted ones) are simply never held pre-emptively.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from workers.keys import DEFAULT_KEYS, Keys

#: How long to hold a method after a 429 when no `operating_reset_at` is known.
DEFAULT_HOLD = 60.0

# Every hold and reset is stored on the Redis server's clock (TIME), from a duration measured on the
# answer's own clock (`operating_reset_at - finish`): worker clocks never enter (tests/test_operating.py).
# KEYS[1] the portal's reset hash, KEYS[2] the method's hold key, KEYS[3] the portal's set of methods ever held;
# ARGV[1] method, ARGV[2] mode, ARGV[3] seconds.
#   record: remember the reset ARGV[3] s from now;  record+hold: and hold the method until then;
#   hold: hold it ARGV[3] s;  blocked (a 429): hold it until the remembered reset, or ARGV[3] s if none is ahead.
# Returns the seconds the method is held (or until the reset).
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local mode, secs = ARGV[2], tonumber(ARGV[3])
if mode == 'blocked' then
  local reset = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
  if reset > now then secs = reset - now end
elseif mode ~= 'hold' then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.3f', now + secs))
end
if mode ~= 'record' then
  redis.call('SET', KEYS[2], string.format('%.3f', now + secs), 'PX', math.max(1, math.floor(secs * 1000)))
  redis.call('SADD', KEYS[3], ARGV[1])
end
return tostring(secs)
"""


class OperatingHolds:
    """Record `time` blocks and answer "is this method held, and until when" for the whole pool.

    Times given to and returned by the methods are on this process's `clock`; only durations cross
    process boundaries, so a worker whose clock is off holds and releases with the others.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys = DEFAULT_KEYS,
        limit: float = 480.0,
        margin: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keys = keys
        self._limit = limit
        self._margin = margin
        self._clock = clock
        self._script = client.register_script(_SCRIPT)

    def _run(self, portal: str, method: str, mode: str, seconds: float) -> float:
        keys = [self._keys.operating_reset(portal), self._keys.hold(portal, method), self._keys.held_methods(portal)]
        return float(self._script(keys=keys, args=[method, mode, f"{seconds:.3f}"]))

    def record(self, portal: str, method: str, time_block: Mapping[str, Any] | None) -> float | None:
        """Note an answer's `time` block; hold the method if its budget is nearly spent. Returns the hold's
        end on this process's clock, or None."""
        operating, until_reset = self.reading(time_block)
        if until_reset is None or operating < min(self._limit / 2, self._limit - self._margin):
            # far from the limit nothing is held, and the pool needs the reset only near it: answers report a
            # method's operating as it climbs, so it is written from half the limit on (a round trip less per
            # request at every portal nowhere near it). Below that, the lane that sent keeps it (`blocked`'s
            # `reset_in`): a portal whose limit is lower than B24Q_OPERATING_LIMIT still holds until its reset
            return None
        hold = operating >= self._limit - self._margin
        self._run(portal, method, "record+hold" if hold else "record", until_reset)
        return self._clock() + until_reset if hold else None

    def reading(self, time_block: Mapping[str, Any] | None) -> tuple[float, float | None]:
        """An answer's `time` block: the method's operating seconds, and the seconds until its oldest minute
        drops out (None: no reset named, or one already past)."""
        if not isinstance(time_block, Mapping):
            return 0.0, None
        try:
            operating = float(time_block.get("operating") or 0.0)
            reset_at = float(time_block.get("operating_reset_at") or 0.0)
            finish = float(time_block.get("finish") or 0.0)
        except (TypeError, ValueError):
            return 0.0, None
        if not reset_at:
            return operating, None
        # how far the reset is, by the clock that named it (the portal's); without `finish`, by ours.
        # operating_reset_at is a whole second (cut, not rounded, on the portal): one more second, so the
        # first call after the hold finds the bucket gone instead of a second 429 and a default hold
        until_reset = reset_at + 1.0 - (finish or self._clock())
        return operating, until_reset if until_reset > 0 else None

    def blocked(self, portal: str, method: str, reset_in: float | None = None) -> float:
        """The portal answered 429 for `method`: hold it until the last reset the pool knows, else the one the
        caller's last answer named (`reset_in` seconds from now), else `DEFAULT_HOLD`. Returns the hold end."""
        fallback = reset_in if reset_in is not None and reset_in > 0 else DEFAULT_HOLD
        return self._clock() + self._run(portal, method, "blocked", fallback)

    def hold(self, portal: str, method: str, until: float) -> None:
        """Hold `method` until `until` on this process's clock."""
        self._run(portal, method, "hold", max(0.001, until - self._clock()))

    def holds(self, portals: Sequence[str]) -> dict[str, dict[str, float]]:
        """Every hold that exists now, per portal: method → its end on the Redis server's clock (for status
        views, which compare with Redis's TIME). Two round trips for any number of portals."""
        pipe = self._client.pipeline(transaction=False)
        for portal in portals:
            pipe.smembers(self._keys.held_methods(portal))
        methods = {p: sorted(m.decode() for m in found) for p, found in zip(portals, pipe.execute(), strict=True)}
        for portal, names in methods.items():
            for name in names:
                pipe.get(self._keys.hold(portal, name))
        replies = iter(pipe.execute())
        out: dict[str, dict[str, float]] = {}
        for portal, names in methods.items():
            ends = {name: float(v) for name, v in ((n, next(replies)) for n in names) if v is not None}
            out[portal] = ends
        return out

    def held_until(self, portal: str, methods: Iterable[str]) -> dict[str, float]:
        """For each of `methods` that is held now, the time its hold ends (on this process's clock)."""
        methods = list(methods)
        if not methods:
            return {}
        pipe = self._client.pipeline(transaction=False)
        self.queue_held(pipe, portal, methods)
        return self.held_from(methods, pipe.execute())

    def queue_held(self, pipe: Any, portal: str, methods: Sequence[str]) -> None:
        """Queue `held_until(portal, methods)` in a pipeline: one reply per method, for `held_from`."""
        for method in methods:
            pipe.pttl(self._keys.hold(portal, method))

    def held_from(self, methods: Sequence[str], replies: Sequence[int]) -> dict[str, float]:
        now = self._clock()
        return {m: now + ms / 1000.0 for m, ms in zip(methods, replies, strict=True) if ms > 0}
