"""Redis crashes (SIGKILL) under load and comes back on the same port with the same append-only file
(appendfsync everysec): no job acknowledged as enqueued is lost, and producers and workers reconnect by
themselves."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from tasks import producer
from tests.faults.conftest import add_portal, applied_counts, make_fault_stack, mixed_jobs, outcome, wait_drained

pytestmark = pytest.mark.integration


def test_redis_crash_loses_no_acknowledged_job(domain: str, figures: dict[str, Any]) -> None:
    stack = make_fault_stack(workers=2, concurrency=64)
    try:
        add_portal(stack, domain, rate=5.0, burst=20)
        stack.emulator.set_faults(domain, latency=0.1)
        acked: list[tuple[float, list[str], list[tuple[str, dict[str, Any]]]]] = []
        failures: list[tuple[float, str]] = []
        stop = threading.Event()

        def produce() -> None:
            """A producer that keeps enqueueing batches of 20, and retries after an error (as callers do)."""
            n = 0
            while not stop.is_set():
                batch = mixed_jobs(domain, 20, start=n)
                try:
                    ids = producer.enqueue_many(batch)
                except Exception as exc:  # Redis down: the caller is told; nothing was acknowledged
                    failures.append((time.monotonic(), type(exc).__name__))
                    time.sleep(0.2)
                    continue
                acked.append((time.monotonic(), ids, batch))
                n += 20
                time.sleep(0.05)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        time.sleep(4.0)
        crash = time.monotonic()
        down = stack.restart_redis(down=3.0)  # SIGKILL, 3 s down, start on the same port and AOF
        back = time.monotonic()
        # producers reconnect by themselves: the same thread, the same Runtime, nothing rebuilt
        deadline = time.monotonic() + 30
        while not [t for t, _, _ in acked if t > back] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)
        stop.set()
        thread.join(10)
        ids = [i for _, batch_ids, _ in acked for i in batch_ids]
        jobs = [job for _, _, batch in acked for job in batch]
        found, backlog = wait_drained(ids, timeout=90)
        drained = time.monotonic() - back
        counts: Counter[str] = applied_counts(stack.emulator.state(domain))
        result = outcome(jobs, ids, found, counts)
        before = [i for t, batch_ids, _ in acked if t <= crash - 1.0 for i in batch_ids]
        after = [i for t, batch_ids, _ in acked if t > back for i in batch_ids]
        lost_before = [i for i in before if found[i] != "applied"]
        figures.update(result, down_s=round(down, 1), enqueued_before_crash=len(before),
                       enqueued_after_restart=len(after), producer_errors=len(failures),
                       producer_error_types=sorted({name for _, name in failures}),
                       drained_after_restart_s=round(drained, 1), broker_left=backlog)  # fmt: skip
        assert before and after, "the producer did not recover by itself"
        assert lost_before == [], lost_before[:5]  # acknowledged ≥ 1 s before the crash: survived
        assert result["lost"] == 0, result
        assert {found[i] for i in after} == {"applied"}  # the workers reconnected too
    finally:
        stack.__exit__(None, None, None)
