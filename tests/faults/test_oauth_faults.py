"""The OAuth server down or slow while tokens need a refresh: the refresh lock is never held forever, jobs
wait and resume, and the pool refreshes once (no double refresh: the emulator counts refreshes and the
invalid_grant a second use of a rotated refresh token would get)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.conftest import (
    QUICK,
    add_portal,
    applied_counts,
    enqueue,
    make_fault_stack,
    mixed_jobs,
    outcome,
    settle_bound,
    wait_drained,
)
from tests.integration.conftest import BROKERS, on_broker
from workers.localdev.localstack import LocalStack
from workers.redisurl import connect
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration

OAUTH_TIMEOUT = 2.5  # the refresh lock lives 2 x 2.5 + 5 = 10 s (at defaults: oauth_timeout 10 s, 25 s)


def settle_s() -> float:
    """How long the pool may take to settle: 60 s, or longer when the stack's settings need it (a waiting
    job's countdowns grow with its runs up to backoff_max, and the refresh lock may have to expire first)."""
    return settle_bound(60, retries=7, refresh=True)


def lock_ttl_bound_ms() -> float:
    """The refresh lock's TTL, as the stack's settings make it (tokens.py: 2 x oauth_timeout + 5 s)."""
    return (2 * get_runtime().settings.oauth_timeout + 5) * 1000


def lock_ttl_floor_ms() -> float:
    """The lock must outlive one OAuth call (tokens.py), or a live holder could lose it mid-refresh."""
    return get_runtime().settings.oauth_timeout * 1000


class LockWatch:
    """Every SET of a portal's refresh lock while it runs, read from Redis MONITOR, with the TTL it asked for
    (None: no PX, a lock that never expires). Sampling PTTL cannot test the bound when each refresh fails at
    once (an OAuth 503): the lock is held for a millisecond or so, and at defaults no 0.1 s sample saw it
    held in 68 refreshes; MONITOR sees every one, however short."""

    def __init__(self, portal: str) -> None:
        self.key = lock_key(portal)
        self.ttls: list[float | None] = []
        self.error: BaseException | None = None
        self._stop = f"b24q-test-lockwatch-stop-{uuid.uuid4().hex}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "MONITOR did not start"

    def _watch(self) -> None:
        try:
            s = get_runtime().settings
            # a client of its own: the runtime's has a read timeout, and MONITOR may be quiet for longer
            client = connect(s.redis_url, s.redis_sentinel_master, s.redis_sentinel_password.get_secret_value())
            try:
                with client.monitor() as monitor:
                    self._ready.set()
                    for command in monitor.listen():
                        words = command["command"].split(" ")
                        if self._stop in words:
                            return
                        if len(words) > 2 and words[0].upper() == "SET" and words[1] == self.key:
                            upper = [w.upper() for w in words]
                            px = upper.index("PX") if "PX" in upper else -1
                            self.ttls.append(float(words[px + 1]) if 0 < px < len(words) - 1 else None)
            finally:
                client.close()
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._ready.set()

    def stop(self) -> None:
        """Stop watching (`ttls` then holds every SET of the lock seen; `error` what stopped MONITOR early)."""
        get_runtime().redis.echo(self._stop)
        self._thread.join(10)
        if self._thread.is_alive() and self.error is None:
            self.error = TimeoutError("MONITOR did not stop")


@pytest.fixture(scope="module", params=BROKERS)
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    """One stack per broker: waiting jobs retry with countdowns (on RabbitMQ: in its delay queues)."""
    s = make_fault_stack(workers=2, concurrency=32, oauth_timeout=OAUTH_TIMEOUT, **on_broker(request.param))
    yield s
    s.__exit__(None, None, None)


def lock_key(portal: str) -> str:
    return get_runtime().keys.refresh_lock(portal)


def finish(
    stack: LocalStack, portal: str, jobs: list[tuple[str, dict[str, Any]]], ids: list[str], timeout: float
) -> dict[str, Any]:
    found, backlog = wait_drained(ids, timeout=timeout)
    state = stack.emulator.state(portal)
    result = outcome(jobs, ids, found, applied_counts(state))
    counters = state["counters"]
    failures = [int((get_runtime().ledger.get(i) or {}).get("failures") or 0) for i in ids]
    result.update(
        max_failures_of_a_job=max(failures),
        refreshes=counters["refreshes"],
        invalid_grants=counters["invalid_grants"],
        oauth_faults=counters["faults"].get("oauth_down", 0),
        broker_left=backlog,
        dead_codes=sorted({d.code for d in (get_runtime().dead.get(i) for i in ids) if d}),
    )
    return result


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_oauth_down_during_refresh_jobs_wait_and_resume(
    stack: LocalStack, domain: str, mode: str, figures: dict[str, Any]
) -> None:
    add_portal(stack, domain)
    stack.emulator.expire(domain)
    stack.emulator.set_faults(domain, oauth_down=mode)
    watch = LockWatch(domain)
    try:
        jobs = mixed_jobs(domain, 200)
        ids = enqueue(jobs)
        down_for = 15.0  # longer than a job's whole transient budget (8 failures, backoff capped at 2 s)
        time.sleep(down_for)
        stack.emulator.set_faults(domain, oauth_down=False)
        up = time.monotonic()
        result = finish(stack, domain, jobs, ids, timeout=settle_s())
        resumed_after = round(time.monotonic() - up, 1)
    finally:
        watch.stop()
    lock_ttls = watch.ttls
    figures.update(
        result,
        oauth_down_s=down_for,
        resumed_after_s=resumed_after,
        lock_sets=len(lock_ttls),
        lock_ttls_ms=sorted({t for t in lock_ttls if t is not None}),
        lock_ttl_bounds_ms=[lock_ttl_floor_ms(), lock_ttl_bound_ms()],
    )
    # the lock always expires: every refresh attempt (the outage's failed ones, the one that succeeds) takes
    # it with a TTL that outlives an OAuth call and stays within the bound the stack's settings give
    assert watch.error is None, f"MONITOR failed: {watch.error!r}"
    assert lock_ttls, "no refresh took the refresh lock"
    assert all(t is not None and lock_ttl_floor_ms() < t <= lock_ttl_bound_ms() for t in lock_ttls), lock_ttls
    assert result["lost"] == 0 and result["dead_lettered"] == 0, result
    assert result["refreshes"] == 1 and result["invalid_grants"] == 0, result
    assert result["oauth_faults"] > 0
    assert result["max_failures_of_a_job"] == 0  # waiting for the OAuth server spends no job's budget


def test_slow_oauth_server_one_refresh_while_the_pool_waits(
    stack: LocalStack, domain: str, figures: dict[str, Any]
) -> None:
    add_portal(stack, domain)
    stack.emulator.expire(domain)
    stack.emulator.set_faults(domain, oauth_delay=OAUTH_TIMEOUT * 0.6)  # slow, within the client's timeout
    jobs = mixed_jobs(domain, 200)
    ids = enqueue(jobs)
    result = finish(stack, domain, jobs, ids, timeout=settle_s())
    figures.update(result, oauth_delay_s=OAUTH_TIMEOUT * 0.6)
    assert result["lost"] == 0 and result["dead_lettered"] == 0, result
    assert result["refreshes"] == 1 and result["invalid_grants"] == 0, result


def test_a_refresh_lock_holder_killed_mid_refresh_does_not_block_the_portal(
    stack: LocalStack, domain: str, figures: dict[str, Any]
) -> None:
    """Every worker is SIGKILLed while one of them waits on the OAuth server holding the portal's refresh
    lock. The lock expires by itself; a new worker refreshes once and the jobs are applied."""
    add_portal(stack, domain)
    stack.emulator.expire(domain)
    # the holder's refresh call hangs, then fails (nothing rotated at the OAuth server)
    stack.emulator.set_faults(domain, oauth_delay=4.0, oauth_down=True)
    jobs = mixed_jobs(domain, 100)
    ids = enqueue(jobs)
    rt = get_runtime()
    deadline = time.monotonic() + 20
    while rt.redis.pttl(lock_key(domain)) <= 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    held_ttl = rt.redis.pttl(lock_key(domain))
    assert held_ttl > 0, "no refresh started"
    for worker in stack.live_workers():
        worker.kill(signal.SIGKILL)
        worker.wait(10)
    killed = time.monotonic()
    time.sleep(4.5)  # the dead holder's request finishes at the OAuth server (refused: down)
    stack.emulator.set_faults(domain, oauth_delay=0.0, oauth_down=False)
    lock_left = rt.redis.pttl(lock_key(domain))
    stack.start_workers(2, concurrency=32, extra=QUICK)
    result = finish(stack, domain, jobs, ids, timeout=settle_s())
    figures.update(
        result,
        lock_ttl_when_killed_ms=held_ttl,
        lock_ttl_left_after_kill_ms=lock_left,
        recovered_after_kill_s=round(time.monotonic() - killed, 1),
    )
    assert 0 < held_ttl <= lock_ttl_bound_ms()
    assert result["lost"] == 0 and result["dead_lettered"] == 0, result
    assert result["refreshes"] == 1 and result["invalid_grants"] == 0, result
