"""A portal's request bucket: the rate and burst Bitrix24 enforces for its plan, and the share b24q uses."""

from __future__ import annotations

from dataclasses import dataclass

from workers.settings import PLAN_LIMITS, Settings


@dataclass(frozen=True)
class Limits:
    """A portal's bucket as the server enforces it (`rate` per second, `burst`) and as we use it."""

    rate: float
    burst: int
    headroom: float = 0.0
    margin: int = 0

    @classmethod
    def of(cls, plan: str, rate: float, burst: int, settings: Settings) -> Limits:
        """A portal's limits: its own `rate`/`burst` where set (non-zero), else its plan's."""
        plan_rate, plan_burst = PLAN_LIMITS.get(plan, PLAN_LIMITS["standard"])
        return cls(rate or plan_rate, burst or plan_burst, settings.headroom, settings.burst_margin)

    @property
    def our_rate(self) -> float:
        return self.rate * (1.0 - self.headroom)

    @property
    def our_burst(self) -> int:
        """The burst b24q spends: the portal's (less the headroom) less a margin for network jitter, which
        is `B24Q_BURST_MARGIN` requests but never more than a tenth of the burst (a burst of 10 keeps 9)."""
        usable = int(self.burst * (1.0 - self.headroom))
        return max(1, usable - min(self.margin, max(1, usable // 10)))
