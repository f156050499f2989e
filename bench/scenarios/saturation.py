"""Scenario 1, saturation: one standard portal (2 req/s, burst 50) and a backlog of mixed jobs.

Each request is one unit of the bucket and carries up to 50 commands, so the ceiling is rate x 50
commands/s. A job is one command, except delivery confirmations for the same connector and line,
which b24q merges into one command (up to `merge_max` messages): the jobs/s ceiling of a workload is
rate x 50 x jobs/command. From an empty bucket, N jobs need R = ceil(commands/50) requests and
(R - burst_used)/rate seconds, where b24q uses burst 45 (50 minus `burst_margin`).

Steady state is measured from the moment the backlog is fully enqueued and the burst is spent to
the last job applied, so neither the enqueue ramp nor the initial burst count. The naive baseline
gets the same portal limits on its own portal.
"""

from __future__ import annotations

import math
import time

from bench import baseline
from bench.profiler import start_workers
from bench.report import Table, bucket_time, fmt, ratio
from bench.scenarios import Options
from bench.stack import DONE, CpuMeter, add_portal, bench_stack, log, mono_offset, records, stack_pids, wait_backlog
from bench.workload import applied, commands, mixed
from tasks.producer import enqueue_many
from workers.runtime import get_runtime

RATE, BURST = 2.0, 50
PORTAL = "sat.bench.test"
NAIVE_PORTAL = "naive-sat.bench.test"


def run(opts: Options) -> list[Table]:
    n = 4000 if opts.quick else 5000
    naive_n = 100 if opts.quick else 300
    workers = 4
    with bench_stack(settings=opts.stack_settings(), log_dir=opts.dir_for("saturation")) as stack:
        add_portal(stack, PORTAL, RATE, BURST)
        naive_info = add_portal(stack, NAIVE_PORTAL, RATE, BURST)
        naive_workers = baseline.NaiveWorkers(stack, count=4, threads=8, rate_limit=f"{RATE:g}/s")
        try:
            start_workers(stack, workers, 64, opts.profile_dir("saturation"))
            naive_workers.wait_ready()
            portal = get_runtime().registry.get(PORTAL)
            assert portal is not None
            burst_used = portal.limits(stack.settings).our_burst
            merge_max = int(getattr(stack.settings, "merge_max", 1))
            meter = CpuMeter(stack_pids(stack))
            cpu0 = meter.sample()

            jobs = mixed(PORTAL, n)
            cmds = commands(jobs, merge_max)
            limit_s = bucket_time(cmds, RATE, burst_used)
            log(f"saturation: enqueueing {n} mixed jobs ({cmds} commands) for {PORTAL}")
            t0 = time.time()
            ids = enqueue_many(jobs)
            t1 = time.time()
            finished = wait_backlog([PORTAL], timeout=bucket_time(n, RATE, burst_used) * 3 + 60)
            cpu = sum(CpuMeter.delta(cpu0, meter.sample()).values())
            recs = records(ids)
            state = stack.emulator.state(PORTAL)

            log(f"saturation: naive baseline, {naive_n} jobs")
            naive_result = baseline.run(
                stack, NAIVE_PORTAL, naive_info, mixed(NAIVE_PORTAL, naive_n), timeout=naive_n / 2 + 60
            )
        finally:
            naive_workers.stop()

    done = [r for r in recs if r.state in DONE]
    superseded = sum(r.state == "superseded" for r in recs)
    dead = sum(r.state == "dead" for r in recs)
    lost = sum(r.state not in ("applied", "superseded", "dead") for r in recs)
    last = max((r.updated for r in done), default=t1)
    offset = mono_offset()
    accepted = sorted(t + offset for t in state["accepted_times"])
    burst_end = accepted[burst_used - 1] if len(accepted) >= burst_used else t1
    win_start = max(t1, burst_end)
    window = last - win_start
    jobs_w = sum(r.updated > win_start for r in done)
    reqs_w = sum(t > win_start for t in accepted)
    reqs_burst = sum(t <= burst_end for t in accepted)
    # jobs applied before the first request after the burst was accepted: what the burst carried
    after_burst = accepted[burst_used] if len(accepted) > burst_used else math.inf
    jobs_burst = sum(r.updated < after_burst for r in done)
    effects = applied(state)
    c = state["counters"]

    per_cmd = n / cmds  # jobs per command at full merging
    requests = math.ceil(cmds / 50)
    overall = len(done) / (last - t0) if last > t0 else math.nan
    steady = jobs_w / window if window > 0 else math.nan
    req_rate = reqs_w / window if window > 0 else math.nan
    per_req = jobs_w / reqs_w if reqs_w else math.nan
    ceiling = RATE * 50 * per_cmd
    overall_limit = n / limit_s if limit_s > 0 else math.inf

    t = Table(f"saturation: 1 portal (rate {RATE:g}/s, burst {BURST}), {n} mixed jobs, {workers} workers x 64 threads")
    t.add(
        "theoretical drain time from an empty bucket (s)",
        f"R=ceil({cmds}/50)={requests}; ({requests}-{burst_used})/{RATE:g} = {limit_s:.1f}",
        "",
        "",
    )
    t.add("  same without merging (1 job = 1 command)", f"{bucket_time(n, RATE, burst_used):.1f}", "", "")
    t.add("seconds, enqueue start -> last job applied", fmt(limit_s), fmt(last - t0), ratio(limit_s, last - t0))
    t.add("jobs/s overall", fmt(overall_limit), fmt(overall), ratio(overall, overall_limit))
    t.add(f"jobs/s steady state ({window:.1f}s window)", fmt(ceiling), fmt(steady), ratio(steady, ceiling))
    t.add("requests/s steady state", fmt(RATE, 2), fmt(req_rate, 2), ratio(req_rate, RATE))
    t.add("jobs per request steady state", fmt(50 * per_cmd), fmt(per_req), ratio(per_req, 50 * per_cmd))
    t.add(
        f"jobs carried by the first {reqs_burst} requests (the burst)",
        fmt(min(n, 50 * per_cmd * reqs_burst), 0),
        fmt(jobs_burst),
        ratio(jobs_burst, min(n, 50 * per_cmd * reqs_burst)),
    )
    t.add("enqueue time (s)", "", fmt(t1 - t0, 2), "")
    t.add("503s received", "0", fmt(int(c["refused_503"])), "")
    t.add("duplicates (emulator count > 1)", "0", fmt(effects.duplicates), "")
    t.add("lost (not applied/dead at the end)", "0", fmt(lost), "")
    t.add("dead letters", "0", fmt(dead), "")
    t.add("jobs run more than once (deferred for a slot, retried)", "", fmt(sum(r.runs > 1 for r in recs)), "")
    t.add("superseded (a newer sender update of the same code)", "", fmt(superseded), "")
    t.add(
        "applied at the portal (distinct)",
        fmt(n - superseded),
        fmt(effects.distinct),
        ratio(effects.distinct, n - superseded),
    )
    t.add("CPU ms per job (workers+emulator+redis)", "", fmt(1000 * cpu / max(len(done), 1), 2), "")
    t.note(f"{n} jobs = {cmds} commands: delivery confirmations for one connector+line merge (merge_max {merge_max})")
    if not finished:
        t.note("the backlog did not drain before the timeout")

    b = Table(
        f"saturation vs the naive baseline (same limits; naive: 4 workers x 8 threads, rate_limit {RATE:g}/s, "
        f"no retries), {naive_n} jobs",
        ("metric", "b24q", "naive"),
    )
    b.add("jobs", fmt(n), fmt(naive_result.jobs))
    b.add("jobs/s (applied / elapsed)", fmt(overall), fmt(naive_result.rate, 2))
    b.add("503s received", fmt(int(c["refused_503"])), fmt(naive_result.refused_503))
    b.add("lost (not applied)", fmt(n - superseded - effects.distinct), fmt(naive_result.lost))
    b.add(
        "lost %",
        fmt(100 * (n - superseded - effects.distinct) / n, 1),
        fmt(100 * naive_result.lost / naive_result.jobs, 1),
    )
    b.add("duplicates", fmt(effects.duplicates), fmt(naive_result.duplicates))
    b.add("elapsed (s)", fmt(last - t0), fmt(naive_result.elapsed))
    if not naive_result.finished:
        b.note("the naive run did not finish before its timeout")
    return [t, b]
