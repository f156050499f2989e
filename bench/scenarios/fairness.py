"""Scenario 4, fairness: a cold portal's jobs beside another portal's deep backlog.

One standard portal gets a backlog (20,000 jobs; 5,000 with --quick) and drains at its ceiling of
rate x 50 commands/s (100 jobs/s, more where delivery confirmations merge); meanwhile a second
standard portal sends 1 job/s. Every worker slot is busy with the hot portal, so the cold portal's
latency shows whether it waits behind the backlog (the producer sends a portal with a deep backlog
to the bulk lane, so fresh jobs of other portals pass).

The cold window starts once the hot portal's burst is spent (so its rate is the steady ceiling), and
the hot backlog is not drained to the end: the stack is stopped once the cold window is over.
"""

from __future__ import annotations

import time

from bench.profiler import start_workers
from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.stack import DONE, add_portal, bench_stack, log, records, wait_backlog
from bench.workload import commands, mixed
from tasks.producer import enqueue, enqueue_many
from workers.runtime import get_runtime

HOT, COLD = "hot.bench.test", "cold.bench.test"
RATE = 2.0
TARGET_P99 = 2.0


def run(opts: Options) -> list[Table]:
    hot_n = 5000 if opts.quick else 20000
    duration = 15.0 if opts.quick else 30.0
    with bench_stack(log_dir=opts.dir_for("fairness")) as stack:
        add_portal(stack, HOT, rate=RATE, burst=50)
        add_portal(stack, COLD, rate=RATE, burst=50)
        start_workers(stack, 4, 64, opts.profile_dir("fairness"))
        portal = get_runtime().registry.get(HOT)
        assert portal is not None
        burst_used = portal.limits(stack.settings).our_burst
        log(f"fairness: enqueueing {hot_n} jobs for {HOT}")
        t0 = time.time()
        hot_jobs = mixed(HOT, hot_n)
        per_cmd = hot_n / commands(hot_jobs, int(getattr(stack.settings, "merge_max", 1)))
        hot_ids = enqueue_many(hot_jobs)
        t1 = time.time()
        # measure once the hot portal's burst is spent: from then on it can only drain at its ceiling
        deadline = time.monotonic() + 60
        while stack.emulator.state(HOT)["counters"]["accepted"] < burst_used and time.monotonic() < deadline:
            time.sleep(0.5)
        log(f"fairness: backlog enqueued in {t1 - t0:.1f}s; {COLD} sends 1 job/s for {duration:g}s")
        cold_jobs = mixed(COLD, int(duration))
        cold_ids = []
        start = time.monotonic()
        w0 = time.time()
        for i, (kind, payload) in enumerate(cold_jobs):
            pause = start + i - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            cold_ids.append(enqueue(kind, payload))
        wait_backlog([COLD], timeout=30, what="cold jobs")
        w1 = time.time()
        hot = records(hot_ids)
        cold = records(cold_ids)
        hot_state = stack.emulator.state(HOT)["counters"]
        cold_state = stack.emulator.state(COLD)["counters"]

    lat = [r.latency for r in cold if r.state in DONE]
    hot_in_window = sum(r.state in DONE and w0 <= r.updated <= w1 for r in hot)
    hot_rate = hot_in_window / (w1 - w0)
    hot_done = sum(r.state in DONE for r in hot)
    ceiling = RATE * 50 * per_cmd
    t = Table(
        f"fairness: {HOT} with a {hot_n}-job backlog (rate {RATE:g}/s, burst 50) and {COLD} sending 1 job/s for "
        f"{duration:g}s; 4 workers x 64 threads",
        ("metric", "limit", "target", "measured", "ratio"),
    )
    t.add("cold p50 enqueue->applied (s)", "", "", fmt(percentile(lat, 50), 3), "")
    t.add(
        "cold p99 enqueue->applied (s)",
        "",
        fmt(TARGET_P99, 1),
        fmt(percentile(lat, 99), 3),
        ratio(percentile(lat, 99), TARGET_P99),
    )
    t.add("cold max (s)", "", "", fmt(max(lat, default=float("nan")), 3), "")
    t.add("cold jobs applied / sent", "", "", f"{len(lat)} / {len(cold)}", "")
    window = f"hot jobs/s during the cold window ({w1 - w0:.0f}s)"
    t.add(window, fmt(ceiling), "", fmt(hot_rate), ratio(hot_rate, ceiling))
    t.add("hot jobs applied by the end of the window", "", "", f"{hot_done} of {hot_n}", "")
    t.add("hot enqueue time (s)", "", "", fmt(t1 - t0, 1), "")
    t.add("hot jobs run more than once so far (deferred, retried)", "", "", fmt(sum(r.runs > 1 for r in hot)), "")
    t.add("503s hot / cold", "0 / 0", "", f"{hot_state['refused_503']} / {cold_state['refused_503']}", "")
    return [t]
