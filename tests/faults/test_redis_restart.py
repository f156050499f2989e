"""Redis crashes (SIGKILL) under load and comes back on the same port with the same append-only file
(appendfsync everysec): no job acknowledged as enqueued is lost, and producers and workers reconnect by
themselves."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.conftest import (
    KeepEnqueueing,
    add_portal,
    applied_counts,
    make_fault_stack,
    outcome,
    wait_drained,
)
from tests.integration.conftest import BROKERS, on_broker

pytestmark = pytest.mark.integration


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
