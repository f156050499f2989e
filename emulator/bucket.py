"""The Bitrix24 cloud request-rate limit: a leaky bucket per (portal, source IP).

Facts §1.1 (``b24restdocs:limits.md``, "Request Rate Limits", at 5988ed1): "1. Each application request
increases a virtual request counter in Bitrix24.  2. When the counter value exceeds the threshold X, the
following request is blocked with status 503 and error code QUERY_LIMIT_EXCEEDED.  3. The counter value
automatically decreases by Y once per second."  The older text the facts cite (``settings/performance/limits.md``
at d95f11b6) and the Russian page (apidocs.bitrix24.ru/limits.html) say the same of "each *incoming* request
from an application", and "each subsequent incoming request is blocked" once the counter exceeds X.

**Refused requests** (``refused_fill``).  The docs do not single out a refused request, and their wording
counts *each* request, refused or not; so by default a request answered 503 adds one to the counter too, with
no ceiling named (a client that keeps sending into a full bucket keeps it full, which is what the docs' advice
"decrease request frequency … retry with increasing delay … do not run multiple parallel series of requests
from a single IP address" guards against).  Neither reading contradicts "at no more than Y requests per
second you will not receive QUERY_LIMIT_EXCEEDED".  ``refused_fill=False`` is the other reading: a refused
request is not counted, so the first request after ``1/Y`` seconds gets through however many were refused
meanwhile.  That one is a guess with no source; it is what the emulator did before it followed the wording.

The threshold: a request is admitted while one more still fits under ``burst`` (so a burst from empty admits
``burst`` requests, and the next is refused).

The clock is injected so the arithmetic is unit-tested without sleeping.  The bucket is not thread-safe on its
own: the portal's lock guards it.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class LeakyBucket:
    """A leaky bucket counter; ``rate`` of ``None`` or ``0`` means unlimited.

    ``refused_fill``: whether a refused request adds to the counter too (the docs' wording, the default).
    """

    def __init__(self, rate: float | None, burst: int, clock: Clock, refused_fill: bool = True) -> None:
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self.refused_fill = refused_fill
        self._level = 0.0
        self._stamp = clock()

    @property
    def unlimited(self) -> bool:
        return not self.rate

    def configure(self, rate: float | None, burst: int, refused_fill: bool | None = None) -> None:
        """Change the limits in place, keeping the current fill level (as a plan change would)."""
        self._drain()
        self.rate = rate
        self.burst = burst
        if refused_fill is not None:
            self.refused_fill = refused_fill

    def _drain(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0 and self.rate:
            self._level = max(0.0, self._level - elapsed * self.rate)

    def level(self) -> float:
        """The counter after draining up to now (above ``burst`` after refusals when they fill the bucket)."""
        self._drain()
        return self._level

    def try_acquire(self) -> bool:
        """Drain, then admit the request if one more still fits under ``burst``.  A refused request adds to the
        counter as well when ``refused_fill`` is set."""
        if self.unlimited:
            return True
        self._drain()
        if self._level + 1 > self.burst:
            if self.refused_fill:
                self._level += 1
            return False
        self._level += 1
        return True

    def seconds_until_free(self) -> float:
        """How long until one more request would be admitted (0 if it would be now), if none is sent meanwhile."""
        if self.unlimited:
            return 0.0
        over = self.level() + 1 - self.burst
        return max(0.0, over / float(self.rate or 1.0))
