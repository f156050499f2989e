"""The leaky bucket with a fake clock: burst, continuous drain, and both readings of refused requests (they add
to the counter by default, as the docs' "each application request increases a virtual request counter" reads;
``refused_fill=False`` is the other reading)."""

from __future__ import annotations

import pytest

from emulator import LeakyBucket

from .conftest import FakeClock


def test_burst_then_refuse() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=2.0, burst=50, clock=clock)
    assert all(bucket.try_acquire() for _ in range(50))
    assert not bucket.try_acquire()
    assert bucket.level() == pytest.approx(51)  # the refused request counted too (the default reading)


def test_drains_continuously_at_rate() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=2.0, burst=50, clock=clock, refused_fill=False)  # the drain alone
    for _ in range(50):
        bucket.try_acquire()
    clock.advance(0.25)  # drains 0.5: still no room for a whole request
    assert not bucket.try_acquire()
    clock.advance(0.25)  # 1.0 drained
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.advance(10)  # 20 drained
    assert bucket.level() == pytest.approx(30)
    assert sum(bucket.try_acquire() for _ in range(25)) == 20


def test_refused_requests_fill_the_bucket_by_default() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=1.0, burst=3, clock=clock)
    assert bucket.refused_fill
    for _ in range(3):
        assert bucket.try_acquire()
    for _ in range(5):
        assert not bucket.try_acquire()
    assert bucket.level() == pytest.approx(8)  # 3 admitted + 5 refused
    clock.advance(1.0)
    assert not bucket.try_acquire()  # 7 left after a second: still no room (and this one counts: 8)
    assert bucket.seconds_until_free() == pytest.approx(6.0)
    clock.advance(6.0)  # 8 - 6 = 2: one more fits
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_refused_requests_do_not_add_when_told() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=1.0, burst=3, clock=clock, refused_fill=False)
    for _ in range(3):
        assert bucket.try_acquire()
    for _ in range(100):
        assert not bucket.try_acquire()
    assert bucket.level() == pytest.approx(3)
    clock.advance(1.0)
    assert bucket.try_acquire()


def test_configure_switches_the_reading_and_keeps_level() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=1.0, burst=2, clock=clock)
    assert bucket.try_acquire() and bucket.try_acquire() and not bucket.try_acquire()
    bucket.configure(rate=1.0, burst=2, refused_fill=False)
    assert not bucket.try_acquire()
    assert bucket.level() == pytest.approx(3)  # the first refusal counted, the second did not
    bucket.configure(rate=1.0, burst=2)  # None keeps the reading
    assert not bucket.refused_fill


def test_steady_rate_never_refused() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=2.0, burst=50, clock=clock)
    for _ in range(1000):
        assert bucket.try_acquire()
        clock.advance(0.5)


def test_level_never_negative_and_seconds_until_free() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=5.0, burst=250, clock=clock)
    clock.advance(100)
    assert bucket.level() == 0
    for _ in range(250):
        bucket.try_acquire()
    assert bucket.seconds_until_free() == pytest.approx(0.2)


@pytest.mark.parametrize("rate", [0, 0.0, None])
def test_unlimited(rate: float | None) -> None:
    bucket = LeakyBucket(rate=rate, burst=1, clock=FakeClock())
    assert all(bucket.try_acquire() for _ in range(10_000))


def test_configure_keeps_level() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(rate=2.0, burst=5, clock=clock)
    for _ in range(5):
        bucket.try_acquire()
    bucket.configure(rate=2.0, burst=10)
    assert sum(bucket.try_acquire() for _ in range(10)) == 5
