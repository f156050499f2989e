"""The Bitrix24 resource ("operating") limit: seconds of execution per (app-or-webhook, method).

Facts §1.3: execution time is kept in 10 one-minute buckets; each bucket expires 10 minutes after the first call
recorded in it.  The check happens *before* a call: once the running total is over the limit, the next call to
that method by that app/webhook gets 429 ``OPERATION_TIME_LIMIT``; the call that pushed it over still completed.
``operating_reset_at`` is when the oldest bucket drops out.

A "call" costs whatever the portal says (``op_cost``): the emulator does no real work, so the cost is a knob
that tests turn up to reach the limit quickly.  ``window`` (600 s in Bitrix24, ten buckets of a tenth of
it) is a knob too, so that a test can see a hold end without waiting ten minutes.  One meter per portal;
keys are ``(subject, method)``.  Not thread-safe on its own: the portal's lock guards it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]

WINDOW_SECONDS = 600.0
MAX_BUCKETS = 10


@dataclass
class _Bucket:
    start: float
    seconds: float


@dataclass(frozen=True)
class OperatingSnapshot:
    """The running total and when (on the meter's clock) the oldest bucket expires."""

    operating: float
    reset_at: float


class OperatingMeter:
    """Ten one-minute buckets per key; ``limit`` of ``None`` disables the block (accounting still runs)."""

    def __init__(self, limit: float | None, clock: Clock, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
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

    def add(self, key: Hashable, seconds: float) -> None:
        """Record a call: into the current minute's bucket, or a new bucket if the last one is a minute old."""
        now = self._clock()
        buckets = self._live(key, now)
        if buckets and now - buckets[-1].start < self.window / MAX_BUCKETS:
            buckets[-1].seconds += seconds
            return
        buckets.append(_Bucket(start=now, seconds=seconds))
        if len(buckets) > MAX_BUCKETS:  # cannot happen with buckets of a tenth of the window; keep the invariant
            del buckets[0]
        self._buckets[key] = buckets

    def snapshot(self, key: Hashable) -> OperatingSnapshot:
        """Total and reset time; with no bucket yet the reset is a full window from now (as in the docs' example)."""
        now = self._clock()
        buckets = self._live(key, now)
        if not buckets:
            return OperatingSnapshot(0.0, now + self.window)
        return OperatingSnapshot(sum(b.seconds for b in buckets), buckets[0].start + self.window)

    def all_totals(self) -> dict[Hashable, float]:
        now = self._clock()
        return {key: sum(b.seconds for b in self._live(key, now)) for key in list(self._buckets)}

    def clear(self) -> None:
        self._buckets.clear()
