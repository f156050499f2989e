"""Running the naive baseline (`bench.naive`) inside a scenario's stack, and measuring it.

The naive workers use the stack's Redis (queue `naive`, not b24q's) and their own emulator portal,
so the emulator's counters for that portal are the baseline's alone.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu import Connection

from bench import naive
from bench.stack import log
from bench.workload import Job, applied
from tasks.jobs import KINDS
from workers.localdev.localstack import LocalStack


class NaiveWorkers:
    """`count` processes of `celery -A bench.naive worker --pool threads -c threads -Q naive`."""

    def __init__(
        self, stack: LocalStack, count: int = 4, threads: int = 8, rate_limit: str = "2/s", acks_late: bool = False
    ) -> None:
        self.logs: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.broker_url, self.queue = naive.broker_of(stack.settings)
        env = {**stack.env, "NAIVE_RATE_LIMIT": rate_limit, "NAIVE_BROKER_URL": self.broker_url}
        if acks_late:
            env["NAIVE_ACKS_LATE"] = "1"
        env["NAIVE_QUEUE"] = self.queue
        for i in range(count):
            path = stack.dir / f"naive{i + 1}.log"
            cmd = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.naive",
                "worker",
                "--pool",
                "threads",
                "-c",
                str(threads),
                "-Q",
                self.queue,
                "--loglevel=INFO",
                f"--hostname=naive{i + 1}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
            with open(path, "wb") as out:
                self.processes.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            self.logs.append(path)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for proc, path in zip(self.processes, self.logs, strict=True):
            while b" ready." not in path.read_bytes():
                if proc.poll() is not None:
                    raise RuntimeError(f"naive worker exited; see {path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"naive worker not ready in {timeout}s; see {path}")
                time.sleep(0.1)

    @property
    def pids(self) -> dict[str, int]:
        return {f"naive{i + 1}": p.pid for i, p in enumerate(self.processes)}

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.broker_url.startswith("amqp"):  # the run's own queue on the machine's RabbitMQ
            with Connection(self.broker_url, connect_timeout=5) as conn, contextlib.suppress(*conn.channel_errors):
                conn.default_channel.queue_delete(self.queue)


@dataclass(frozen=True)
class NaiveResult:
    jobs: int
    elapsed: float  # first enqueue -> last outcome
    ok: int
    failed: int
    refused_503: int
    applied: int  # distinct effects at the portal
    duplicates: int
    steady_rate: float  # jobs/s between the 10th and 90th percentile of accepted requests
    finished: bool

    @property
    def lost(self) -> int:
        return self.jobs - self.applied

    @property
    def rate(self) -> float:
        return self.applied / self.elapsed if self.elapsed > 0 else math.nan


def calls(jobs: Sequence[Job], info: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(url, params, token) of each job: the same REST call b24q would make for it."""
    out = []
    for kind, payload in jobs:
        k = KINDS[kind]
        out.append((info["client_endpoint"] + k.method, k.validate(payload).params(), info["access_token"]))
    return out


def steady_rate(times: Sequence[float]) -> float:
    """Requests/s between the 10th and the 90th percentile of `times` (drops ramp-up and tail)."""
    if len(times) < 10:
        return math.nan
    data = sorted(times)
    lo, hi = len(data) // 10, len(data) * 9 // 10
    span = data[hi] - data[lo]
    return (hi - lo) / span if span > 0 else math.nan


def run(stack: LocalStack, domain: str, info: dict[str, Any], jobs: Sequence[Job], timeout: float) -> NaiveResult:
    """Enqueue `jobs` for the naive workers (already running), wait for every outcome, read the portal."""
    naive.configure(*naive.broker_of(stack.settings))
    rt_redis = stack.redis.client() if stack.redis is not None else None
    assert rt_redis is not None
    rt_redis.delete(naive.OUTCOMES)
    work = calls(jobs, info)
    start = time.time()
    with naive.app.producer_or_acquire() as producer:
        for url, params, token in work:
            naive.call.apply_async(args=(url, params, token), queue=naive.QUEUE, producer=producer)
    log(f"naive: {len(work)} jobs enqueued in {time.time() - start:.2f}s")
    deadline = time.monotonic() + timeout
    done = finished = False
    last_note = time.monotonic()
    while not done:
        raw = rt_redis.hgetall(naive.OUTCOMES)
        ok, failed = int(raw.get(b"ok", 0)), int(raw.get(b"failed", 0))
        done = ok + failed >= len(work)
        finished = done
        if time.monotonic() > deadline:
            log(f"naive: timeout with {len(work) - ok - failed} jobs unfinished")
            break
        if time.monotonic() - last_note > 10:
            log(f"naive: {ok} ok, {failed} failed of {len(work)}")
            last_note = time.monotonic()
        if not done:
            time.sleep(0.1)
    raw = rt_redis.hgetall(naive.OUTCOMES)
    last = float(raw.get(b"last", start))
    state = stack.emulator.state(domain)
    effects = applied(state)
    return NaiveResult(
        jobs=len(work),
        elapsed=last - start,
        ok=int(raw.get(b"ok", 0)),
        failed=int(raw.get(b"failed", 0)),
        refused_503=int(state["counters"]["refused_503"]),
        applied=effects.distinct,
        duplicates=effects.duplicates,
        steady_rate=steady_rate(state["accepted_times"]),
        finished=finished,
    )


def floor(stack: LocalStack, jobs: Sequence[Job], timeout: float, early: bool = False) -> float:
    """Run one `naive.noop` task per job (its payload as the argument; `naive.noop_early` with `early`) on the
    naive workers; seconds from the first enqueue until the broker holds none of them (on Redis: the queue and
    the unacknowledged messages empty; on RabbitMQ: no message ready, the last few in flight a no-op each).
    (After `run`, which pointed the naive app at the stack.)"""
    task = naive.noop_early if early else naive.noop
    rt_redis = stack.redis.client() if stack.redis is not None else None
    assert rt_redis is not None
    broker_url, queue = naive.broker_of(stack.settings)

    amqp = Connection(broker_url, connect_timeout=5) if broker_url.startswith("amqp") else None

    def left() -> int:
        if amqp is None:
            return int(rt_redis.llen(queue)) + int(rt_redis.hlen("unacked"))
        return int(amqp.default_channel.queue_declare(queue, passive=True).message_count)

    try:
        start = time.time()
        with naive.app.producer_or_acquire() as producer:
            for _, payload in jobs:
                task.apply_async(args=(payload,), queue=queue, producer=producer)
        deadline = time.monotonic() + timeout
        while left():
            if time.monotonic() > deadline:
                raise RuntimeError("naive no-op tasks not done in time")
            time.sleep(0.05)
        return time.time() - start
    finally:
        if amqp is not None:
            amqp.release()
