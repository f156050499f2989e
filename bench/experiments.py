"""One-off experiments behind the explanations in docs/benchmarks.md (not part of `bench.run`).

    python -m bench.experiments lanes        light load on a standard portal with 1 and with 4 workers
    python -m bench.experiments concurrency  3 hot portals, 4 workers, 64 and 192 threads each
    python -m bench.experiments events       raw drain with Celery task events on and off

Each isolates one cause by changing one thing, on the same stack setup as the scenarios.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.report import percentile
from bench.scenarios.raw import steady
from bench.stack import CpuMeter, add_portal, backlog, bench_stack, log, records, stack_pids, wait_backlog
from bench.workload import mixed
from tasks.producer import enqueue, enqueue_many


def lanes(workers: int, duration: float = 30.0) -> str:
    """10 single jobs/s on a standard portal with 100 ms latency: p99 against the number of workers."""
    portal = "lanes.bench.test"
    with bench_stack() as stack:
        add_portal(stack, portal, 2.0, 50, latency=0.1)
        stack.start_workers(workers, concurrency=64)
        jobs = mixed(portal, int(duration * 10))
        ids = []
        start = time.monotonic()
        for i, (kind, payload) in enumerate(jobs):
            pause = start + i / 10 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            ids.append(enqueue(kind, payload))
        wait_backlog([portal], 30)
        recs = records(ids)
        lat = [r.latency for r in recs if r.state == "applied"]
        late = [r.latency for r in recs[len(recs) // 2 :] if r.state == "applied"]
        requests = stack.emulator.state(portal)["counters"]["accepted"]
    return (
        f"{workers} workers: p50 {percentile(lat, 50):.3f} p95 {percentile(lat, 95):.3f} p99 {percentile(lat, 99):.3f}"
        f" | second half p50 {percentile(late, 50):.3f} p99 {percentile(late, 99):.3f} | requests {requests}"
    )


def concurrency(threads: int, hot: int = 3, each: int = 4000) -> str:
    """`hot` portals with `each` jobs, interleaved, 4 workers of `threads`: jobs per request and jobs/s."""
    sizes = {f"hot{i}.bench.test": each for i in range(hot)}
    with bench_stack() as stack:
        for domain in sizes:
            add_portal(stack, domain, 2.0, 50)
        stack.start_workers(4, concurrency=threads)
        queues = [mixed(d, n) for d, n in sizes.items()]
        jobs = [q[i] for i in range(each) for q in queues]
        meter = CpuMeter(stack_pids(stack))
        cpu0 = meter.sample()
        t0 = time.time()
        ids = enqueue_many(jobs)
        t1 = time.time()
        wait_backlog(list(sizes), 300)
        cpu = sum(CpuMeter.delta(cpu0, meter.sample()).values())
        recs = records(ids)
        last = max(r.updated for r in recs)
        requests = sum(stack.emulator.state(d)["counters"]["accepted"] for d in sizes)
    return (
        f"concurrency {threads}, {hot} hot x {each}: {len(recs) / (last - t0):.0f} jobs/s, "
        f"{len(recs) / requests:.1f} jobs/request, enqueue {t1 - t0:.1f}s, cores {cpu / (time.time() - t0):.2f}"
    )


def events(on: bool, n: int = 8000) -> str:
    """Drain `n` preloaded jobs on an unlimited portal with 2 workers, Celery task events `on` or off."""
    portal = "events.bench.test"
    with bench_stack() as stack:
        add_portal(stack, portal, rate=0)
        ids = enqueue_many(mixed(portal, n))
        procs: list[subprocess.Popen[bytes]] = []
        logs = [stack.dir / f"x{i}.log" for i in range(2)]
        try:
            for i, path in enumerate(logs):
                cmd = [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.events_app",
                    "worker",
                    "--loglevel=INFO",
                    f"--hostname=x{i}@%h",
                    "--concurrency=64",
                ]
                env = {**stack.env, "BENCH_TASK_EVENTS": "1" if on else "0"}
                with open(path, "wb") as out:
                    procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 60
            while not all(b" ready." in p.read_bytes() for p in logs) and time.monotonic() < deadline:
                time.sleep(0.1)
            pids = {f"x{i}": p.pid for i, p in enumerate(procs)}
            pids.update({k: v for k, v in stack_pids(stack).items() if k in ("emulator", "redis")})
            meter = CpuMeter(pids)
            cpu0, left = meter.sample(), backlog([portal])
            wait_backlog([portal], 120)
            cpu = CpuMeter.delta(cpu0, meter.sample())
            rate = steady(records(ids))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    workers_ms = 1000 * (cpu["x0"] + cpu["x1"]) / max(left, 1)
    total_ms = 1000 * sum(cpu.values()) / max(left, 1)
    state = "on " if on else "off"
    return f"task events {state}: steady {rate:.0f} jobs/s, CPU {total_ms:.2f} ms/job (workers {workers_ms:.2f})"


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what == "lanes":
        lines = [lanes(w) for w in (1, 4)]
    elif what == "concurrency":
        lines = [concurrency(c) for c in (64, 192)]
    elif what == "events":
        lines = [events(on) for on in (True, False, True, False)]
    else:
        print(__doc__)
        return 2
    log(f"{what}: done")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
