"""Graceful stop (SIGTERM) under load: in-flight jobs finish, the rest go back to the queue; none is lost.

The stop is Celery's warm shutdown: the worker stops taking messages, lets running jobs finish, and when it
closes its broker channel kombu puts back what it holds but has not started (retries waiting for their
countdown; docs/operations.md: Stopping and restarting). b24q's code on that path is the tolerant `loads`
that kombu's Redis transport decodes every handed-back entry with (`workers/broker/consumer.py`);
`make mutants` (graceful-stop) checks that this test notices when messages are not handed back.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from tests.faults.conftest import (
    add_portal,
    applied_counts,
    enqueue,
    make_fault_stack,
    mixed_jobs,
    outcome,
    wait_drained,
)
from tests.integration.conftest import BROKERS, on_broker
from workers import keys
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


def worker_name(prefix: str, timeout: float) -> str:
    """The hostname a worker beats under (`w1@host`), once it has beaten."""
    rt = get_runtime()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [n.decode() for n in rt.redis.hkeys(rt.keys.worker_beats())]
        found = [n for n in names if n.startswith(f"{prefix}@")]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"worker {prefix} never beat")


def retries_due_after(worker: str, after: float) -> list[str]:
    """Jobs whose message `worker` holds (its last heartbeat) as a retry due after `after` (epoch seconds):
    still waiting for its countdown when the stop comes, so the stop must hand it back to the queue."""
    rt = get_runtime()
    raw = rt.redis.get(rt.keys.worker_holds(worker))
    tags = json.loads(raw) if raw else []
    entries = [e for e in (rt.redis.hmget(keys.UNACKED, tags) if tags else []) if e is not None]
    headers = [json.loads(e)[0]["headers"] for e in entries]
    return [str(h["id"]) for h in headers if h.get("eta") and datetime.fromisoformat(h["eta"]).timestamp() > after]


def applied_so_far(ids: list[str], at_least: int, timeout: float) -> None:
    rt = get_runtime()
    deadline = time.monotonic() + timeout
    while sum(state == "applied" for (state,) in rt.ledger.states(ids).values()) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} jobs applied in {timeout} s"
        time.sleep(0.1)


@pytest.mark.parametrize("broker", BROKERS)
def test_sigterm_under_load_finishes_or_requeues_every_job(domain: str, broker: str, figures: dict[str, Any]) -> None:
    # nothing may depend on redelivery: a visibility timeout far beyond the test, the reconciler off, and
    # dead-worker recovery must find nothing to restore (the stopping worker hands its messages back).
    # a portal's 500s leave retries waiting for their countdown (backoff_base 5 s: up to 5 s, then 10 s): on
    # Redis the worker holds them and must hand them back; on RabbitMQ they wait in its delay queues
    stack = make_fault_stack(
        workers=2,
        concurrency=64,
        visibility_timeout=300,
        reconcile_interval=0,
        backoff_base=5.0,
        backoff_max=10.0,
        **on_broker(broker),
    )
    try:
        s = get_runtime().settings
        portals = [f"p{i}-{domain}" for i in range(2)]
        for portal in portals:
            add_portal(stack, portal, rate=2.0, burst=10)
            # batches are on the wire when SIGTERM comes; one request in ten fails whole (nothing applied)
            stack.emulator.set_faults(portal, latency=0.4, error_500_rate=0.1)
        jobs = [job for portal in portals for job in mixed_jobs(portal, 1000)]
        ids = enqueue(jobs)
        victim = stack.workers[0]
        held: list[str] = []
        if broker == "redis":
            name = worker_name(victim.name, timeout=10)
            # SIGTERM while the victim runs jobs and holds retries that will still wait when its running jobs
            # are done (a few seconds: their countdowns go up to backoff_max). A busy machine slows both the
            # first failures and the retries' way to a worker, so the wait is generous: it ends at the first one
            deadline = time.monotonic() + 90
            while not held and time.monotonic() < deadline:
                held = retries_due_after(name, time.time() + 3)
                time.sleep(0.05)
            assert held, "the worker never held a retry waiting for its countdown: nothing to hand back"
        else:
            applied_so_far(ids, 200, timeout=30)  # SIGTERM while the pool runs jobs and retries wait
        stopped_at = time.monotonic()
        stopped_wall = time.time()
        victim.kill(signal.SIGTERM)
        code = victim.wait(60)
        stop_took = time.monotonic() - stopped_at
        log = victim.log_path.read_text(errors="replace")
        restored = [line for line in log.splitlines() if "Restoring" in line]
        figures.update(
            exit_code=code,
            stop_took_s=round(stop_took, 1),
            retries_held_at_stop=len(held),
            restored_at_shutdown=restored[-1:],
        )
        assert code == 0, log[-3000:]  # (a stop that cannot hand its messages back fails here)
        # running jobs finish: a job's run is bounded by permit_wait plus the request timeout
        # (docs/operations.md: Stopping and restarting), and the worker's own stop takes a second or two
        assert stop_took < s.permit_wait + s.request_timeout + 5, stop_took
        found, backlog = wait_drained(ids, timeout=90)
        drained_after = time.monotonic() - stopped_at
        counts: Counter[str] = Counter()
        for portal in portals:
            counts.update(applied_counts(stack.emulator.state(portal)))
        result = outcome(jobs, ids, found, counts)
        events = [e for i in ids for e in (get_runtime().ledger.get(i) or {"events": []})["events"]]
        whys = [str(e.get("why", "")) for e in events]
        recovered = sum("reconciler" in why for why in whys)
        requeued = sum("went back to the queue" in why for why in whys)
        # calls of the other worker's jobs that the victim was sending when its own jobs were done: it finishes
        # that request and answers them before it exits (`Runtime.finish_sending`), rather than leave them to
        # be retried once its call-pool heartbeat expires (and applied twice)
        sender_lost = sum(
            "SENDER_LOST" in str(e.get("error", "")) and float(e.get("t", 0)) > stopped_wall for e in events
        )
        figures.update(
            result,
            drained_after_stop_s=round(drained_after, 1),
            republished_by_reconciler=recovered,
            requeued_by_dead_worker_recovery=requeued,
            sender_lost_after_stop=sender_lost,
            broker_left=backlog,
        )
        assert result["lost"] == 0, result
        assert backlog == {"queued": 0, "unacked": 0}
        # no redelivery: what the victim held went back to the queue at its stop, not by the pool's sweep
        assert recovered == 0 and requeued == 0, (recovered, requeued)
        assert sender_lost == 0, sender_lost
        assert all(found[i] in ("applied", "superseded") for i in held), {i: found[i] for i in held}
    finally:
        stack.__exit__(None, None, None)
