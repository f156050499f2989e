"""A round trip's cost to the worker: redis-py's pipeline next to `workers.roundtrip`'s batch, same commands,
same sitting, against a private redis-server.

One thread sends one batch after another; the CPU it uses (`time.thread_time`, so not the wait for Redis) per
round trip is the figure. One command (a ledger's finish is one EVALSHA) and the five of a job's start at a
quiet portal (its portal's record, its run, the backlog, the call pool's depth, a hold). Each variant runs
three times, alternating; the table gives the median.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import redis

from bench.report import Table, fmt, ratio
from bench.scenarios import Options
from bench.stack import log, thread_cpu_ms
from workers.localdev.redisserver import RedisServer
from workers.roundtrip import round_trip


def _one(client: redis.Redis, sha: str) -> Callable[[Any], None]:
    def queue(p: Any) -> None:
        p.evalsha(sha, 2, "job:1", "events:1", "applied", 1.5, "x" * 40, 604800)

    return queue


def _start(client: redis.Redis, sha: str) -> Callable[[Any], None]:
    def queue(p: Any) -> None:
        p.hgetall("portal")
        p.evalsha(sha, 2, "job:1", "events:1", "applied", 1.5, "x" * 40, 604800)
        p.get("backlog")
        p.llen("calls")
        p.pttl("hold")

    return queue


def _trip(make: Callable[[], Any], queue: Callable[[Any], None]) -> Callable[[], object]:
    """One round trip of these commands."""

    def trip() -> object:
        p = make()
        queue(p)
        return p.execute(raise_on_error=False)

    return trip


def run(opts: Options) -> list[Table]:
    n = 3000 if opts.quick else 20000
    table = Table(
        f"roundtrip: worker CPU per Redis round trip, one thread, {n:,} round trips a run (median of 3)",
        ("commands", "redis-py pipeline ms", "workers.roundtrip ms", "ratio"),
    )
    with RedisServer(appendonly=False) as server:
        client = server.client()
        client.hset("portal", mapping={f"field{i}": "v" * 20 for i in range(20)})
        sha = client.script_load("return {1, redis.call('TIME')[1], 3}")
        for name, shape in (("1 (a finish)", _one), ("5 (a quiet job's start)", _start)):
            log(f"roundtrip: {name}")
            queue = shape(client, sha)
            pipeline: list[float] = []
            batch: list[float] = []
            for _ in range(3):
                pipeline.append(thread_cpu_ms(_trip(lambda: client.pipeline(transaction=False), queue), n, warmup=200))
                batch.append(thread_cpu_ms(_trip(lambda: round_trip(client), queue), n, warmup=200))
            p, b = statistics.median(pipeline), statistics.median(batch)
            table.add(name, fmt(p, 4), fmt(b, 4), ratio(b, p))
        client.close()
    table.note("ratio: workers.roundtrip's CPU against the pipeline's, for the same commands and replies")
    return [table]
