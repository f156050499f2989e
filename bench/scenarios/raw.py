"""Scenario 2, raw overhead: what b24q itself costs, with no portal limit and no portal latency.

The emulator does not limit the portal (rate 0), so nothing but CPU bounds throughput: jobs/s on
this machine with 2 worker processes, and CPU seconds per job summed over the workers, the emulator
and redis-server (all on the same cores). Three phases:

1. the producer alone (no worker running): its enqueue rate;
2. the workers drain that backlog: jobs/s (steady = between the 10th and 90th percentile of finish
   times, so worker start-up and the tail do not count) and CPU per job;
3. end to end: the producer enqueues while the workers run (first enqueue -> last job applied).

The naive baseline then runs its own jobs against its own unlimited portal, also end to end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from bench import baseline
from bench.profiler import start_workers
from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.stack import (
    DONE,
    CpuMeter,
    Record,
    add_portal,
    backlog,
    bench_stack,
    log,
    records,
    redis_calls,
    stack_pids,
    wait_backlog,
)
from bench.workload import applied, mixed
from tasks.producer import enqueue_many

TARGET = 1000.0
TARGET_X = 5.0
DRAIN, E2E, NAIVE = "raw.bench.test", "raw-e2e.bench.test", "naive-raw.bench.test"


def steady(recs: Sequence[Record]) -> float:
    """jobs/s between the 10th and 90th percentile of the finish times."""
    times = [r.updated for r in recs if r.state in DONE]
    lo, hi = percentile(times, 10), percentile(times, 90)
    return 0.8 * len(times) / (hi - lo) if hi > lo else math.nan


def per_job(cpu: Mapping[str, float], jobs: int) -> dict[str, float]:
    """CPU ms per job by component: workers (summed), emulator, redis."""
    out = {"workers": 0.0, "emulator": 0.0, "redis": 0.0}
    for name, seconds in cpu.items():
        out[name if name in out else "workers"] += seconds
    return {k: 1000 * v / max(jobs, 1) for k, v in out.items()}


def run(opts: Options) -> list[Table]:
    n = 3000 if opts.quick else 10000
    naive_n = 1000 if opts.quick else 3000
    workers = 2
    with bench_stack(log_dir=opts.dir_for("raw")) as stack:
        for domain in (DRAIN, E2E):
            add_portal(stack, domain, rate=0)
        naive_info = add_portal(stack, NAIVE, rate=0)
        naive_workers = baseline.NaiveWorkers(stack, count=4, threads=8, rate_limit="")
        try:
            naive_workers.wait_ready()

            # 1. the producer alone
            jobs = mixed(DRAIN, n)
            log(f"raw: enqueueing {n} jobs with no worker running")
            t0 = time.time()
            ids = enqueue_many(jobs)
            produce = n / (time.time() - t0)

            # 2. the workers drain it
            start_workers(stack, workers, 64, opts.profile_dir("raw"))
            meter = CpuMeter(stack_pids(stack))
            cpu0, left0, ready, calls0 = meter.sample(), backlog([DRAIN]), time.time(), redis_calls(stack)
            wait_backlog([DRAIN], timeout=n / 50 + 60)
            drain_cpu = per_job(CpuMeter.delta(cpu0, meter.sample()), left0)
            drain_calls = redis_calls(stack) - calls0
            drain_recs = records(ids)
            drain_last = max((r.updated for r in drain_recs if r.state in DONE), default=ready)
            drain_state = stack.emulator.state(DRAIN)

            # 3. end to end: enqueue while the workers run
            jobs = mixed(E2E, n)
            log(f"raw: enqueueing {n} jobs while the workers run")
            cpu0 = meter.sample()
            t0 = time.time()
            ids = enqueue_many(jobs)
            t1 = time.time()
            wait_backlog([E2E], timeout=n / 50 + 60)
            e2e_cpu = per_job(CpuMeter.delta(cpu0, meter.sample()), n)
            e2e_recs = records(ids)
            e2e_last = max((r.updated for r in e2e_recs if r.state in DONE), default=t1)
            e2e_state = stack.emulator.state(E2E)

            # the naive baseline, end to end
            log(f"raw: naive baseline, {naive_n} jobs")
            naive_meter = CpuMeter(
                {**naive_workers.pids, **{k: v for k, v in stack_pids(stack).items() if k in ("emulator", "redis")}}
            )
            cpu0, calls0 = naive_meter.sample(), redis_calls(stack)
            naive_result = baseline.run(stack, NAIVE, naive_info, mixed(NAIVE, naive_n), timeout=naive_n / 20 + 60)
            naive_cpu = per_job(CpuMeter.delta(cpu0, naive_meter.sample()), naive_n)
            naive_calls = redis_calls(stack) - calls0
        finally:
            naive_workers.stop()

    drain_done = sum(r.state in DONE for r in drain_recs)
    e2e_done = sum(r.state in DONE for r in e2e_recs)
    drain_rate = left0 / (drain_last - ready) if drain_last > ready else math.nan
    drain_steady = steady(drain_recs)
    e2e_rate = e2e_done / (e2e_last - t0) if e2e_last > t0 else math.nan
    e2e_steady = steady(e2e_recs)

    def jobs_per_request(state: Mapping[str, object]) -> float:
        c = state["counters"]
        assert isinstance(c, dict)
        return (c["batch_commands"] + c["accepted"] - c["batches"]) / max(c["accepted"], 1)

    lost = (n - drain_done) + (n - e2e_done)
    dups = applied(drain_state).duplicates + applied(e2e_state).duplicates

    t = Table(
        f"raw overhead: unlimited portal, no latency, {n} mixed jobs per phase, {workers} b24q workers x 64 threads "
        f"(2-core machine: workers, emulator and redis share the cores)",
        ("metric", "target", "measured", "ratio"),
    )
    t.add("producer enqueue, no worker running (jobs/s)", "", fmt(produce, 0), "")
    t.add("b24q drain, steady 10-90% (jobs/s)", fmt(TARGET, 0), fmt(drain_steady, 0), ratio(drain_steady, TARGET))
    t.add(
        "b24q drain, workers ready -> last applied (jobs/s)",
        fmt(TARGET, 0),
        fmt(drain_rate, 0),
        ratio(drain_rate, TARGET),
    )
    t.add("b24q end to end, enqueue while running (jobs/s)", fmt(TARGET, 0), fmt(e2e_rate, 0), ratio(e2e_rate, TARGET))
    t.add("  producer enqueue meanwhile (jobs/s)", "", fmt(n / (t1 - t0), 0), "")
    t.add("  steady 10-90% (jobs/s)", fmt(TARGET, 0), fmt(e2e_steady, 0), ratio(e2e_steady, TARGET))
    t.add(
        "jobs per request (drain / end to end)",
        "50",
        f"{jobs_per_request(drain_state):.1f} / {jobs_per_request(e2e_state):.1f}",
        "",
    )
    for label, cpu in (("drain", drain_cpu), ("end to end", e2e_cpu)):
        total = sum(cpu.values())
        t.add(f"CPU ms per job, {label} (workers+emulator+redis)", "", fmt(total, 2), "")
        t.add(
            "  workers / emulator / redis", "", f"{cpu['workers']:.2f} / {cpu['emulator']:.2f} / {cpu['redis']:.2f}", ""
        )
    t.add("lost / duplicates", "0 / 0", f"{lost} / {dups}", "")
    t.add(f"naive end to end, {naive_n} jobs (jobs/s)", "", fmt(naive_result.rate, 0), "")
    t.add("  naive steady 10-90% (jobs/s)", "", fmt(naive_result.steady_rate, 0), "")
    t.add("  naive CPU ms per job (workers+emulator+redis)", "", fmt(sum(naive_cpu.values()), 2), "")
    t.add(
        "  naive workers / emulator / redis",
        "",
        f"{naive_cpu['workers']:.2f} / {naive_cpu['emulator']:.2f} / {naive_cpu['redis']:.2f}",
        "",
    )
    t.add("  naive lost / 503s", "", f"{naive_result.lost} / {naive_result.refused_503}", "")
    t.add(
        "b24q / naive, end to end",
        f"{TARGET_X:.0f}x",
        f"{e2e_rate / naive_result.rate:.2f}x",
        ratio(e2e_rate / naive_result.rate, TARGET_X),
    )
    t.add(
        "b24q / naive, steady",
        f"{TARGET_X:.0f}x",
        f"{drain_steady / naive_result.steady_rate:.2f}x",
        ratio(drain_steady / naive_result.steady_rate, TARGET_X),
    )
    cpu_x = sum(drain_cpu.values()) / sum(naive_cpu.values())
    t.add("CPU per job, b24q / naive (lower is better)", "", f"{cpu_x:.2f}x", "")
    t.note("naive: 4 workers x 8 threads, no rate_limit (the portal is unlimited), one request per job")

    r = Table(
        "raw overhead: Redis commands per job (INFO commandstats; b24q drain phase vs naive run)",
        ("command", "b24q", "naive"),
    )
    r.add("all", f"{drain_calls.total() / left0:.2f}", f"{naive_calls.total() / naive_n:.2f}")
    for name, _ in (drain_calls + naive_calls).most_common(14):
        r.add(name, f"{drain_calls[name] / left0:.2f}", f"{naive_calls[name] / naive_n:.2f}")
    r.note("naive includes 2 commands per job (hincrby, hset) of the benchmark's own outcome counter")
    return [t, r]
