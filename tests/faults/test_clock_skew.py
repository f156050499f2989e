"""Worker clocks do not matter to the limiter: two workers whose wall clocks are 90 s behind and 90 s
ahead (a sitecustomize skews `time.time` in their processes only) share one portal's limit exactly as
workers with true clocks would, because the GCRA script reads the Redis server's TIME."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from emulator import max_in_window
from tasks import producer
from tests.faults.conftest import QUICK, make_fault_stack, wait_drained
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration

SKEWCLOCK = Path(__file__).parent / "skewclock"
SKEW = 90.0


def test_limiter_holds_with_workers_90s_apart(domain: str, figures: dict[str, Any]) -> None:
    # kombu's redelivery reads worker clocks (unacked_index scores): keep it out of this test's way
    stack = make_fault_stack(workers=0, visibility_timeout=600)
    try:
        path = os.pathsep.join(p for p in (str(SKEWCLOCK), os.environ.get("PYTHONPATH", "")) if p)
        for skew in (-SKEW, SKEW):
            stack.start_workers(1, concurrency=64, extra=QUICK,
                                env={"PYTHONPATH": path, "B24Q_TEST_CLOCK_SKEW": str(skew)})  # fmt: skip
        for worker, skew in zip(stack.workers, (-SKEW, SKEW), strict=True):
            assert f"wall clock is skewed by {skew:+.1f} s" in worker.log_path.read_text(), worker.name
        rate, burst = 4.0, 20
        stack.add_portal(domain, rate=rate, burst=burst)
        started = time.monotonic()
        ids = producer.enqueue_many(
            [
                ("mark-unread", {"portal": domain, "dialog_id": f"chat{i % 5 + 1}", "message_id": i})
                for i in range(1, 1501)
            ]
        )
        found, _ = wait_drained(ids, timeout=90)
        took = time.monotonic() - started
        state = stack.emulator.state(domain)
        times, c = state["accepted_times"], state["counters"]
        rt = get_runtime()
        by_worker: dict[str, int] = {}
        for job_id in ids[::10]:
            for event in (rt.ledger.get(job_id) or {"events": []})["events"]:
                if event.get("worker"):
                    by_worker[event["worker"].split("@")[0]] = by_worker.get(event["worker"].split("@")[0], 0) + 1
        peak = {w: max_in_window(times, w) for w in (1.0, 3.0)}
        figures.update(jobs=len(ids), applied=sum(1 for s in found.values() if s == "applied"), took_s=round(took, 1),
                       requests=c["accepted"], refused_503=c["refused_503"], peak_requests_in_window=peak,
                       allowed_in_window={w: burst + rate * w for w in (1.0, 3.0)}, sampled_runs_by_worker=by_worker,
                       skews_s=[-SKEW, SKEW])  # fmt: skip
        assert set(found.values()) == {"applied"}
        assert len(by_worker) == 2, by_worker  # both skewed workers sent jobs
        for window, peak_requests in peak.items():
            assert peak_requests <= burst + rate * window + 1, (window, peak_requests)
        assert c["refused_503"] <= max(1, c["accepted"] // 100)
        assert took < 60  # neither worker waited out its skew
    finally:
        stack.__exit__(None, None, None)
