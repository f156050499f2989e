"""Scenario 2, raw overhead: what b24q itself costs, with no portal limit and no portal latency.

The emulator does not limit the portal (rate 0), so nothing but CPU bounds throughput: jobs/s on
this machine with 2 worker processes, and CPU seconds per job summed over the workers, the emulator
and redis-server (all on the same cores). Three phases:

1. the producer alone (no worker running): its enqueue rate;
2. the workers drain that backlog: jobs/s (steady = between the 10th and 90th percentile of finish
   times, so worker start-up and the tail do not count) and CPU per job;
3. end to end: the producer enqueues while the workers run (first enqueue -> last job applied);
4. the pipeline alone: b24q's `run_job` called by 64 threads of this process, no Celery (what b24q's
   own code costs per job, beside the Celery floor the naive workers measure with no-op tasks);
5. counting: a smaller backlog drained under Redis MONITOR, to split the commands per job into those
   clients send (b24q's and Celery's, an EVALSHA counting one) and those scripts run inside Redis.

The naive baseline then runs its own jobs against its own unlimited portal, also end to end.
"""

from __future__ import annotations

import math
import signal
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from bench import baseline
from bench.profiler import start_workers
from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.stack import (
    DONE,
    CommandTap,
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
from tasks.jobs import KINDS
from tasks.producer import enqueue_many
from workers.pipeline import run_job
from workers.runtime import get_runtime

TARGET = 1000.0
TARGET_X = 5.0
#: CPU per job against the naive baseline's (issue 12)
CPU_TARGET_X = 0.33
DRAIN, E2E, NAIVE = "raw.bench.test", "raw-e2e.bench.test", "naive-raw.bench.test"
TAPPED = "raw-tapped.bench.test"
ALONE = "raw-alone.bench.test"
#: commands per job clients may send in the drain (issue 12)
COMMANDS_TARGET = 12.0


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
    with bench_stack(settings=opts.stack_settings(), log_dir=opts.dir_for("raw")) as stack:
        for domain in (DRAIN, E2E, TAPPED, ALONE):
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

            # 4. the pipeline alone, in this process
            alone_n = n // 3
            log(f"raw: {alone_n} jobs through run_job in this process (no Celery)")
            alone_cpu, alone_rate = pipeline_alone(mixed(ALONE, alone_n))

            # the naive baseline, end to end
            log(f"raw: naive baseline, {naive_n} jobs")
            naive_meter = CpuMeter(
                {**naive_workers.pids, **{k: v for k, v in stack_pids(stack).items() if k in ("emulator", "redis")}}
            )
            cpu0, calls0 = naive_meter.sample(), redis_calls(stack)
            naive_result = baseline.run(stack, NAIVE, naive_info, mixed(NAIVE, naive_n), timeout=naive_n / 20 + 60)
            naive_cpu = per_job(CpuMeter.delta(cpu0, naive_meter.sample()), naive_n)
            naive_calls = redis_calls(stack) - calls0

            # Celery's own floor: the same number of no-op tasks on the naive workers, acknowledged late
            log(f"raw: Celery floor, {naive_n} no-op tasks")
            cpu0 = naive_meter.sample()
            floor_s = baseline.floor(stack, mixed(NAIVE, naive_n), timeout=naive_n / 20 + 60)
            floor_cpu = per_job(CpuMeter.delta(cpu0, naive_meter.sample()), naive_n)
            cpu0 = naive_meter.sample()
            early_s = baseline.floor(stack, mixed(NAIVE, naive_n), timeout=naive_n / 20 + 60, early=True)
            early_cpu = per_job(CpuMeter.delta(cpu0, naive_meter.sample()), naive_n)
        finally:
            naive_workers.stop()

        # 5. counting under MONITOR (slower: after every timed phase). The workers stop first, so that
        # the producer's commands and the drain's are told apart; the drain's include two workers'
        # start-up (connections, script loads), a few hundredths of a command per job.
        tapped_n = n // 3
        log(f"raw: {tapped_n} jobs enqueued, then drained, under MONITOR (counting commands by issuer)")
        for worker in stack.workers:
            worker.kill(signal.SIGTERM)  # all at once: each warm shutdown may take a moment
        for worker in stack.workers:
            worker.stop(signalled=True)
        with CommandTap(stack) as tap:
            enqueue_many(mixed(TAPPED, tapped_n))
            produced = tap.reset()
            start_workers(stack, workers, 64, None)
            wait_backlog([TAPPED], timeout=tapped_n / 20 + 60)
        drained = tap.reset()

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
    t.add("CPU per job, b24q / naive (lower is better)", f"{CPU_TARGET_X:.2f}x", f"{cpu_x:.2f}x", "")
    t.add(f"b24q pipeline alone, no Celery: {alone_n} raw jobs, 64 threads (jobs/s)", "", fmt(alone_rate, 0), "")
    t.add("  its CPU ms per job (this process: run_job, lanes, HTTP client)", "", fmt(alone_cpu, 2), "")
    t.add(f"Celery floor: {naive_n} no-op tasks, late ack (jobs/s)", "", fmt(naive_n / floor_s, 0), "")
    floor_x = sum(floor_cpu.values()) / sum(naive_cpu.values())
    t.add("  floor CPU ms per job (workers+emulator+redis)", "", fmt(sum(floor_cpu.values()), 2), "")
    t.add("  floor CPU per job / naive's", f"{CPU_TARGET_X:.2f}x", f"{floor_x:.2f}x", "")
    early_x = sum(early_cpu.values()) / sum(naive_cpu.values())
    t.add("  the same, acknowledged on receipt (jobs/s)", "", fmt(naive_n / early_s, 0), "")
    t.add("  its CPU ms per job / naive's", "", f"{sum(early_cpu.values()):.2f} / {early_x:.2f}x", "")
    t.note("naive: 4 workers x 8 threads, no rate_limit (the portal is unlimited), one request per job")
    t.note(
        "floor: the naive workers running a task that does nothing, acknowledged after it ran as b24q's jobs "
        "are: what any design costs in which each job is its own Celery message; acknowledged on receipt: "
        "what one costs that does not hold the message until the job's outcome"
    )

    r = Table(
        "raw overhead: Redis commands per job (INFO commandstats; b24q drain phase vs naive run)",
        ("command", "b24q", "naive"),
    )
    r.add("all", f"{drain_calls.total() / left0:.2f}", f"{naive_calls.total() / naive_n:.2f}")
    for name, _ in (drain_calls + naive_calls).most_common(14):
        r.add(name, f"{drain_calls[name] / left0:.2f}", f"{naive_calls[name] / naive_n:.2f}")
    r.note("naive includes 2 commands per job (hincrby, hset) of the benchmark's own outcome counter")
    r.note("INFO commandstats counts the commands a Lua script runs inside Redis as well as those clients send")
    return [t, r, issuers(produced, drained, tapped_n, naive_calls.total() / naive_n)]


def pipeline_alone(jobs: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[float, float]:
    """Run each of `jobs` through `run_job` here: CPU ms per job of this process (its lanes and HTTP client
    included, the emulator's and Redis' not) and jobs/s. Nothing is enqueued (the workers would take the
    messages too): each job is as a raw message's, its record, payload and order stamp written at first
    sight, two commands more than a job the producer recorded."""
    rt = get_runtime()
    work = [(KINDS[kind], str(uuid.uuid4()), {**payload}) for kind, payload in jobs]

    def retry(countdown: float, exc: BaseException) -> NoReturn:
        raise exc

    def one(item: tuple[Any, str, dict[str, Any]]) -> None:
        kind, job_id, kwargs = item
        run_job(kind, job_id, (), kwargs, rt.job_services, retry, "bench")

    cpu0, t0 = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(one, work))
    cpu, took = time.process_time() - cpu0, time.monotonic() - t0
    return 1000 * cpu / len(work), len(work) / took


def issuers(
    produced: Mapping[str, Counter[str]], drained: Mapping[str, Counter[str]], jobs: int, naive: float
) -> Table:
    """Commands per job by issuer: what clients send (the round trips' worth of work) and what scripts run."""
    t = Table(
        f"raw overhead: Redis commands per job by issuer ({jobs} jobs under MONITOR; the drain's count includes "
        f"two workers' start-up)",
        ("who", "sent by clients", "run inside scripts", "target (sent, drain)", "sent / target"),
    )
    for label, counts in (("producer (enqueue_many)", produced), ("drain (workers)", drained)):
        sent, inside = counts["client"].total() / jobs, counts["lua"].total() / jobs
        target = label.startswith("drain")
        t.add(
            label,
            f"{sent:.2f}",
            f"{inside:.2f}",
            f"<= {COMMANDS_TARGET:.0f}" if target else "",
            ratio(sent, COMMANDS_TARGET) if target else "",
        )
    t.add("naive Celery (no scripts), drain + its counter", f"{naive:.2f}", "0", "", "")
    top = drained["client"].most_common(10)
    t.note("drain, sent: " + ", ".join(f"{name} {n / jobs:.2f}" for name, n in top))
    top = drained["lua"].most_common(10)
    t.note("drain, inside scripts: " + ", ".join(f"{name} {n / jobs:.2f}" for name, n in top))
    return t
