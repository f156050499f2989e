"""Graceful stop (SIGTERM) under load: in-flight jobs finish or go back to the queue; none is lost."""

from __future__ import annotations

import signal
import time
from collections import Counter
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
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


def test_sigterm_under_load_finishes_or_requeues_every_job(domain: str, figures: dict[str, Any]) -> None:
    # nothing may depend on redelivery: a visibility timeout far beyond the test, the reconciler off, and
    # dead-worker recovery must find nothing to restore (the stopping worker hands its messages back)
    stack = make_fault_stack(workers=2, concurrency=64, visibility_timeout=300, reconcile_interval=0)
    try:
        portals = [f"p{i}-{domain}" for i in range(2)]
        for portal in portals:
            add_portal(stack, portal, rate=2.0, burst=10)
            stack.emulator.set_faults(portal, latency=0.4)  # batches are on the wire when SIGTERM comes
        jobs = [job for portal in portals for job in mixed_jobs(portal, 1000)]
        ids = enqueue(jobs)
        time.sleep(3.0)
        victim = stack.workers[0]
        stopped_at = time.monotonic()
        victim.kill(signal.SIGTERM)
        code = victim.wait(60)
        stop_took = time.monotonic() - stopped_at
        log = victim.log_path.read_text(errors="replace")
        found, backlog = wait_drained(ids, timeout=90)
        drained_after = time.monotonic() - stopped_at
        counts: Counter[str] = Counter()
        for portal in portals:
            counts.update(applied_counts(stack.emulator.state(portal)))
        result = outcome(jobs, ids, found, counts)
        whys = [e.get("why", "") for i in ids for e in (get_runtime().ledger.get(i) or {"events": []})["events"]]
        recovered = sum("reconciler" in why for why in whys)
        requeued = sum("went back to the queue" in why for why in whys)
        restored = [line for line in log.splitlines() if "Restoring" in line]
        figures.update(
            result,
            exit_code=code,
            stop_took_s=round(stop_took, 1),
            drained_after_stop_s=round(drained_after, 1),
            restored_at_shutdown=restored[-1:] or [],
            republished_by_reconciler=recovered,
            requeued_by_dead_worker_recovery=requeued,
            broker_left=backlog,
        )
        assert code == 0, log[-3000:]
        assert stop_took < 30  # soft shutdown (10 s) plus the pool's own stop
        assert result["lost"] == 0, result
        assert backlog == {"queued": 0, "unacked": 0}
        assert recovered == 0 and requeued == 0, (recovered, requeued)  # no redelivery: the stop handed back
    finally:
        stack.__exit__(None, None, None)
