"""Redis crashes (SIGKILL) under load and comes back on the same port with the same append-only file
(appendfsync everysec): no job acknowledged as enqueued is lost, and producers and workers reconnect by
themselves."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.conftest import (
    KeepEnqueueing,
    add_portal,
    applied_counts,
    broker_backlog,
    make_fault_stack,
    outcome,
    wait_drained,
    wait_terminal,
)
from tests.integration.conftest import BROKERS, on_broker
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration

#: Seconds after the last restart by which every job is terminal: well under the in-flight bound (80 s).
BOUND = 40.0


@pytest.mark.parametrize("broker", BROKERS)
def test_redis_crash_loses_no_acknowledged_job(domain: str, broker: str, figures: dict[str, Any]) -> None:
    """On RabbitMQ Redis holds only the state: the messages stay in RabbitMQ, and jobs that meet Redis down
    go back to their queue (each such return counts towards the delivery limit, which must not end them)."""
    stack = make_fault_stack(workers=2, concurrency=64, **on_broker(broker))
    try:
        add_portal(stack, domain, rate=5.0, burst=20)
        stack.emulator.set_faults(domain, latency=0.1)
        load = KeepEnqueueing(domain)
        time.sleep(4.0)
        crash = time.monotonic()
        down = stack.restart_redis(down=3.0)  # SIGKILL, 3 s down, start on the same port and AOF
        back = time.monotonic()
        # producers reconnect by themselves: the same thread, the same Runtime, nothing rebuilt
        load.wait_acked_after(back)
        time.sleep(3.0)
        ids, jobs = load.stop()
        found, backlog = wait_drained(ids, timeout=90)
        drained = time.monotonic() - back
        counts: Counter[str] = applied_counts(stack.emulator.state(domain))
        result = outcome(jobs, ids, found, counts)
        before = load.ids_between(float("-inf"), crash - 1.0)
        after = load.ids_between(back)
        lost_before = [i for i in before if found[i] not in ("applied", "superseded")]
        figures.update(
            result,
            down_s=round(down, 1),
            enqueued_before_crash=len(before),
            enqueued_after_restart=len(after),
            producer_errors=len(load.failures),
            producer_error_types=sorted({name for _, name in load.failures}),
            drained_after_restart_s=round(drained, 1),
            broker_left=backlog,
        )
        assert before and after, "the producer did not recover by itself"
        assert lost_before == [], lost_before[:5]  # acknowledged ≥ 1 s before the crash: survived
        assert result["lost"] == 0, result
        assert result["dead_lettered"] == 0, result
        # the workers reconnected too (sender updates of one code may supersede each other: README, Ordering)
        assert "applied" in {found[i] for i in after} <= {"applied", "superseded"}
    finally:
        stack.__exit__(None, None, None)


def test_pooled_calls_meet_redis_crashes_without_waiting_out_the_in_flight_bound(
    domain: str, figures: dict[str, Any]
) -> None:
    """On RabbitMQ, jobs keep running while Redis is down (their messages are not in it). A rate-limited
    portal's calls wait in the pool-wide call list and any worker may carry them (workers.delivery.callpool):
    each such call gets its outcome, or fails fast and is retried, across Redis crashes; none waits out the
    in-flight bound (request_timeout x 2 + oauth_timeout x 4 + 30 s: 80 s here)."""
    stack = make_fault_stack(workers=2, concurrency=32, **on_broker("rabbitmq"))
    try:
        add_portal(stack, domain, rate=5.0, burst=20)
        stack.emulator.set_faults(domain, latency=0.5)
        load = KeepEnqueueing(domain)
        time.sleep(3.0)
        for _ in range(3):
            stack.restart_redis(down=3.0)
            time.sleep(2.5)
        back = time.monotonic()
        ids, jobs = load.stop()
        found = wait_terminal(ids, timeout=BOUND)
        terminal = time.monotonic() - back
        counts: Counter[str] = applied_counts(stack.emulator.state(domain))
        result = outcome(jobs, ids, found, counts)
        records = get_runtime().ledger.get_many(ids)
        timed_out = [i for i, r in records.items() if r and "LANE_TIMEOUT" in json.dumps(r["events"])]
        figures.update(
            result,
            terminal_after_last_restart_s=round(terminal, 1),
            lane_timeouts=len(timed_out),
            broker_left=broker_backlog(),
        )
        assert result["lost"] == 0, result
        assert timed_out == [], records[timed_out[0]]
    finally:
        stack.__exit__(None, None, None)
