"""Worker clocks do not matter to the limiter: two workers whose wall clocks are 90 s behind and 90 s
ahead (a sitecustomize skews `time.time` in their processes only) share one portal's limit exactly as
workers with true clocks would, because the GCRA script reads the Redis server's TIME.

On both brokers: the skewed workers take their jobs, and a held job's retry, from either (on Redis, kombu's
redelivery reads the workers' clocks, so a long visibility timeout keeps it out of the tests' way; on
RabbitMQ a retry's countdown waits in the broker's delay queues)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from emulator import max_in_window
from tasks import producer
from tests.faults.conftest import QUICK, make_fault_stack, wait_drained
from tests.integration.conftest import BROKERS, on_broker, wait_for
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration

SKEWCLOCK = Path(__file__).parent / "skewclock"
SKEW = 90.0


@pytest.mark.parametrize("broker", BROKERS)
def test_limiter_holds_with_workers_90s_apart(domain: str, broker: str, figures: dict[str, Any]) -> None:
    # kombu's redelivery reads worker clocks (unacked_index scores): keep it out of this test's way
    stack = make_fault_stack(workers=0, visibility_timeout=600, **on_broker(broker))
    try:
        path = os.pathsep.join(p for p in (str(SKEWCLOCK), os.environ.get("PYTHONPATH", "")) if p)
        for skew in (-SKEW, SKEW):
            stack.start_workers(
                1, concurrency=64, extra=QUICK, env={"PYTHONPATH": path, "B24Q_TEST_CLOCK_SKEW": str(skew)}
            )
        for worker, skew in zip(stack.workers, (-SKEW, SKEW), strict=True):
            assert f"wall clock is skewed by {skew:+.1f} s" in worker.log_path.read_text(), worker.name
        rate, burst = 4.0, 20
        stack.add_portal(domain, rate=rate, burst=burst)
        started = time.monotonic()
        ids = producer.enqueue_many(
            [("mark-unread", {"portal": domain, "dialog_id": f"chat{i}", "message_id": i}) for i in range(1, 1501)]
        )
        found, _ = wait_drained(ids, timeout=90)
        took = time.monotonic() - started
        state = stack.emulator.state(domain)
        # every request b24q *sent*, refused or not: the emulator's own bucket caps the accepted ones, so
        # only the attempts show whether b24q's limiter kept the pool under the limit
        times, c = sorted(state["accepted_times"] + state["refused_times"]), state["counters"]
        rt = get_runtime()
        by_worker: dict[str, int] = {}
        for job_id in ids[::10]:
            for event in (rt.ledger.get(job_id) or {"events": []})["events"]:
                if event.get("worker"):
                    by_worker[event["worker"].split("@")[0]] = by_worker.get(event["worker"].split("@")[0], 0) + 1
        peak = {w: max_in_window(times, w) for w in (1.0, 3.0)}
        figures.update(
            jobs=len(ids),
            applied=sum(1 for s in found.values() if s == "applied"),
            took_s=round(took, 1),
            requests=c["accepted"],
            refused_503=c["refused_503"],
            peak_requests_in_window=peak,
            allowed_in_window={w: burst + rate * w for w in (1.0, 3.0)},
            sampled_runs_by_worker=by_worker,
            skews_s=[-SKEW, SKEW],
        )
        assert set(found.values()) == {"applied"}
        assert len(by_worker) == 2, by_worker  # both skewed workers sent jobs
        for window, peak_requests in peak.items():
            assert peak_requests <= burst + rate * window + 1, (window, peak_requests)
        assert c["refused_503"] * 100 <= c["accepted"]  # ≤ 1 % refused
        assert took < 60  # neither worker waited out its skew
    finally:
        stack.__exit__(None, None, None)


@pytest.mark.parametrize("broker", BROKERS)
def test_operating_holds_end_on_time_whatever_the_worker_clock(
    domain: str, broker: str, figures: dict[str, Any]
) -> None:
    """A method held after a 429 is held until the portal's bucket resets, not 90 s longer (a clock behind)
    nor for the 60 s default (a clock ahead, to which the reset looks past): the hold is measured on the
    answer's clock (`operating_reset_at - finish`) and kept on the Redis server's.

    (Only b24q's hold is measured, not when the held job runs again: this harness skews `time.time()` but
    not `datetime.now()`, and Celery's ETA arithmetic and kombu's unacked index mix the two, so a skewed
    worker runs its own retries early or late. With a real clock skew both move together.)"""
    stack = make_fault_stack(workers=0, visibility_timeout=600, **on_broker(broker))
    window = 30.0  # the emulator's operating window (600 s in Bitrix24), so that a hold ends within the test
    try:
        path = os.pathsep.join(p for p in (str(SKEWCLOCK), os.environ.get("PYTHONPATH", "")) if p)
        rt = get_runtime()
        holds: dict[str, dict[str, float]] = {}
        for skew in (-SKEW, SKEW):  # one skewed worker at a time, each on a portal of its own
            portal = f"{'behind' if skew < 0 else 'ahead'}-{domain}"
            stack.add_portal(portal, op_cost=2.0, operating_limit=3.0, operating_window=window)
            (worker,) = stack.start_workers(
                1, concurrency=16, extra=QUICK, env={"PYTHONPATH": path, "B24Q_TEST_CLOCK_SKEW": str(skew)}
            )
            for i in (1, 2):  # 2 + 2 s of a 3 s budget: the second call goes over and still completes
                job = producer.enqueue_mark_unread(portal=portal, dialog_id="chat1", message_id=i)
                assert wait_for([job], timeout=30) == {job: "applied"}  # (not drained: a killed worker's
                # held job of the previous round stays unacknowledged)
            held = producer.enqueue_mark_unread(portal=portal, dialog_id="chat1", message_id=3)
            # the 429 sets the hold; read it at once (the held job itself flips between running and deferred)
            hold_key = rt.keys.hold(portal, "im.dialog.unread")
            deadline = time.monotonic() + 30
            while (hold_ms := rt.redis.pttl(hold_key)) <= 0:
                assert time.monotonic() < deadline, json.dumps(rt.ledger.get(held))
                time.sleep(0.02)
            counters = stack.emulator.state(portal)["counters"]
            why = json.dumps([rt.ledger.get(held), counters])
            assert counters["by_error_code"].get("OPERATION_TIME_LIMIT", 0) >= 1, why  # the portal said 429
            assert counters["method_calls"].get("im.dialog.unread") == 2, why  # and nothing was sent twice
            holds[f"{skew:+.0f}"] = {"hold_left_s": round(hold_ms / 1000, 1)}
            worker.kill()
        figures.update(window_s=window, holds=holds, skews_s=[-SKEW, SKEW])
        for hold in holds.values():  # the rest of the window (+1 s for a reset in whole seconds): not the skew
            # (a clock 90 s behind held ~120 s before), not the 60 s default (a clock ahead saw the reset as past)
            assert window - 8 < hold["hold_left_s"] <= window + 1, holds
    finally:
        stack.__exit__(None, None, None)
