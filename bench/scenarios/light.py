"""Scenario 3, light load: 10 jobs/s arriving one at a time, with 100 ms of portal latency.

Latency is enqueue -> applied from the ledger (`updated - created` of applied jobs; both are
time.time() on this machine). Two portals get the same arrivals side by side: one the emulator
does not limit, which shows b24q's own latency (the floor is the portal's 100 ms plus the 5 ms
gather window), and a standard one (2 req/s, burst 50). On the standard portal 10 single jobs/s
are 10 requests/s, five times its rate: once the burst is spent, requests must pack ~5 jobs and go
out at most every 0.5 s, so even a perfect scheduler's jobs wait up to 0.5 s for the next slot
(p50 >= 0.35 s, p99 >= 0.6 s with the latency).
"""

from __future__ import annotations

import time

from bench.profiler import start_workers
from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.stack import DONE, add_portal, bench_stack, log, records, wait_backlog
from bench.workload import applied, mixed
from tasks.producer import enqueue

LATENCY = 0.1
ARRIVALS = 10.0  # jobs/s per portal
TARGET_P99 = 0.5
UNLIMITED, STANDARD = "light-unlimited.bench.test", "light-standard.bench.test"


def run(opts: Options) -> list[Table]:
    duration = 10.0 if opts.quick else 30.0
    count = int(duration * ARRIVALS)
    with bench_stack(log_dir=opts.dir_for("light")) as stack:
        add_portal(stack, UNLIMITED, rate=0, latency=LATENCY)
        add_portal(stack, STANDARD, rate=2.0, burst=50, latency=LATENCY)
        start_workers(stack, 4, 64, opts.profile_dir("light"))
        gather = stack.settings.gather_ms / 1000
        work = {p: mixed(p, count) for p in (UNLIMITED, STANDARD)}
        ids: dict[str, list[str]] = {p: [] for p in work}
        log(f"light: {ARRIVALS:g} jobs/s per portal for {duration:g}s")
        start = time.monotonic()
        late = 0.0
        for i in range(count):
            due = start + i / ARRIVALS
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                late = max(late, -pause)
            for portal, jobs in work.items():
                kind, payload = jobs[i]
                ids[portal].append(enqueue(kind, payload))
        wait_backlog(list(work), timeout=30)
        recs = {p: records(v) for p, v in ids.items()}
        states = {p: stack.emulator.state(p) for p in work}

    t = Table(
        f"light load: {ARRIVALS:g} jobs/s per portal, one at a time, for {duration:g}s; {LATENCY * 1000:.0f} ms portal "
        f"latency; 4 workers x 64 threads",
        ("metric", "floor", "target", "measured", "measured/target"),
    )
    floors = {
        UNLIMITED: {50: LATENCY + gather, 95: LATENCY + gather, 99: LATENCY + gather},
        STANDARD: {50: LATENCY + 0.25, 95: LATENCY + 0.475, 99: LATENCY + 0.495},
    }
    labels = {UNLIMITED: "unlimited portal", STANDARD: "standard portal (2 req/s, burst 50)"}
    for portal, rs in recs.items():
        lat = [r.latency for r in rs if r.state in DONE]
        superseded = sum(r.state == "superseded" for r in rs)
        c = states[portal]["counters"]
        effects = applied(states[portal])
        for q in (50, 95, 99):
            target = fmt(TARGET_P99, 3) if q == 99 else ""
            measured = percentile(lat, q)
            vs = ratio(measured, TARGET_P99) if q == 99 else ""
            t.add(
                f"{labels[portal]}: p{q} enqueue->applied (s)", fmt(floors[portal][q], 3), target, fmt(measured, 3), vs
            )
        t.add("  max (s)", "", "", fmt(max(lat, default=float("nan")), 3), "")
        per = (c["batch_commands"] + c["accepted"] - c["batches"]) / max(c["accepted"], 1)
        t.add("  requests / jobs per request / 503s", "", "", f"{c['accepted']} / {per:.1f} / {c['refused_503']}", "")
        t.add(
            "  applied / lost / duplicates",
            "",
            "",
            f"{len(lat)} / {count - superseded - effects.distinct} / {effects.duplicates}",
            "",
        )
    t.note(f"standard floor = after the burst, the next of 2 slots/s (0..0.5 s) + {LATENCY * 1000:.0f} ms latency")
    if late > 0.05:
        t.note(f"the producer fell behind its schedule by up to {late:.2f}s")
    return [t]
