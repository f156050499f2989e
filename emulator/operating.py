"""The Bitrix24 resource ("operating") limit: seconds of execution per (app-or-webhook, method).

Facts §1.3: execution time is kept in 10 one-minute buckets; each bucket expires 10 minutes after the first call
recorded in it.  The check happens *before* a call: once the running total is over the limit, the next call to
that method by that app/webhook gets 429 ``OPERATION_TIME_LIMIT``; the call that pushed it over still completed.
``operating_reset_at`` is when the oldest bucket drops out.

**Whole seconds.**  ``operating_reset_at`` is a unix time in whole seconds ("Usually returned as an integer",
``b24restdocs:api-reference/data-types.md#time``), the oldest bucket's first call *cut* to its second plus ten
minutes: the docs' examples pair ``start`` 1778747192.910734 with 1778747792 (``limits.md``) and 1757424671.509725
with 1757425271 (``data-types.md``), and "if the first call in the basket started at 10:05:20 … operating_reset_at
will correspond to 10:15:20".  And "when the time from operating_reset_at arrives, the sum of the time in the
oldest basket is excluded from operating" (``limits.md`` at 5988ed1): so a bucket here starts at its first call's
whole unix second (the call's start, on the wall clock) and is gone exactly at the time it reports, not up to
a second later.

A "call" costs whatever the portal says (``op_cost``): the emulator does no real work, so the cost is a knob
that tests turn up to reach the limit quickly.  ``window`` (600 s in Bitrix24, ten buckets of a tenth of
it) is a knob too, so that a test can see a hold end without waiting ten minutes.  One meter per portal;
keys are ``(subject, method)``.  Not thread-safe on its own: the portal's lock guards it.

Two clocks: ``clock`` (monotonic, injectable) times everything; ``wall`` (unix seconds) only says where a whole
second begins and what to report.  Without ``wall`` the meter's own clock is taken as unix time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]

WINDOW_SECONDS = 600.0
MAX_BUCKETS = 10


@dataclass
class _Bucket:
    start: float  # on the meter's clock: the instant the first call's unix second began
    start_wall: int  # that unix second
    seconds: float


@dataclass(frozen=True)
class OperatingSnapshot:
    """The running total and when the oldest bucket expires: ``reset_at`` on the meter's clock, ``reset_wall``
    as the unix time ``operating_reset_at`` reports (whole seconds when the window is)."""

    operating: float
    reset_at: float
    reset_wall: float


class OperatingMeter:
    """Ten one-minute buckets per key; ``limit`` of ``None`` disables the block (accounting still runs)."""

    def __init__(
        self, limit: float | None, clock: Clock, window: float = WINDOW_SECONDS, wall: Clock | None = None
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._wall = wall or clock
        self._buckets: dict[Hashable, list[_Bucket]] = {}

    def _live(self, key: Hashable, now: float) -> list[_Bucket]:
        buckets = self._buckets.get(key)
        if not buckets:
            return []
        while buckets and now - buckets[0].start >= self.window:
            buckets.pop(0)
        return buckets

    def total(self, key: Hashable) -> float:
        return sum(b.seconds for b in self._live(key, self._clock()))

    def blocked(self, key: Hashable) -> bool:
        """True when the total is already over the limit, i.e. this call must be refused with 429."""
        if self.limit is None:
            return False
        return self.total(key) > self.limit

    def add(
        self, key: Hashable, seconds: float, *, started: float | None = None, started_wall: float | None = None
    ) -> None:
        """Record a call that began at ``started`` (meter clock) / ``started_wall`` (unix time), both now by
        default: into the current minute's bucket, or a new bucket, begun at that call's whole unix second,
        if the last one is a minute old."""
        now = self._clock()
        at = now if started is None else started
        at_wall = self._wall() if started_wall is None else started_wall
        buckets = self._live(key, now)
        if buckets and at - buckets[-1].start < self.window / MAX_BUCKETS:
            buckets[-1].seconds += seconds
            return
        second = math.floor(at_wall)
        buckets.append(_Bucket(start=at - (at_wall - second), start_wall=second, seconds=seconds))
        if len(buckets) > MAX_BUCKETS:  # cannot happen with buckets of a tenth of the window; keep the invariant
            del buckets[0]
        self._buckets[key] = buckets

    def snapshot(self, key: Hashable) -> OperatingSnapshot:
        """Total and reset time; with no bucket yet the reset is a full window from this second (as a first call
        now would have it)."""
        now = self._clock()
        buckets = self._live(key, now)
        if not buckets:
            wall = self._wall()
            second = math.floor(wall)
            return OperatingSnapshot(0.0, now - (wall - second) + self.window, second + self.window)
        oldest = buckets[0]
        return OperatingSnapshot(
            sum(b.seconds for b in buckets), oldest.start + self.window, oldest.start_wall + self.window
        )

    def all_totals(self) -> dict[Hashable, float]:
        now = self._clock()
        return {key: sum(b.seconds for b in self._live(key, now)) for key in list(self._buckets)}

    def clear(self) -> None:
        self._buckets.clear()
