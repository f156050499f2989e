"""Redis bytes per finished job: what b24q keeps in Redis for each job applied (its ledger record: its entry in
the ledger's packed buckets, or a hash of its own when it cannot be packed; and the ordering state of the
message it reported on: its entry in the portal's ordering buckets), at default settings, and what that means
for a pool.

The naive baseline keeps nothing per finished job (no result backend): it also cannot say what happened to
a job, or keep an older status from overwriting a newer one. Figures are `MEMORY USAGE` per key (what Redis
charges each key, overhead included) and the growth of `used_memory` over the run, divided by the jobs.
"""

from __future__ import annotations

import collections

from bench.report import Table, fmt
from bench.scenarios import Options
from bench.stack import add_portal, bench_stack, log, wait_backlog
from bench.workload import SENDER
from tasks.producer import enqueue_many
from workers.runtime import get_runtime

PORTAL = "memory.bench.test"


def run(opts: Options) -> list[Table]:
    n = 1000 if opts.quick else 3000
    with bench_stack(log_dir=opts.dir_for("memory")) as stack:
        add_portal(stack, PORTAL, 0)
        stack.start_workers(2, concurrency=64)
        rt = get_runtime()
        before = int(rt.redis.info("memory")["used_memory"])
        jobs = [
            ("status-update", {"portal": PORTAL, "code": SENDER, "message_id": f"m{i}", "status": "delivered"})
            for i in range(n)
        ]
        log(f"memory: {n} status jobs to one unlimited portal")
        enqueue_many(jobs)
        wait_backlog([PORTAL], timeout=120)
        used = int(rt.redis.info("memory")["used_memory"]) - before
        sizes: collections.Counter[str] = collections.Counter()
        for key in rt.redis.scan_iter(count=1000):
            name = key.decode()
            if name.startswith(rt.keys.job("")):
                kind = "job record" + (" events" if name.endswith(":events") else "")
            elif name.startswith(rt.keys.ledger_packed() + ":"):
                kind = "job record"  # buckets, split sets and tables of names: their share per job
            elif name.startswith(rt.keys.order_states(PORTAL)):
                kind = "ordering state"
            else:
                continue
            sizes[kind] += int(rt.redis.memory_usage(key) or 0)
        s = stack.settings
    record = sizes["job record"] / n
    state = sizes["ordering state"] / n
    kept = s.ordering_retention / 86400  # an entry is kept one to two retentions after its last write
    applied = s.ledger_ttl_applied / 3600  # a packed record: one to two generations of this
    t = Table(
        f"Redis bytes per finished job: {n} status jobs applied on their first run, default retention",
        ("what", "naive", "b24q", "kept for"),
    )
    t.add("job record (MEMORY USAGE per job)", "0", fmt(record, 0), f"{applied:.0f}-{2 * applied:.0f} h")
    t.add("event lists of those jobs", "0", fmt(sizes["job record events"] / n, 0), "")
    t.add("ordering state (per message reported on)", "0", fmt(state, 0), f"{kept:.0f}-{2 * kept:.0f} d")
    t.add("record + ordering state (issue 21: <= 150)", "0", fmt(record + state, 0), "")
    t.add("used_memory growth per job", "0", fmt(used / n, 0), "")
    per_day = 25 * 86400
    records = per_day * record * 1.5 * s.ledger_ttl_applied / 86400  # on average 1.5 generations
    states = per_day / 3 * state * 1.5 * kept  # on average 1.5 retentions
    t.note(
        f"A pool applying 25 jobs/s, 3 reports per SMS, keeps about {(records + states) / 1e9:.1f} GB: "
        f"records {records / 1e9:.2f} GB, ordering states {states / 1e9:.2f} GB (docs/operations.md: Memory)."
    )
    return [t]
