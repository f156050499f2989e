"""Helpers for asserting on recorded request times (``state()["accepted_times"]``)."""

from __future__ import annotations

from collections.abc import Iterable


def max_in_window(times: Iterable[float], window: float) -> int:
    """The largest number of timestamps inside any half-open window of ``window`` seconds.

    For asserting rate behaviour from ``state()["accepted_times"]``, e.g. ``max_in_window(t, 1.0) <= burst + rate``.
    """
    ts = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
