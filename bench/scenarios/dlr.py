"""Scenario 6, a delivery-report stream: an SMS gateway reports each message 2-3 times (queued, sent, a final
status) faster than a standard portal takes them, so a backlog waits; coalescing sends only the newest
report of each message that is still waiting (`workers.delivery.ordering`).

The figures: status calls the portal applied per reported status (1.00 without coalescing; the target
is at most 0.7 while a backlog waits), the drain time next to the bucket's bound for sending every
report (what the pool did before coalescing) and for one call per message, and whether every message
ended in its last reported status.
"""

from __future__ import annotations

import time

from bench.profiler import start_workers
from bench.report import Table, bucket_time, fmt, ratio
from bench.scenarios import Options
from bench.stack import add_portal, bench_stack, log, records, wait_backlog
from bench.workload import SENDER, delivery_reports
from tasks.producer import enqueue_many
from workers.runtime import get_runtime

PORTAL = "dlr.bench.test"
RATE, BURST = 2.0, 50
TARGET = 0.7


def run(opts: Options) -> list[Table]:
    messages = 1500 if opts.quick else 4000
    jobs, last = delivery_reports(PORTAL, SENDER, messages)
    with bench_stack(log_dir=opts.dir_for("dlr")) as stack:
        add_portal(stack, PORTAL, rate=RATE, burst=BURST)
        start_workers(stack, 4, 64, opts.profile_dir("dlr"))
        portal = get_runtime().registry.get(PORTAL)
        assert portal is not None
        burst_used = portal.limits(stack.settings).our_burst
        log(f"dlr: enqueueing {len(jobs)} reports of {messages} messages")
        t0 = time.monotonic()
        ids = enqueue_many(jobs)
        wait_backlog([PORTAL], timeout=600, what="reports")
        elapsed = time.monotonic() - t0
        state = stack.emulator.state(PORTAL)
        found = records(ids)

    history = {r["message_id"]: r["statuses"] for r in state["statuses"]}
    applied_calls = sum(len(h) for h in history.values())
    wrong = sum(1 for m, s in last.items() if history.get(m, [])[-1:] != [s])
    outcomes = {s: sum(r.state == s for r in found) for s in ("applied", "superseded", "dead")}
    every_report = bucket_time(len(jobs), RATE, burst_used)
    one_per_message = bucket_time(messages, RATE, burst_used)
    t = Table(
        f"dlr: {len(jobs)} status reports of {messages} messages enqueued at once to one standard portal "
        f"(rate {RATE:g}/s, burst {BURST}); 4 workers x 64 threads",
        ("metric", "limit", "measured", "ratio"),
    )
    t.add(
        "status calls applied per report (target <= 0.7; 1.00 without coalescing)",
        "0.70",
        fmt(applied_calls / len(jobs), 2),
        ratio(applied_calls / len(jobs), TARGET),
    )
    t.add("drain, enqueue start -> last applied (s)", fmt(every_report), fmt(elapsed), ratio(every_report, elapsed))
    t.add("  bound with one call per message (s)", fmt(one_per_message), "", ratio(one_per_message, elapsed))
    t.add(
        "jobs applied / superseded / dead",
        "",
        f"{outcomes['applied']} / {outcomes['superseded']} / {outcomes['dead']}",
        "",
    )
    t.add("messages not in their last reported status", "0", fmt(wrong), "")
    t.add("503s", "0", fmt(state["counters"]["refused_503"]), "")
    t.note(
        "limit of the drain row: the bucket's time to send every report (what the pool did before coalescing); "
        "ratio > 1 means faster than that"
    )
    return [t]
