"""Workers killed with SIGKILL at random moments (mid-batch too) while thousands of mixed jobs run."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.conftest import (
    PRODUCTION,
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
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", BROKERS)
def test_sigkilled_workers_lose_no_job(domain: str, broker: str, figures: dict[str, Any]) -> None:
    stack = make_fault_stack(workers=3, concurrency=64, **PRODUCTION, **on_broker(broker))
    try:
        portals = [f"p{i}-{domain}" for i in range(3)]
        for portal in portals:
            add_portal(stack, portal, rate=2.0, burst=10)
            # every request is in flight for a while, so kills land mid-batch as well as between batches
            stack.emulator.set_faults(portal, latency=0.5)
        jobs = [job for portal in portals for job in mixed_jobs(portal, 1000)]
        started = time.monotonic()
        ids = enqueue(jobs)
        enqueued = time.monotonic() - started
        rng = random.Random(11)
        kills: list[float] = []
        while len(kills) < 5:
            time.sleep(rng.uniform(1.0, 2.0))
            victim = rng.choice(stack.live_workers())
            victim.kill(signal.SIGKILL)
            victim.wait(10)
            kills.append(round(time.monotonic() - started, 1))
            stack.start_workers(1, concurrency=64, extra=QUICK, wait=False)  # the supervisor's restart
        last_kill = time.monotonic()
        # at the default visibility timeout (600 s) only dead-worker recovery brings the killed workers'
        # jobs back within this bound (about 2 x worker_dead_after); then the pool drains what is left
        found, backlog = wait_drained(ids, timeout=90)
        recovery = time.monotonic() - last_kill
        terminal_after_last_kill = _all_terminal_after(ids, last_kill)
        counts: Counter[str] = Counter()
        for portal in portals:
            counts.update(applied_counts(stack.emulator.state(portal)))
        result = outcome(jobs, ids, found, counts)
        # jobs whose call a killed worker was sending for them (the pool-wide call queue): retried
        rt = get_runtime()
        errors_seen = Counter(
            code
            for i in ids
            for code in ("SENDER_LOST", "CALL_LOST", "LANE_TIMEOUT")
            if code in json.dumps((rt.ledger.get(i) or {}).get("events", []))
        )
        figures.update(
            result,
            enqueue_s=round(enqueued, 1),
            kills=len(kills),
            kill_times_s=kills,
            retried_after=dict(errors_seen),
            recovery_s=round(recovery, 1),
            total_s=round(time.monotonic() - started, 1),
            broker_left=backlog,
            kinds=dict(Counter(kind for kind, _ in jobs)),
        )
        figures.update(all_terminal_after_last_kill_s=terminal_after_last_kill)
        assert result["lost"] == 0, result
        assert result["applied"] + result["superseded"] + result["dead_lettered"] == len(ids)
        assert backlog == {"queued": 0, "unacked": 0}
        if broker == "rabbitmq":  # (the bound: every job terminal within 30 s of the last kill)
            assert terminal_after_last_kill <= 30, terminal_after_last_kill
    finally:
        stack.__exit__(None, None, None)


def _all_terminal_after(ids: list[str], moment: float) -> float:
    """Seconds from `moment` (monotonic) to the last job's terminal event, from the ledger's event times."""
    rt = get_runtime()
    last = max(
        float(e.get("t", 0))
        for i in ids
        for e in (rt.ledger.get(i) or {"events": []})["events"]
        if e.get("state") in ("applied", "superseded", "dead")
    )
    return round(last - (time.time() - (time.monotonic() - moment)), 1)


def test_a_message_taken_by_a_dying_worker_is_published_again(domain: str, figures: dict[str, Any]) -> None:
    """The window kombu cannot cover: BRPOP took the message, the worker died before writing it to
    `unacked`. Simulated exactly: the message is popped from the queue and dropped."""
    stack = make_fault_stack(workers=0)
    try:
        add_portal(stack, domain)
        jobs = mixed_jobs(domain, 5)
        ids = enqueue(jobs)
        rt = get_runtime()
        taken = rt.redis.rpop(rt.settings.queue)  # the oldest message, as a worker's BRPOP takes it
        assert taken is not None and ids[0].encode() in taken
        started = time.monotonic()
        stack.start_workers(1, concurrency=8, extra=QUICK)
        # a reconciler round finds it: reconcile_grace, then up to two rounds (40 s at the fault suite's 8/3 s)
        found, _backlog = wait_drained(ids, timeout=settle_bound(40, reconciler=True))
        recovered_after = time.monotonic() - started
        counts = applied_counts(stack.emulator.state(domain))
        result = outcome(jobs, ids, found, counts)
        record = rt.ledger.get(ids[0])
        assert record is not None
        whys = [e.get("why", "") for e in record["events"]]
        figures.update(
            result,
            recovered_after_s=round(recovered_after, 1),
            reconcile_grace_s=rt.settings.reconcile_grace,
            reconcile_interval_s=rt.settings.reconcile_interval,
        )
        assert result["lost"] == 0, result
        assert found[ids[0]] in ("applied", "superseded")  # (a newer sender update may take its place)
        assert result["extra_applications"] == 0
        assert any("reconciler" in why for why in whys), record["events"]
    finally:
        stack.__exit__(None, None, None)
