"""Scenario 5, many portals: 200 standard portals (50 with --quick) with a skewed load, 4 workers.

A few hot portals carry thousands of jobs (past their burst, so their bucket binds), some warm ones
hundreds, most a handful. Two limits: the steady-state ceiling, the sum over portals of rate x 50
jobs/s; and this workload's own bound, since no schedule can finish before its slowest portal
drains: N / max over portals of (ceil(commands_p/50) - 45)/rate (a job is a command, except that
delivery confirmations for one connector and line merge, see `bench.workload.commands`). The
number that matters as much as the rate: no portal should see a 503, whatever the others do.
"""

from __future__ import annotations

import math
import threading
import time

import psutil

from bench.profiler import start_workers
from bench.report import Table, bucket_time, fmt, ratio
from bench.scenarios import Options
from bench.stack import DONE, CpuMeter, add_portal, bench_stack, log, records, stack_pids, wait_backlog
from bench.workload import Job, applied, commands, mixed
from tasks.producer import enqueue_many
from workers.runtime import get_runtime

RATE, BURST = 2.0, 50


def plan(portals: int, quick: bool) -> dict[str, int]:
    """Jobs per portal: 1-3 hot (past their burst even with merging), 10% warm, the rest a handful."""
    hot, hot_n = (1, 3200) if quick else (3, 5000)
    warm = max(1, portals // 10)
    sizes = [hot_n] * hot + [200 if not quick else 100] * warm + [10] * (portals - hot - warm)
    return {f"p{i + 1:03d}.bench.test": n for i, n in enumerate(sizes)}


def run(opts: Options) -> list[Table]:
    portals = 50 if opts.quick else 200
    return measure(opts, "many", plan(portals, opts.quick))


def thousand(opts: Options) -> list[Table]:
    """Issue 12's scale: 1,000 standard portals x 20 jobs plus 3 hot ones (1,000 of each with --quick, so the
    quick suite stays short): worker threads and memory reported, since lanes are threads per busy portal."""
    hot = 1000 if opts.quick else 5000
    sizes = {f"h{i + 1}.bench.test": hot for i in range(3)} | {f"t{i + 1:04d}.bench.test": 20 for i in range(1000)}
    return measure(opts, "thousand", sizes)


class PeakSampler:
    """Peak threads and resident memory of the worker processes, sampled every half second meanwhile."""

    def __init__(self, pids: list[int]) -> None:
        self._procs = [psutil.Process(p) for p in pids]
        self.threads = 0
        self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.threads = max(self.threads, max(p.num_threads() for p in self._procs))
                self.rss = max(self.rss, max(p.memory_info().rss for p in self._procs))
            except psutil.Error:
                pass

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(opts: Options, name: str, sizes: dict[str, int]) -> list[Table]:
    portals = len(sizes)
    total = sum(sizes.values())
    with bench_stack(log_dir=opts.dir_for(name)) as stack:
        log(f"{name}: registering {portals} portals")
        for domain in sizes:
            add_portal(stack, domain, RATE, BURST)
        threads = stack.settings.worker_concurrency  # the default a user runs (B24Q_WORKER_CONCURRENCY)
        start_workers(stack, 4, threads, opts.profile_dir(name))
        some = get_runtime().registry.get(next(iter(sizes)))
        assert some is not None
        burst_used = some.limits(stack.settings).our_burst
        # interleave the portals as traffic from many tenants would arrive
        queues = {d: mixed(d, n) for d, n in sizes.items()}
        jobs: list[Job] = []
        for i in range(max(sizes.values())):
            jobs.extend(q[i] for q in queues.values() if i < len(q))
        log(f"{name}: enqueueing {total} jobs")
        meter = CpuMeter(stack_pids(stack))
        cpu0 = meter.sample()
        t0 = time.time()
        with PeakSampler([w.process.pid for w in stack.workers]) as peak:
            ids = enqueue_many(jobs)
            t1 = time.time()
            merge_max = int(getattr(stack.settings, "merge_max", 1))
            cmds = {d: commands(q, merge_max) for d, q in queues.items()}
            bound_s = max(bucket_time(c, RATE, burst_used) for c in cmds.values())
            finished = wait_backlog(list(sizes), timeout=total / 50 + 60)
        cpu = sum(CpuMeter.delta(cpu0, meter.sample()).values())
        cpu_span = time.time() - t0
        recs = records(ids)
        states = {d: stack.emulator.state(d) for d in sizes}

    done = [r for r in recs if r.state in DONE]
    superseded = sum(r.state == "superseded" for r in recs)
    last = max((r.updated for r in done), default=t1)
    rate = len(done) / (last - t0)
    refused = {d: int(s["counters"]["refused_503"]) for d, s in states.items()}
    effects = [applied(s) for s in states.values()]
    distinct = sum(e.distinct for e in effects)
    ceiling = portals * RATE * 50 * total / sum(cmds.values())
    bound = total / bound_s if bound_s > 0 else math.inf
    hot_n = max(sizes.values())
    t = Table(
        f"many portals: {portals} standard portals (rate {RATE:g}/s, burst {BURST}), {total} mixed jobs "
        f"(sizes {sorted(set(sizes.values()), reverse=True)}), 4 workers x {threads} threads",
        ("metric", "limit", "measured", "ratio"),
    )
    t.add("steady-state ceiling, sum of rate x 50 x jobs/command (jobs/s)", fmt(ceiling), "", "")
    t.add(
        f"this workload's bound: {total} / {bound_s:.1f}s for a {hot_n}-job portal (jobs/s)",
        fmt(bound),
        fmt(rate),
        ratio(rate, bound),
    )
    t.add("seconds, enqueue start -> last job applied", fmt(bound_s), fmt(last - t0), ratio(bound_s, last - t0))
    t.add("enqueue time (s)", "", fmt(t1 - t0, 1), "")
    t.add("503s, total", "0", fmt(sum(refused.values())), "")
    t.add("503s, worst portal", "0", fmt(max(refused.values())), "")
    t.add("portals that saw a 503", "0", fmt(sum(v > 0 for v in refused.values())), "")
    t.add(
        "lost (not applied/dead at the end)",
        "0",
        fmt(sum(r.state not in ("applied", "superseded", "dead") for r in recs)),
        "",
    )
    t.add("duplicates", "0", fmt(sum(e.duplicates for e in effects)), "")
    t.add("jobs run more than once (deferred for a slot, retried)", "", fmt(sum(r.runs > 1 for r in recs)), "")
    t.add("superseded (newer sender updates of the same code)", "", fmt(superseded), "")
    t.add(
        "applied at the portals (distinct)", fmt(total - superseded), fmt(distinct), ratio(distinct, total - superseded)
    )
    hot = [d for d, n in sizes.items() if n == hot_n]
    hot_req = sum(int(states[d]["counters"]["accepted"]) for d in hot)
    per_req = hot_n * len(hot) / max(hot_req, 1)
    t.add(f"hot portals ({len(hot)}): requests / jobs per request", "", f"{hot_req} / {per_req:.1f}", "")
    all_req = sum(int(s["counters"]["accepted"]) for s in states.values())
    t.add("all portals: requests / jobs per request", "", f"{all_req} / {total / all_req:.1f}", "")
    t.add("CPU cores busy (workers+emulator+redis), of 2", "", fmt(cpu / cpu_span, 2), "")
    t.add(f"peak threads in one worker process ({threads} job threads)", "", fmt(peak.threads), "")
    t.add("peak resident memory of one worker process (MB)", "", fmt(peak.rss / 2**20, 0), "")
    if not finished:
        t.note("the jobs did not all finish before the timeout")
    return [t]
