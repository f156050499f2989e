"""Dead-worker recovery at the default visibility timeout (600 s): a killed worker's jobs come back in
seconds; a worker that is only slow keeps its jobs."""

from __future__ import annotations

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
    outcome,
    wait_drained,
    wait_terminal,
)
from tests.integration.conftest import on_broker
from workers.localdev.localstack import LocalStack
from workers.localdev.processes import Worker
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


def unread_jobs(portal: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    return [("mark-unread", {"portal": portal, "dialog_id": f"chat{i + 1}", "message_id": i + 1}) for i in range(n)]


def wait_running(ids: list[str], worker: Worker, timeout: float = 30) -> None:
    """Until every job is running (its call on the wire, held by `worker`)."""
    rt = get_runtime()
    deadline = time.monotonic() + timeout
    while True:
        found = rt.ledger.states(ids, "state")
        if all(state == "running" for (state,) in found.values()):
            return
        assert time.monotonic() < deadline, f"not all running on {worker.name}: {Counter(s for (s,) in found.values())}"
        time.sleep(0.05)


def recovery_notes(ids: list[str]) -> int:
    rt = get_runtime()
    return sum(
        1
        for i in ids
        for event in (rt.ledger.get(i) or {"events": []})["events"]
        if "went back to the queue" in event.get("why", "")
    )


def start_holding(stack: LocalStack, portal: str, n: int) -> tuple[list[tuple[str, dict[str, Any]]], list[str], Worker]:
    """One worker holds `n` jobs whose calls the portal answers slowly; a second worker stands by."""
    (holder,) = stack.start_workers(1, concurrency=64, extra=QUICK)
    jobs = unread_jobs(portal, n)
    ids = enqueue(jobs)
    wait_running(ids, holder)
    stack.start_workers(1, concurrency=64, extra=QUICK)  # the pool's other worker, ready before the fault
    return jobs, ids, holder


@pytest.mark.parametrize(
    ("broker", "in_flight"), [("redis", 1), ("redis", 8), ("redis", 64), ("rabbitmq", 1), ("rabbitmq", 64)]
)
def test_a_killed_workers_jobs_are_applied_within_seconds(
    domain: str, broker: str, in_flight: int, figures: dict[str, Any]
) -> None:
    """On Redis b24q's sweeper puts them back (about 2 x worker_dead_after); on RabbitMQ the broker does, as
    soon as the dead worker's connection closes, with no sweeper and no heartbeat keys at all."""
    stack = make_fault_stack(workers=0, **PRODUCTION, **on_broker(broker))
    try:
        portal = f"k{in_flight}-{domain}"
        add_portal(stack, portal, rate=0)
        stack.emulator.set_faults(portal, latency=3.0)  # the killed worker's calls are on the wire
        jobs, ids, holder = start_holding(stack, portal, in_flight)
        holder.kill(signal.SIGKILL)
        killed = time.monotonic()
        holder.wait(10)
        stack.emulator.set_faults(portal, latency=0.0)
        found, backlog = wait_drained(ids, timeout=60)
        recovered = time.monotonic() - killed
        result = outcome(jobs, ids, found, applied_counts(stack.emulator.state(portal)))
        figures.update(
            result,
            in_flight=in_flight,
            kill_to_all_applied_s=round(recovered, 1),
            requeued_by_recovery=recovery_notes(ids),
            settings=PRODUCTION,
        )
        assert result["lost"] == 0, result
        assert result["applied"] == in_flight, result
        assert backlog == {"queued": 0, "unacked": 0}
        if broker == "redis":
            # 600 s would pass before kombu's own visibility timeout restored them
            assert recovered <= 30, recovered
            assert recovery_notes(ids) == in_flight
        else:
            assert recovered <= 15, recovered
            assert recovery_notes(ids) == 0
            assert not get_runtime().redis.exists(get_runtime().keys.worker_beats())
    finally:
        stack.__exit__(None, None, None)


def test_a_paused_worker_keeps_its_jobs(domain: str, figures: dict[str, Any]) -> None:
    """Frozen (SIGSTOP) for less than worker_dead_after, a worker is slow, not dead: nothing runs twice."""
    stack = make_fault_stack(workers=0, **PRODUCTION)
    try:
        add_portal(stack, domain, rate=0)
        stack.emulator.set_faults(domain, latency=2.0)
        jobs, ids, holder = start_holding(stack, domain, 16)
        pause = PRODUCTION["worker_dead_after"] / 2
        holder.kill(signal.SIGSTOP)
        time.sleep(pause)  # the fault itself: a pause of this length
        holder.kill(signal.SIGCONT)
        found, backlog = wait_drained(ids, timeout=60)
        assert backlog == {"queued": 0, "unacked": 0}
        result = outcome(jobs, ids, found, applied_counts(stack.emulator.state(domain)))
        figures.update(result, paused_s=pause, requeued_by_recovery=recovery_notes(ids), settings=PRODUCTION)
        assert result["lost"] == 0, result
        assert recovery_notes(ids) == 0
        assert result["extra_applications"] == 0, result
    finally:
        stack.__exit__(None, None, None)


def test_a_worker_frozen_past_the_limit_loses_its_jobs_to_the_pool(domain: str, figures: dict[str, Any]) -> None:
    """The rule's other side: frozen longer than worker_dead_after, its jobs run elsewhere (at-least-once)."""
    stack = make_fault_stack(workers=0, **PRODUCTION)
    try:
        add_portal(stack, domain, rate=0)
        stack.emulator.set_faults(domain, latency=2.0)
        jobs, ids, holder = start_holding(stack, domain, 8)
        holder.kill(signal.SIGSTOP)
        stopped = time.monotonic()
        rt = get_runtime()
        while recovery_notes(ids) < len(ids):  # the pool takes its jobs back
            assert time.monotonic() - stopped < 40, "the frozen worker's jobs never went back to the queue"
            time.sleep(0.2)
        holder.kill(signal.SIGCONT)
        found, backlog = wait_drained(ids, timeout=60)
        result = outcome(jobs, ids, found, applied_counts(stack.emulator.state(domain)))
        figures.update(result, requeued_by_recovery=recovery_notes(ids), settings=PRODUCTION)
        assert result["lost"] == 0, result
        assert backlog == {"queued": 0, "unacked": 0}
        assert rt.ledger.get(ids[0]) is not None
    finally:
        stack.__exit__(None, None, None)


#: On RabbitMQ: seconds from a worker's freeze until its jobs are all terminal elsewhere, at defaults (two to
#: three missed AMQP heartbeats of B24Q_BROKER_HEARTBEAT, 5 s, then the jobs' own run; README: Running workers).
FROZEN_BOUND = 30.0


def test_a_frozen_workers_jobs_come_back_on_rabbitmq_within_its_heartbeat(domain: str, figures: dict[str, Any]) -> None:
    """No sweeper watches workers on RabbitMQ: the broker closes a frozen worker's connection once it misses
    its AMQP heartbeats, which puts the jobs it held back in their queue. At Celery's default heartbeat (120 s)
    that took minutes; at b24q's (5 s) it takes seconds."""
    stack = make_fault_stack(workers=0, **PRODUCTION, **on_broker("rabbitmq"))
    holder: Worker | None = None
    try:
        add_portal(stack, domain, rate=0)
        stack.emulator.set_faults(domain, latency=2.0)
        jobs, ids, holder = start_holding(stack, domain, 16)
        holder.kill(signal.SIGSTOP)
        stopped = time.monotonic()
        stack.emulator.set_faults(domain, latency=0.0)
        found = wait_terminal(ids, timeout=FROZEN_BOUND + 30)
        recovered = time.monotonic() - stopped
        result = outcome(jobs, ids, found, applied_counts(stack.emulator.state(domain)))
        figures.update(result, freeze_to_all_terminal_s=round(recovered, 1), settings=PRODUCTION)
        assert result["lost"] == 0, result
        assert recovered <= FROZEN_BOUND, recovered
        assert recovery_notes(ids) == 0  # the broker, not a sweeper
    finally:
        if holder is not None:
            holder.kill(signal.SIGKILL)  # never resumed: it would only finish jobs the pool already did
        stack.__exit__(None, None, None)
