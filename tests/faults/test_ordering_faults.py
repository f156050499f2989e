"""The portal ends in the state last reported: an SMS gateway's delivery reports, enqueued in the order the
gateway learned them, through portal faults and killed workers, on either broker (on RabbitMQ retries come
back through the delay queues and the bulk lane, a queue of their own, and a killed worker's jobs are put
back by the broker: other orders of arrival than on Redis, which the ordering gate must not mind)."""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from typing import Any

import pytest

from bench.workload import delivery_reports
from tasks import producer
from tasks.jobs import STATUS_RANK
from tests.faults.conftest import QUICK, SENDER, add_portal, make_fault_stack, wait_drained
from tests.integration.conftest import BROKERS, on_broker
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("broker", BROKERS)
def test_every_message_ends_in_its_last_reported_status(domain: str, broker: str, figures: dict[str, Any]) -> None:
    stack = make_fault_stack(workers=3, concurrency=32, **on_broker(broker))
    try:
        add_portal(stack, domain, rate=2.0, burst=10)
        stack.emulator.set_faults(domain, error_500_rate=0.05, drop_rate=0.05, slow_rate=0.05, slow_seconds=6.0)
        jobs, last = delivery_reports(domain, SENDER, 400)
        ids: list[str] = []
        kills = 0
        started = time.monotonic()
        for start in range(0, len(jobs), 50):  # the gateway enqueues as its reports come in
            ids += producer.enqueue_many(jobs[start : start + 50])
            if start in (300, 700):  # two workers killed mid-run
                victim = stack.live_workers()[0]
                victim.kill(signal.SIGKILL)
                victim.wait(10)
                kills += 1
                stack.start_workers(1, concurrency=32, extra=QUICK, wait=False)
            time.sleep(0.1)
        enqueued = time.monotonic() - started
        found, backlog = wait_drained(ids, timeout=150)
        drained = time.monotonic() - started
        state = stack.emulator.state(domain)
        history = {r["message_id"]: list(r["statuses"]) for r in state["statuses"]}
        wrong = {m: (history.get(m, [])[-1:], s) for m, s in last.items() if history.get(m, [])[-1:] != [s]}
        backwards = {
            m: h for m, h in history.items() if any(STATUS_RANK[b] < STATUS_RANK[a] for a, b in itertools.pairwise(h))
        }
        outcomes = Counter(found.values())
        sent = sum(len(h) for h in history.values())
        rt = get_runtime()
        figures.update(
            messages=len(last),
            reports=len(jobs),
            kills=kills,
            outcomes=dict(outcomes),
            status_calls_applied=sent,
            calls_per_report=round(sent / len(jobs), 2),
            wrong_final_status=len(wrong),
            went_backwards=len(backwards),
            faults_injected=dict(state["counters"]["faults"]),
            enqueued_s=round(enqueued, 1),
            drained_s=round(drained, 1),
            retried_for=dict(
                Counter(
                    e.get("error", "").split(":")[0]
                    for i in ids
                    for e in (rt.ledger.get(i) or {"events": []})["events"]
                    if e.get("state") in ("retrying", "deferred")
                )
            ),
            examples={"wrong": dict(list(wrong.items())[:3]), "backwards": dict(list(backwards.items())[:3])},
        )
        assert backlog == {"queued": 0, "unacked": 0}
        assert set(outcomes) <= {"applied", "superseded"}, outcomes  # every job has its outcome
        assert wrong == {}, wrong
        assert backwards == {}, backwards
        superseded = [i for i, s in found.items() if s == "superseded"]
        if superseded:  # a superseded job names the job that took its place
            record = rt.ledger.get(superseded[0]) or {"events": []}
            assert any(e.get("by") for e in record["events"]), record
    finally:
        stack.__exit__(None, None, None)
