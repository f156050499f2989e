"""The Bitrix24 cloud request-rate limit: a leaky bucket per (portal, source IP).

Facts §1.1: every request adds one to a counter that drains continuously at ``rate`` per second; once the
counter would go above ``burst`` the request is refused with 503 ``QUERY_LIMIT_EXCEEDED``.  A refused request
does not add to the counter (otherwise a client hammering a full bucket would never get through, which is not
what the docs describe: "at Y requests per second or less you never get QUERY_LIMIT_EXCEEDED").

The clock is injected so the arithmetic is unit-tested without sleeping.  The bucket is not thread-safe on its
own: the portal's lock guards it.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class LeakyBucket:
    """A leaky bucket counter; ``rate`` of ``None`` or ``0`` means unlimited."""

    def __init__(self, rate: float | None, burst: int, clock: Clock) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._level = 0.0
        self._stamp = clock()

    @property
    def unlimited(self) -> bool:
        return not self.rate

    def configure(self, rate: float | None, burst: int) -> None:
        """Change the limits in place, keeping the current fill level (as a plan change would)."""
        self._drain()
        self.rate = rate
        self.burst = burst

    def _drain(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0 and self.rate:
            self._level = max(0.0, self._level - elapsed * self.rate)

    def level(self) -> float:
        """The counter after draining up to now."""
        self._drain()
        return self._level

    def try_acquire(self) -> bool:
        """Drain, then admit the request if one more still fits under ``burst``."""
        if self.unlimited:
            return True
        self._drain()
        if self._level + 1 > self.burst:
            return False
        self._level += 1
        return True

    def seconds_until_free(self) -> float:
        """How long until one more request would be admitted (0 if it would be now)."""
        if self.unlimited:
            return 0.0
        over = self.level() + 1 - self.burst
        return max(0.0, over / float(self.rate or 1.0))
