"""Scenario: the same b24q workload on each broker, in one sitting (Redis, then RabbitMQ).

For each broker, on an unlimited portal with no latency (what b24q itself costs, as in `raw`):

1. the producer alone (no worker running): its enqueue rate, every batch confirmed on RabbitMQ;
2. one b24q worker (64 threads) drains that backlog: CPU per job of the worker, of redis-server (state,
   and on Redis the messages too) and of the RabbitMQ server (its whole Erlang VM: the machine's
   RabbitMQ, other users included; nothing else uses it during a quiet run);
3. Celery's own floor on that broker: one worker of a no-op task run as b24q runs its jobs (`bench.noop`:
   64 threads, late acks, prefetch 1; a quorum queue on RabbitMQ; logging at INFO, as b24q's worker) drains as many
   messages, enqueued first.
   What b24q saves by moving to RabbitMQ is compared with what the floor saves: the issue's test is that
   b24q keeps at least 80 % of the floor's difference (no broker-specific overhead of its own eats it).

RabbitMQ is the machine's own (`B24Q_BENCH_RABBITMQ_URL`, default amqp://guest:guest@127.0.0.1:5672//),
with queues of this run's own, deleted at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, NamedTuple

import psutil
import redis
from celery import Celery
from kombu import Connection, Queue

from bench import noop
from bench.profiler import start_workers
from bench.report import Table, fmt
from bench.scenarios import RABBITMQ_URL, Options
from bench.stack import CpuMeter, Switches, add_portal, backlog, bench_stack, log, stack_pids, wait_backlog
from bench.workload import mixed
from tasks.producer import enqueue_many

PORTAL = "brokers.bench.test"


def _rabbitmq_pid() -> int | None:
    """The RabbitMQ server's Erlang VM on this machine, if it runs here."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (proc.info["name"] or "").startswith("beam") and "rabbit" in cmdline:
            return int(proc.pid)
    return None


class Floor(NamedTuple):
    """Celery's own cost a message (`floor`): worker CPU ms, and context switches when perf counts them."""

    ms: float
    switches: str = ""


def floor(
    broker_url: str,
    redis_url: str,
    n: int,
    log_path: str,
    pace: float | None = None,
    workers: int = 1,
    threads: int = 64,
    loglevel: str = "INFO",
) -> Floor:
    """Worker CPU per message (ms) of Celery's no-op task on this broker, as b24q's worker is measured.

    The workers log at `loglevel`, as b24q's workers do (INFO: the bench stacks' and the deploy files' level).
    At INFO Celery writes two lines a task (received, succeeded): on this machine 0.1-0.2 ms of a no-op
    message's CPU, and more in b24q's busy workers, whose hundred threads queue on the log handler's lock.

    Draining a backlog (`pace` None): `n` messages enqueued with no worker running, then the workers started;
    their CPU is counted from the first `noop.STEP` messages done (their start-up before) to the last. At a
    steady load (`pace` messages a second, as `bench.run scale` offers b24q): the workers run `noop.STEP`
    messages first, then `n` more are sent at that pace; their CPU is counted from the first of those to the
    last done."""
    queue = f"b24q-bench-noop-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NOOP_BROKER_URL": broker_url, "NOOP_QUEUE": queue, "NOOP_COUNTER_URL": redis_url}
    counter = redis.Redis.from_url(redis_url)
    counter.delete(noop.COUNTER)
    producer = Celery("noop-producer", broker=broker_url)
    producer.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    if broker_url.startswith("amqp"):
        producer.conf.task_queues = [Queue(queue, durable=True, queue_arguments={"x-queue-type": "quorum"})]
        producer.conf.broker_transport_options = {"confirm_publish": True}

    def wait(total: int) -> None:
        deadline = time.monotonic() + total / 50 + 120
        while int(counter.get(noop.COUNTER) or 0) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no-op worker did not finish; see {log_path}")
            time.sleep(0.02)

    def send(pub: Any, count: int, every: float = 0.0) -> None:
        start = time.monotonic()
        for i in range(count):
            pause = start + i * every - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            producer.send_task("noop.noop", args=({"i": i},), queue=queue, producer=pub)

    cmd = [sys.executable, "-m", "celery", "-A", "bench.noop", "worker", "--pool", "threads", "-c", str(threads)]
    cmd += ["-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat", f"--loglevel={loglevel}"]
    procs: list[subprocess.Popen[bytes]] = []
    with producer.producer_or_acquire() as pub, open(log_path, "wb") as out:
        try:
            send(pub, noop.STEP if pace else n)
            for i in range(workers):
                procs.append(subprocess.Popen([*cmd, f"--hostname=noop{i}@%h"], env=env, stdout=out, stderr=out))
            meter = CpuMeter({f"noop{i}": p.pid for i, p in enumerate(procs)})
            wait(noop.STEP)
            with Switches(p.pid for p in procs) as switches:
                cpu0 = meter.sample()
                if pace:
                    send(pub, n, 1.0 / pace)
                wait(n + noop.STEP if pace else n)
                cpu = sum(CpuMeter.delta(cpu0, meter.sample()).values())
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if broker_url.startswith("amqp"):
                with Connection(broker_url) as conn:
                    conn.default_channel.queue_delete(queue)
            else:
                counter.delete(queue)
            counter.delete(noop.COUNTER)
    measured = n if pace else n - noop.STEP
    return Floor(1000 * cpu / measured, switches.per(measured))


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
        for running in stack.workers:
            running.stop()
        stack.workers.clear()
        log(f"brokers: {broker}: Celery's no-op floor, {n} messages")
        redis_url = stack.env["B24Q_REDIS_URL"]
        noop_ms = floor(
            RABBITMQ_URL if broker == "rabbitmq" else redis_url,
            redis_url,
            n,
            str(stack.dir / f"noop-{broker}.log"),
        ).ms
    worker = sum(v for k, v in cpu.items() if k not in ("redis", "rabbitmq"))
    return {
        "enqueue_rate": n / enqueue_s,
        "enqueue_broker_ms": 1000 * (enqueue_cpu.get("redis", 0.0) + enqueue_cpu.get("rabbitmq", 0.0)) / n,
        "drain_rate": left / drain_s,
        "worker_ms": 1000 * worker / left,
        "redis_ms": 1000 * cpu.get("redis", 0.0) / left,
        "rabbitmq_ms": 1000 * cpu.get("rabbitmq", 0.0) / left,
        "noop_ms": noop_ms,
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
    t.add(
        "Celery no-op floor, worker CPU (ms/message)",
        fmt(found["redis"]["noop_ms"], 3),
        fmt(found["rabbitmq"]["noop_ms"], 3),
    )
    saved = found["redis"]["worker_ms"] - found["rabbitmq"]["worker_ms"]
    floor_saved = found["redis"]["noop_ms"] - found["rabbitmq"]["noop_ms"]
    t.note(
        f"RabbitMQ saves b24q's worker {saved:.3f} ms/job; the floor saves {floor_saved:.3f} ms/message: b24q keeps "
        f"{saved / floor_saved:.0%} of the floor's saving (the issue asks >= 80 %)"
        if floor_saved > 0
        else "the floor is not cheaper on RabbitMQ in this run"
    )
    return [t]
