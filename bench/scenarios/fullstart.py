"""Full from the first request: a new user's whole run at a small portal, start included.

The setting of issue 12, as a user would try it: one portal at rate 4/s and burst 10, 50 ms of latency per
answer, 6,000 status jobs enqueued while 4 workers (default settings) already run. The figure is the whole
run, from the first enqueue to the last job applied, against the bound an exact bucket allows:
R = ceil(jobs / 50) full requests, the real burst at once, then one every 1/rate s. What the run loses
against it: the producer feeding the pool while it starts, requests sent half full, and the part of the
burst b24q leaves unused (`B24Q_BURST_MARGIN`, at most a tenth of the burst).
"""

from __future__ import annotations

import json
import time

from bench.report import Table, bucket_time, fmt, ratio
from bench.scenarios import Options
from bench.stack import add_portal, bench_stack, log, mono_offset, records, wait_backlog
from bench.workload import SENDER
from tasks.producer import enqueue_many
from workers.runtime import get_runtime

RATE, BURST, LATENCY = 4.0, 10, 0.05
PORTAL = "fullstart.bench.test"


def run(opts: Options) -> list[Table]:
    n = 2000 if opts.quick else 6000
    with bench_stack(log_dir=opts.dir_for("fullstart")) as stack:
        add_portal(stack, PORTAL, RATE, BURST, latency=LATENCY)
        stack.start_workers(4, concurrency=stack.settings.worker_concurrency)
        portal = get_runtime().registry.get(PORTAL)
        assert portal is not None
        limits = portal.limits(stack.settings)
        jobs = [
            ("status-update", {"portal": PORTAL, "code": SENDER, "message_id": f"fs-{i}", "status": "delivered"})
            for i in range(n)
        ]
        bound = bucket_time(n, RATE, BURST)  # the portal's own burst, all of it
        ours = bucket_time(n, RATE, limits.our_burst)
        log(f"fullstart: {n} status jobs at {RATE:g}/s burst {BURST}, workers running")
        t0 = time.time()
        ids = enqueue_many(jobs)
        t1 = time.time()
        wait_backlog([PORTAL], timeout=bound * 3 + 60)
        recs = records(ids)
        last = max(r.updated for r in recs)
        applied = sum(1 for r in recs if r.state == "applied")
        state = stack.emulator.state(PORTAL)
        counters = state["counters"]
    offset = mono_offset()
    batches = sorted((t + offset - t0, n) for t, n in state["batch_log"])
    whole = last - t0
    if (where := opts.dir_for("fullstart")) is not None:  # the whole timeline, for a closer look
        (where / "batches.json").write_text(
            json.dumps({"t0": t0, "batches": batches, "finished": sorted(r.updated - t0 for r in recs)})
        )
    t = Table(
        f"Full from the first request: {n} status jobs, portal {RATE:g}/s burst {BURST}, {LATENCY * 1000:.0f} ms "
        "latency, 4 workers at default settings, enqueued while they run",
        ("metric", "bound", "measured", "ratio"),
    )
    t.add("whole run, first enqueue -> last applied (s)", fmt(bound, 1), fmt(whole, 1), ratio(bound, whole))
    t.add("  bound with b24q's usable burst (s)", fmt(ours, 1), "", ratio(ours, whole))
    t.add("enqueue (s)", "", fmt(t1 - t0, 2), "")
    t.add("applied", fmt(n), fmt(applied), ratio(applied, n))
    t.add("requests / 503s", fmt(-(-n // 50)), f"{counters['accepted']} / {counters['refused_503']}", "")
    t.add("usable burst (of the portal's)", fmt(BURST), fmt(limits.our_burst), ratio(limits.our_burst, BURST))
    if batches:
        t.add("first request applied, after the first enqueue (s)", "", fmt(batches[0][0], 2), "")
        t.add("last request applied, after the first enqueue (s)", "", fmt(batches[-1][0], 2), "")
        t.add("requests under 50 commands", "0", fmt(sum(1 for _, c in batches if c < 50)), "")
    t.note(f"commands per request: {counters['batch_commands'] / max(1, counters['batches']):.1f} in batches")
    first = [f"+{at:.2f} s {c}" for at, c in batches if at < 3.0]
    t.note("the first 3 s (when the portal applied each request, its commands): " + ", ".join(first))
    return [t]
