"""The operating limit with a fake clock: 10 one-minute buckets, each expiring 10 minutes after its first call."""

from __future__ import annotations

import pytest

from emulator import OperatingMeter

from .conftest import FakeClock

KEY = ("app:x", "im.dialog.unread")


def test_block_only_after_total_exceeds_limit() -> None:
    clock = FakeClock()
    meter = OperatingMeter(limit=10.0, clock=clock)
    for _ in range(2):
        assert not meter.blocked(KEY)
        meter.add(KEY, 5.0)
    assert meter.total(KEY) == 10.0
    assert not meter.blocked(KEY)  # at the limit, not over it
    meter.add(KEY, 0.5)  # this call pushed it over and still completed
    assert meter.blocked(KEY)


def test_separate_keys_do_not_interfere() -> None:
    meter = OperatingMeter(limit=1.0, clock=FakeClock())
    meter.add(KEY, 5.0)
    assert meter.blocked(KEY)
    assert not meter.blocked(("app:x", "other.method"))
    assert not meter.blocked(("webhook:1:abc", KEY[1]))


def test_buckets_are_one_minute_and_expire_after_ten() -> None:
    clock = FakeClock(0.0)
    meter = OperatingMeter(limit=100.0, clock=clock)
    meter.add(KEY, 1.0)  # bucket A starts at t=0
    clock.advance(59)
    meter.add(KEY, 1.0)  # still bucket A
    clock.advance(2)  # t=61
    meter.add(KEY, 1.0)  # bucket B starts at t=61
    snap = meter.snapshot(KEY)
    assert snap.operating == 3.0
    assert snap.reset_at == 600.0  # A's first call + 10 minutes
    clock.now = 599.9
    assert meter.total(KEY) == 3.0
    clock.now = 600.0  # A drops out
    assert meter.total(KEY) == 1.0
    assert meter.snapshot(KEY).reset_at == 661.0
    clock.now = 661.0
    assert meter.total(KEY) == 0.0


def test_block_lifts_at_reset() -> None:
    clock = FakeClock(0.0)
    meter = OperatingMeter(limit=480.0, clock=clock)
    for minute in range(10):
        clock.now = minute * 60.0
        meter.add(KEY, 50.0)  # 500 s in total, spread over ten buckets
    assert meter.blocked(KEY)
    reset = meter.snapshot(KEY).reset_at
    assert reset == 600.0
    clock.now = reset
    assert meter.total(KEY) == 450.0
    assert not meter.blocked(KEY)


def test_never_more_than_ten_buckets() -> None:
    clock = FakeClock(0.0)
    meter = OperatingMeter(limit=None, clock=clock)
    for i in range(100):
        meter.add(KEY, 1.0)
        assert meter.total(KEY) == min(i + 1, 10)  # only the last ten minutes count
        clock.advance(60.0)
    assert meter.total(KEY) == 9.0  # the oldest of the ten expired exactly now
    assert not meter.blocked(KEY)


def test_snapshot_without_calls() -> None:
    meter = OperatingMeter(limit=480.0, clock=FakeClock(5.0))
    snap = meter.snapshot(KEY)
    assert snap.operating == 0.0
    assert snap.reset_at == pytest.approx(605.0)


def test_a_shorter_window_for_tests_keeps_ten_buckets() -> None:
    clock = FakeClock(0.0)
    meter = OperatingMeter(limit=3.0, clock=clock, window=20.0)
    meter.add(KEY, 2.0)  # bucket A at t=0
    clock.advance(1.9)
    meter.add(KEY, 2.0)  # still bucket A (2 s buckets)
    assert meter.blocked(KEY) and meter.snapshot(KEY).reset_at == 20.0
    clock.advance(0.2)
    meter.add(KEY, 0.5)  # bucket B at t=2.1
    clock.advance(17.9)  # t=20: bucket A is gone
    assert meter.total(KEY) == 0.5 and not meter.blocked(KEY)


def test_buckets_start_at_the_first_calls_whole_unix_second() -> None:
    """``operating_reset_at`` is that second plus the window, and the bucket drops out exactly then (limits.md)."""
    clock = FakeClock(0.0)
    meter = OperatingMeter(limit=1.0, clock=clock, wall=lambda: clock.now + 1_700_000_000.75)
    meter.add(KEY, 2.0)  # at wall …000.75: the bucket's second is …000
    snap = meter.snapshot(KEY)
    assert snap.reset_wall == 1_700_000_600 and snap.reset_at == 599.25
    clock.now = 599.0
    assert meter.blocked(KEY)
    clock.now = 599.25  # wall …600.0
    assert meter.total(KEY) == 0.0 and not meter.blocked(KEY)


def test_a_call_is_recorded_at_its_start() -> None:
    clock = FakeClock(10.0)
    meter = OperatingMeter(limit=None, clock=clock, wall=lambda: clock.now + 1_699_999_990.0)
    meter.add(KEY, 1.0, started=9.5, started_wall=1_699_999_999.5)  # began half a second ago, in the second …999
    assert meter.snapshot(KEY).reset_wall == 1_699_999_999 + 600
    assert meter.snapshot(KEY).reset_at == 9.0 + 600


def test_snapshot_without_calls_counts_from_this_second() -> None:
    clock = FakeClock(3.5)
    meter = OperatingMeter(limit=480.0, clock=clock, window=30.0, wall=lambda: clock.now + 1_700_000_000.0)
    snap = meter.snapshot(KEY)
    assert (snap.operating, snap.reset_wall, snap.reset_at) == (0.0, 1_700_000_033, 33.0)
