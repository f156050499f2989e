"""Scenario: the same b24q workload on each broker, in one sitting (Redis, then RabbitMQ).

For each broker, on an unlimited portal with no latency (what b24q itself costs, as in `raw`):

1. the producer alone (no worker running): its enqueue rate, every batch confirmed on RabbitMQ;
2. one b24q worker (64 threads) drains that backlog: CPU per job of the worker, of redis-server (state,
   and on Redis the messages too) and of the RabbitMQ server (its whole Erlang VM: the machine's
   RabbitMQ, other users included; nothing else uses it during a quiet run).

RabbitMQ is the machine's own (`B24Q_BENCH_RABBITMQ_URL`, default amqp://guest:guest@127.0.0.1:5672//),
with queues of this run's own, deleted at the end.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import psutil

from bench.profiler import start_workers
from bench.report import Table, fmt
from bench.scenarios import Options
from bench.stack import CpuMeter, add_portal, backlog, bench_stack, log, stack_pids, wait_backlog
from bench.workload import mixed
from tasks.producer import enqueue_many

RABBITMQ_URL = os.environ.get("B24Q_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
PORTAL = "brokers.bench.test"


def _rabbitmq_pid() -> int | None:
    """The RabbitMQ server's Erlang VM on this machine, if it runs here."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (proc.info["name"] or "").startswith("beam") and "rabbit" in cmdline:
            return int(proc.pid)
    return None


def measure(broker: str, n: int, opts: Options) -> dict[str, float]:
    settings: dict[str, Any] = {}
    if broker == "rabbitmq":
        settings = {"broker_url": RABBITMQ_URL, "queue": f"b24q-bench-{uuid.uuid4().hex[:8]}"}
    with bench_stack(settings=settings, log_dir=opts.dir_for(f"brokers-{broker}")) as stack:
        add_portal(stack, PORTAL, rate=0)
        enqueue_many(mixed(PORTAL, 50, start=10**6))  # connections, topology and scripts before the clock
        for warm in stack.start_workers(1, concurrency=8):  # (on RabbitMQ it also declares the delay queues)
            wait_backlog([PORTAL], timeout=60)
            warm.stop()
        stack.workers.clear()
        log(f"brokers: {broker}: enqueueing {n} jobs with no worker running")
        pids = {k: v for k, v in stack_pids(stack).items() if k in ("redis",)}
        rabbit = _rabbitmq_pid()
        if broker == "rabbitmq" and rabbit is not None:
            pids["rabbitmq"] = rabbit
        meter = CpuMeter(pids)
        cpu0 = meter.sample()
        started = time.monotonic()
        enqueue_many(mixed(PORTAL, n))
        enqueue_s = time.monotonic() - started
        enqueue_cpu = CpuMeter.delta(cpu0, meter.sample())
        start_workers(stack, 1, 64, None)
        meter = CpuMeter({**pids, **{w.name: w.process.pid for w in stack.workers}})
        left = backlog([PORTAL])
        cpu0 = meter.sample()
        started = time.monotonic()
        wait_backlog([PORTAL], timeout=n / 50 + 120)
        drain_s = time.monotonic() - started
        cpu = CpuMeter.delta(cpu0, meter.sample())
    worker = sum(v for k, v in cpu.items() if k not in ("redis", "rabbitmq"))
    return {
        "enqueue_rate": n / enqueue_s,
        "enqueue_broker_ms": 1000 * (enqueue_cpu.get("redis", 0.0) + enqueue_cpu.get("rabbitmq", 0.0)) / n,
        "drain_rate": left / drain_s,
        "worker_ms": 1000 * worker / left,
        "redis_ms": 1000 * cpu.get("redis", 0.0) / left,
        "rabbitmq_ms": 1000 * cpu.get("rabbitmq", 0.0) / left,
    }


def run(opts: Options) -> list[Table]:
    n = 3000 if opts.quick else 10000
    found = {broker: measure(broker, n, opts) for broker in ("redis", "rabbitmq")}
    t = Table(
        f"the same {n} mixed jobs on each broker: unlimited portal, no latency, one b24q worker x 64 threads "
        "(2-core machine: worker, emulator, redis-server and RabbitMQ share the cores)",
        ("metric", "redis", "rabbitmq"),
    )
    rows = (
        ("producer enqueue, no worker running (jobs/s)", "enqueue_rate", 0),
        ("  broker CPU while enqueueing (ms/job: redis-server / RabbitMQ)", "enqueue_broker_ms", 3),
        ("drain, one worker (jobs/s)", "drain_rate", 0),
        ("b24q worker CPU (ms/job)", "worker_ms", 3),
        ("redis-server CPU while draining (ms/job)", "redis_ms", 3),
        ("RabbitMQ CPU while draining (ms/job)", "rabbitmq_ms", 3),
    )
    for label, key, digits in rows:
        t.add(label, fmt(found["redis"][key], digits), fmt(found["rabbitmq"][key], digits))
    total = {b: found[b]["worker_ms"] + found[b]["redis_ms"] + found[b]["rabbitmq_ms"] for b in found}
    t.add("worker + redis-server + RabbitMQ (ms/job)", fmt(total["redis"], 3), fmt(total["rabbitmq"], 3))
    return [t]
