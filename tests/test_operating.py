"""Operating-time holds are timed by the answer's own clock and Redis's, never by a worker's clock."""

from __future__ import annotations

import redis

from workers.delivery.operating import DEFAULT_HOLD, OperatingHolds
from workers.keys import Keys
from workers.settings import Settings

M = "im.dialog.unread"


def _holds(rclient: redis.Redis, settings: Settings, clock: float) -> OperatingHolds:
    return OperatingHolds(rclient, Keys(settings.key_prefix), limit=480.0, margin=10.0, clock=lambda: clock)


def test_a_spent_budget_holds_until_the_reset_the_answer_names(rclient: redis.Redis, settings: Settings) -> None:
    # the portal's clock says 1000, the reset is 30 s later by that clock (+1 s: it is a whole second);
    # this worker's clock is days off
    holds = _holds(rclient, settings, clock=5_000_000.0)
    until = holds.record("op0-acme", M, {"operating": 475.0, "operating_reset_at": 1030.0, "finish": 1000.0})
    assert until is not None and abs(until - (5_000_000.0 + 31.0)) < 0.5
    left = rclient.pttl(Keys(settings.key_prefix).hold("op0-acme", M))
    assert 30_000 < left <= 31_000
    # another worker, its clock days behind, sees the same hold for the same time
    other = _holds(rclient, settings, clock=1_000.0)
    held = other.held_until("op0-acme", [M, "messageservice.message.status.update"])
    assert list(held) == [M] and 30.0 < held[M] - 1_000.0 <= 31.0


def test_a_budget_with_room_holds_nothing_but_remembers_the_reset(rclient: redis.Redis, settings: Settings) -> None:
    holds = _holds(rclient, settings, clock=0.0)
    assert holds.record("op1-acme", M, {"operating": 300.0, "operating_reset_at": 1045.0, "finish": 1000.0}) is None
    assert holds.held_until("op1-acme", [M]) == {}
    # a 429 then holds until that reset (45 s on), however wrong this worker's clock is
    until = holds.blocked("op1-acme", M)
    assert 45.0 < until <= 46.01  # (the reset is kept to the millisecond)
    assert 45_000 < rclient.pttl(Keys(settings.key_prefix).hold("op1-acme", M)) <= 46_000


def test_far_from_the_limit_an_answer_writes_nothing(rclient: redis.Redis, settings: Settings) -> None:
    """Below half the limit no hold is near: the answer costs no round trip. A 429 there (a portal whose limit
    is lower than B24Q_OPERATING_LIMIT) holds until the reset the caller's last answer named, else the default."""
    holds = _holds(rclient, settings, clock=0.0)
    answer = {"operating": 239.0, "operating_reset_at": 1045.0, "finish": 1000.0}
    before = rclient.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert holds.record("op2-acme", M, answer) is None
    assert rclient.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) == before
    assert holds.reading(answer) == (239.0, 46.0)  # the reset 45 s on, and one second for its whole seconds
    assert 45.9 < holds.blocked("op2-acme", M, reset_in=46.0) <= 46.01
    assert abs(holds.blocked("op3-acme", M) - DEFAULT_HOLD) < 0.5


def test_a_429_with_no_known_reset_holds_for_the_default(rclient: redis.Redis, settings: Settings) -> None:
    holds = _holds(rclient, settings, clock=123.0)
    assert abs(holds.blocked("op-globex", M) - (123.0 + DEFAULT_HOLD)) < 0.5
    assert holds.held_until("op-globex", [M])


def test_answers_without_a_time_block_or_with_garbage_are_ignored(rclient: redis.Redis, settings: Settings) -> None:
    holds = _holds(rclient, settings, clock=0.0)
    assert holds.record("op-hooli", M, None) is None
    assert holds.record("op-hooli", M, {"operating": "lots", "operating_reset_at": 5}) is None
    assert holds.record("op-hooli", M, {"operating": 479.0}) is None  # no reset named: nothing to hold until
    assert holds.held_until("op-hooli", [M]) == {}


def test_hold_until_a_time_on_this_workers_clock(rclient: redis.Redis, settings: Settings) -> None:
    holds = _holds(rclient, settings, clock=50.0)
    holds.hold("op-initech", M, 80.0)
    assert 29.0 < holds.held_until("op-initech", [M])[M] - 50.0 <= 30.0


def test_bitrix24s_ten_minute_window_holds_for_the_rest_of_it(rclient: redis.Redis, settings: Settings) -> None:
    """The production window (bitrix24-facts.md: 480 s of execution per 10 minutes): a budget spent 20 s in
    holds for the 580 s left, on every worker; the fault suite's emulator runs a 30 s window instead."""
    holds = _holds(rclient, settings, clock=9_000_000.0)
    answer = {"operating": 471.0, "operating_reset_at": 1_000_580.0, "finish": 1_000_000.0}
    until = holds.record("op10-acme", M, answer)
    assert until is not None and 580.0 < until - 9_000_000.0 <= 581.0
    assert 580_000 < rclient.pttl(Keys(settings.key_prefix).hold("op10-acme", M)) <= 581_000
    # a worker whose clock is five minutes ahead holds it as long (the hold is a Redis TTL, not a time)
    ahead = _holds(rclient, settings, clock=9_000_300.0)
    assert 579.0 < ahead.held_until("op10-acme", [M])[M] - 9_000_300.0 <= 581.0
