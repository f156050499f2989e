"""Thousands of portals at the cost of a few (issue 21): one offered load, spread over N portals.

A gateway reports 200 message statuses a second for 30 s, one enqueue per report as it learns them, each to
a portal drawn at random from N (N = 10, 100, 1,000, 10,000; --quick: 10, 1,000 and 15 s), portal latency
50 ms, standard plan. b24q: 2 workers at the default concurrency (B24Q_WORKER_CONCURRENCY, 128 threads);
then, on the same stack and portals, the naive task (`bench.naive`: one httpx POST per job, no limiter) on
2 workers of 16 threads, fed the same reports. Per N and per design: worker CPU and context switches per job
(perf, where the machine has it), requests per job, peak threads and RSS per worker process, enqueue -> applied
latency p50/p99, lost, 503s. The naive task runs twice: with Celery's default early acks (the issue's baseline)
and acknowledged after its call, as b24q's jobs are (what losing no job to a dead worker costs Celery itself: two
more broker round trips a message on Redis). Last, Celery's own floor at the same load: its no-op task on 2
workers at b24q's concurrency, logging at INFO as b24q's workers do (`brokers.floor`, paced).

With 10 portals each gets 20 reports/s, past what one request a slot could carry unbatched (the naive task
loses jobs to 503s there); with 1,000 each gets one every 5 s: quiet portals, each job its own request.
Portals are registered through the emulator's admin API (installs are timed by `bench.run installs`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import redis

from bench import naive, noop
from bench.baseline import NaiveWorkers
from bench.profiler import start_workers
from bench.report import Table, fmt, percentile
from bench.scenarios import RABBITMQ_URL, Options
from bench.scenarios.brokers import Floor, floor
from bench.scenarios.many import PeakSampler
from bench.stack import DONE, CpuMeter, Switches, add_portal, bench_stack, log, records
from tasks.jobs import STATUS_UPDATE
from tasks.producer import enqueue
from workers.localdev.localstack import LocalStack

RATE_PER_S = 200
LATENCY = 0.05
SENDER = "scalesms"


def paced(seconds: float, every: float, send: Callable[[int], None]) -> int:
    """Call `send(i)` every `every` s for `seconds` (catching up if late); how many were sent."""
    start = time.monotonic()
    i = 0
    while True:
        due = start + i * every
        if due - start >= seconds:
            return i
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        send(i)
        i += 1


def run(opts: Options) -> list[Table]:
    sizes = (10, 1000) if opts.quick else (10, 100, 1000, 10000)
    seconds = 15.0 if opts.quick else 30.0
    table = Table(
        f"scale: {RATE_PER_S} status reports/s for {seconds:g} s over N portals (50 ms latency), "
        "b24q (2 workers, default concurrency) and the naive task (2 workers x 16 threads)",
        (
            "N portals / design",
            "CPU ms/job",
            "switches/job",
            "requests/job",
            "peak threads",
            "peak RSS MB",
            "p50 / p99 s",
            "lost",
            "503s",
        ),
    )
    for n in sizes:
        for row in measure(opts, n, seconds):
            table.add(*row)
    noop_ms, noop_switches = noop_floor(opts, seconds)
    table.add("Celery's no-op task", fmt(noop_ms, 2), noop_switches, "0.00", "", "", "", "", "")
    table.note("CPU: the worker processes' user+system time over the jobs they ran (not the emulator's or Redis's)")
    table.note("switches: the worker processes' context switches a job (perf stat; blank where perf is not available)")
    table.note("naive latency: enqueue -> the task's end; b24q's: the ledger's enqueue -> applied")
    table.note(
        f"b24q and the naive task are measured from their workers' first job, Celery's no-op task after {noop.STEP} "
        "(`bench.run busy` measures b24q warm as well)"
    )
    return [table]


def measure(opts: Options, n: int, seconds: float, naive_too: bool = True, warm: int = 0) -> list[list[str]]:
    """The rows of N portals: b24q's, then (`naive_too`) the naive task's, early and late acks, on the same stack.
    `warm` jobs run first, at the same pace, before the clock starts (as `brokers.floor` warms its no-op task)."""
    rng = random.Random(n)
    domains = [f"s{i:05d}.scale.test" for i in range(n)]
    with bench_stack(settings=opts.stack_settings(), log_dir=opts.dir_for(f"scale-{n}")) as stack:
        log(f"scale: registering {n} portals")
        infos: dict[str, dict[str, Any]] = {}
        for domain in domains:
            infos[domain] = add_portal(stack, domain, latency=LATENCY)
            stack.emulator.admin("POST", f"portals/{domain}/senders", {"code": SENDER, "name": "SMS"})
        concurrency = stack.settings.worker_concurrency
        start_workers(stack, 2, concurrency, opts.profile_dir(f"scale-{n}"))
        warm_up(domains, warm)
        before = {d: stack.emulator.state(d)["counters"] for d in domains}

        # b24q
        ids: list[str] = []
        meter = CpuMeter({w.name: w.process.pid for w in stack.workers})
        cpu0 = meter.sample()
        pids = [w.process.pid for w in stack.workers]
        with PeakSampler(pids) as peak, Switches(pids) as switches:

            def report(i: int) -> None:
                ids.append(enqueue(STATUS_UPDATE.name, report_of(domains[rng.randrange(n)], f"m{i}")))

            sent = paced(seconds, 1.0 / RATE_PER_S, report)
            wait_done(ids)
        cpu = sum(CpuMeter.delta(cpu0, meter.sample()).values())
        recs = records(ids)
        middle = {d: stack.emulator.state(d)["counters"] for d in domains}
        b24q_row = row(
            f"{n} / b24q",
            cpu,
            switches.per(sent),
            sent,
            requests(before, middle),
            peak,
            [r.latency for r in recs if r.state == "applied"],
            sum(r.state not in DONE for r in recs),
            refused(before, middle),
        )
        for worker in stack.workers:
            worker.stop()
        if not naive_too:
            return [b24q_row]

        # the naive task, same portals, same reports: as the issue has it (early acks), and acknowledged after its
        # call as b24q's jobs are (what losing no job to a dead worker costs Celery itself)
        naive.configure(*naive.broker_of(stack.settings))
        naive_rows = [naive_measure(stack, n, seconds, domains, infos, acks_late) for acks_late in (False, True)]
    return [b24q_row, *naive_rows]


def report_of(domain: str, message_id: str) -> dict[str, str]:
    """A status report of one message to one portal, as the gateway of this load makes them."""
    return {"portal": domain, "code": SENDER, "message_id": message_id, "status": "delivered"}


def warm_up(domains: list[str], jobs: int) -> None:
    """`jobs` reports at the load's pace over these portals, drawn apart from the measured ones, run to the end."""
    if not jobs:
        return
    log(f"scale: {jobs} jobs before the clock starts")
    rng = random.Random(f"warm-{len(domains)}")
    ids: list[str] = []
    paced(
        jobs / RATE_PER_S,
        1.0 / RATE_PER_S,
        lambda i: ids.append(enqueue(STATUS_UPDATE.name, report_of(domains[rng.randrange(len(domains))], f"w{i}"))),
    )
    if not wait_done(ids):
        raise RuntimeError("the warm-up's jobs did not all end: the measured jobs would run beside them")


def wait_done(ids: list[str], timeout: float = 120.0) -> bool:
    """Until every job has its outcome (True), or `timeout` (False: the rows count the ones without as lost)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.state in DONE for r in records(ids)):
            return True
        time.sleep(0.5)
    return False


def naive_measure(
    stack: LocalStack,
    n: int,
    seconds: float,
    domains: list[str],
    infos: dict[str, dict[str, Any]],
    acks_late: bool,
) -> list[str]:
    """The naive task fed the same reports at the same portals; its row."""
    rng = random.Random(n)
    before = {d: stack.emulator.state(d)["counters"] for d in domains}
    workers = NaiveWorkers(stack, count=2, threads=16, rate_limit="", acks_late=acks_late)
    try:
        workers.wait_ready()
        client = redis.Redis.from_url(stack.settings.redis_url)
        client.delete(naive.OUTCOMES, naive.LATENCIES)
        meter = CpuMeter(workers.pids)
        cpu0 = meter.sample()
        pids = list(workers.pids.values())
        with PeakSampler(pids) as peak, Switches(pids) as switches, naive.app.producer_or_acquire() as producer:
            method = STATUS_UPDATE.method

            def naive_report(i: int) -> None:
                domain = domains[rng.randrange(n)]
                info = infos[domain]
                params = STATUS_UPDATE.validate(
                    {"portal": domain, "code": SENDER, "message_id": f"n{i}", "status": "delivered"}
                ).params()
                naive.call.apply_async(
                    args=(info["client_endpoint"] + method, params, info["access_token"]),
                    headers={"sent_at": time.time()},
                    queue=naive.QUEUE,
                    producer=producer,
                )

            sent = paced(seconds, 1.0 / RATE_PER_S, naive_report)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                raw = client.hgetall(naive.OUTCOMES)
                if int(raw.get(b"ok", 0)) + int(raw.get(b"failed", 0)) >= sent:
                    break
                time.sleep(0.2)
        cpu = sum(CpuMeter.delta(cpu0, meter.sample()).values())
        raw = client.hgetall(naive.OUTCOMES)
        latencies = [float(x) for x in client.lrange(naive.LATENCIES, 0, -1)]
        after = {d: stack.emulator.state(d)["counters"] for d in domains}
        name = f"{n} / naive" + (", late acks" if acks_late else "")
        client.close()
        return row(
            name,
            cpu,
            switches.per(sent),
            sent,
            requests(before, after),
            peak,
            latencies,
            sent - int(raw.get(b"ok", 0)),
            refused(before, after),
        )
    finally:
        workers.stop()


def noop_floor(opts: Options, seconds: float) -> Floor:
    """Celery's own worker CPU per message on the same broker at the same load (`brokers.floor`, paced): a
    no-op task run as b24q runs its jobs, 2 workers at b24q's default concurrency."""
    with bench_stack(settings=opts.stack_settings(), log_dir=opts.dir_for("scale-noop")) as stack:
        log("scale: Celery's no-op task at the same load")
        redis_url = stack.env["B24Q_REDIS_URL"]
        broker = RABBITMQ_URL if opts.broker == "rabbitmq" else redis_url
        concurrency = stack.settings.worker_concurrency
        messages = int(RATE_PER_S * seconds)
        log_path = str(stack.dir / "noop.log")
        return floor(broker, redis_url, messages, log_path, pace=RATE_PER_S, workers=2, threads=concurrency)


def requests(before: dict[str, Any], after: dict[str, Any]) -> int:
    return sum(int(after[d]["requests"]) - int(before[d]["requests"]) for d in after)


def refused(before: dict[str, Any], after: dict[str, Any]) -> int:
    return sum(int(after[d]["refused_503"]) - int(before[d]["refused_503"]) for d in after)


def row(
    name: str,
    cpu: float,
    switches: str,
    jobs: int,
    reqs: int,
    peak: PeakSampler,
    latencies: list[float],
    lost: int,
    r503: int,
) -> list[str]:
    return [
        name,
        fmt(1000 * cpu / max(jobs, 1), 2),
        switches,
        fmt(reqs / max(jobs, 1), 2),
        str(peak.threads),
        fmt(peak.rss / 2**20, 0),
        f"{fmt(percentile(latencies, 50), 2)} / {fmt(percentile(latencies, 99), 2)}",
        str(lost),
        str(r503),
    ]
