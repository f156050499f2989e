"""The GCRA limiter on a real redis-server: burst, pacing, 503 sync, and several processes sharing it."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis

from workers.delivery.ratelimit import Limits, Permit, RateLimiter
from workers.localdev.redisserver import RedisServer


def test_burst_then_one_per_interval(rclient: redis.Redis) -> None:
    limiter = RateLimiter(rclient)
    limits = Limits(rate=10.0, burst=5)
    waits = [limiter.reserve("p", limits, max_wait=5).wait for _ in range(8)]
    assert waits[:5] == pytest.approx([0] * 5, abs=0.02)
    assert waits[5:] == pytest.approx([0.1, 0.2, 0.3], abs=0.03)


def test_refusal_beyond_max_wait_takes_no_slot(rclient: redis.Redis) -> None:
    limiter = RateLimiter(rclient)
    limits = Limits(rate=2.0, burst=1)
    assert limiter.reserve("p", limits, max_wait=0).granted
    refused = limiter.reserve("p", limits, max_wait=0.1)
    assert not refused.granted and refused.wait == pytest.approx(0.5, abs=0.05)
    assert limiter.reserve("p", limits, max_wait=1).wait == pytest.approx(0.5, abs=0.05)


def test_portals_have_separate_buckets(rclient: redis.Redis) -> None:
    limiter = RateLimiter(rclient)
    limits = Limits(rate=1.0, burst=1)
    assert limiter.reserve("a", limits, 0).granted
    assert limiter.reserve("b", limits, 0).granted
    assert not limiter.reserve("a", limits, 0).granted


def test_headroom_and_margin_shrink_what_we_use() -> None:
    limits = Limits(rate=2.0, burst=50, headroom=0.2, margin=5)
    assert limits.our_rate == pytest.approx(1.6)
    assert limits.our_burst == 36  # 40 usable, less a margin of at most a tenth of it
    assert Limits(rate=2.0, burst=50, margin=5).our_burst == 45
    assert Limits(rate=4.0, burst=10, margin=5).our_burst == 9  # a small burst keeps nine tenths
    assert Limits(rate=5.0, burst=250, margin=5).our_burst == 245
    assert Limits(rate=1.0, burst=1, margin=5).our_burst == 1


def test_set_full_waits_until_the_server_bucket_drained_below_ours(rclient: redis.Redis) -> None:
    limiter = RateLimiter(rclient)
    limits = Limits(rate=10.0, burst=40, margin=3)  # we use 37 of the server's 40
    wait = limiter.set_full("p", limits)
    # full at 40 and the refused request counted too: the server must drain 5 requests (0.5 s) before we
    # are back at 37 with one free
    assert wait == pytest.approx(0.5, abs=0.03)
    assert limiter.reserve("p", limits, max_wait=5).wait == pytest.approx(0.5, abs=0.03)


def test_each_refusal_adds_its_own_request_to_the_wait(rclient: redis.Redis) -> None:
    """Lanes refused together: each refused request counted at the server, so each adds one interval; with
    the threshold alone they came back while the server was still over it, and were refused again."""
    limiter = RateLimiter(rclient)
    limits = Limits(rate=10.0, burst=40, margin=3)
    waits = [limiter.set_full("p", limits) for _ in range(3)]
    assert waits == pytest.approx([0.5, 0.6, 0.7], abs=0.03)
    assert limiter.refusals() == {"p": 3}


def _hammer(url: str, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    client = redis.Redis.from_url(url)
    limiter = RateLimiter(client)
    limits = Limits(rate=20.0, burst=5)
    sent = []
    end = time.time() + seconds
    while time.time() < end:
        permit = limiter.reserve("shared", limits, max_wait=0.5)
        if not permit.granted:
            time.sleep(0.05)
            continue
        time.sleep(permit.wait)
        sent.append(time.time())
    out.put(sent)


def test_processes_together_never_exceed_the_rate(redis_server: RedisServer, rclient: redis.Redis) -> None:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_hammer, args=(redis_server.url, 3.0, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    times = sorted(t for _ in procs for t in queue.get(timeout=30))
    for p in procs:
        p.join()
    # 5 at once, then 20/s: in any window of w seconds at most 5 + 20 w requests (+1 for edges)
    for i, start in enumerate(times):
        for w in (0.25, 1.0, 2.0):
            count = sum(1 for t in times[i:] if t < start + w)
            assert count <= 5 + 20 * w + 2, (w, count)
    total_allowed = 5 + 20 * 3.0
    assert len(times) >= 0.9 * total_allowed  # and the pool gets (nearly) all it may have


def test_a_box_portal_is_not_throttled(rclient: redis.Redis, settings: object) -> None:
    from workers.portals.record import Portal

    limits = Portal("p", "webhook", "https://x.example/rest/1/c/", plan="box").limits(settings)  # type: ignore[arg-type]
    limiter = RateLimiter(rclient)
    assert limits.our_rate == 0
    assert all(limiter.reserve("p", limits, max_wait=0) == Permit(True, 0.0) for _ in range(500))
    assert (
        Portal("p", "webhook", "https://x.example/rest/1/c/", plan="box", rate=3.0, burst=10)
        .limits(
            settings  # type: ignore[arg-type]
        )
        .our_rate
        == 3.0
    )  # a box whose administrator set a limit
