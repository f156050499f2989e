"""The producer alone, against its own private redis-server (no worker, no emulator): how fast jobs enter
the queue, next to the naive baseline and to the wire's own limit, in the same sitting.

- wire limit: the same number of messages of the same size, LPUSHed in pipelines of 1000 by redis-py
  (what any producer that writes one list entry per job could reach on this Redis and this core);
- naive: Celery's `send_task` per job (bench/naive.py's app), as a team writes it first;
- b24q: `enqueue_many` (validation, portal lookup, ledger records, order stamps, messages) and a single
  `enqueue` (latency percentiles over many calls, one after another).
"""

from __future__ import annotations

import json
import time
import uuid

from bench import naive
from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.stack import log
from tasks.producer import enqueue, enqueue_many
from workers.celery import configure
from workers.localdev.redisserver import RedisServer
from workers.runtime import Runtime, set_runtime
from workers.settings import Settings

PORTAL = "producer.bitrix24.test"
TARGET_BULK = 8000.0  # jobs/s, issue 12
TARGET_SINGLE_P50_MS = 1.0


def _jobs(n: int, tag: str) -> list[tuple[str, dict[str, object]]]:
    return [
        ("status-update", {"portal": PORTAL, "code": "smsgw", "message_id": f"{tag}-{i}", "status": "delivered"})
        for i in range(n)
    ]


def run(opts: Options) -> list[Table]:
    n = 2000 if opts.quick else 6000
    singles = 300 if opts.quick else 1000
    with RedisServer(appendonly=False) as server:
        settings = Settings(
            redis_url=server.url,
            client_id="bench",
            client_secret="bench",  # type: ignore[arg-type]
            allow_private_portals=True,  # its portal is a name no DNS knows
        )
        configure(settings)
        rt = Runtime(settings)
        set_runtime(rt)
        try:
            rt.registry.add_oauth(PORTAL, f"https://{PORTAL}/rest/", "a", "r", time.time() + 3600)
            enqueue_many(_jobs(200, "warm"))  # connections, scripts, imports

            log(f"producer: wire limit, {n} LPUSHes of a b24q message's size")
            sample = rt.redis.lindex(settings.queue, 0) or b""
            start = time.perf_counter()
            for first in range(0, n, 1000):
                pipe = rt.redis.pipeline(transaction=False)
                for _ in range(first, min(n, first + 1000)):
                    pipe.lpush("bench:wire", sample)
                pipe.execute()
            wire = n / (time.perf_counter() - start)

            log(f"producer: naive send_task x {n}")
            naive.configure(server.url)
            start = time.perf_counter()
            with naive.app.producer_or_acquire() as producer:
                for i in range(n):
                    naive.app.send_task(
                        "naive.call",
                        kwargs={"url": f"https://{PORTAL}/rest/x", "params": {"i": i}, "token": "t"},
                        producer=producer,
                    )
            naive_bulk = n / (time.perf_counter() - start)
            naive_lat = []
            for i in range(singles):
                t0 = time.perf_counter()
                naive.app.send_task("naive.call", kwargs={"url": "u", "params": {"i": i}, "token": "t"})
                naive_lat.append((time.perf_counter() - t0) * 1000)

            log(f"producer: b24q enqueue_many x {n}")
            start = time.perf_counter()
            enqueue_many(_jobs(n, uuid.uuid4().hex[:8]))
            bulk = n / (time.perf_counter() - start)
            lat = []
            for i in range(singles):
                payload = {"portal": PORTAL, "code": "smsgw", "message_id": f"single-{i}", "status": "sent"}
                t0 = time.perf_counter()
                enqueue("status-update", payload)
                lat.append((time.perf_counter() - t0) * 1000)
            used = json.dumps(rt.redis.info("memory").get("used_memory_human"))
        finally:
            rt.close()
            set_runtime(None)

    t = Table(
        f"Producer: {n} status jobs into a private redis-server, no worker running",
        ("metric", "naive (send_task)", "b24q", "b24q / wire limit", "target"),
    )
    t.add("wire limit: pipelined LPUSH, same bytes (msgs/s)", fmt(wire, 0), fmt(wire, 0), "1.00", "")
    t.add("bulk enqueue (jobs/s)", fmt(naive_bulk, 0), fmt(bulk, 0), ratio(bulk, wire), f">= {TARGET_BULK:.0f}")
    t.add(
        "single enqueue p50 (ms)",
        fmt(percentile(naive_lat, 50), 2),
        fmt(percentile(lat, 50), 2),
        "",
        f"<= {TARGET_SINGLE_P50_MS:.1f}",
    )
    t.add("single enqueue p99 (ms)", fmt(percentile(naive_lat, 99), 2), fmt(percentile(lat, 99), 2), "", "")
    t.note(
        "b24q's bulk enqueue also validates each job, looks its portal up, writes its ledger record and order "
        "stamp; the naive producer writes only the message. Redis used_memory at the end: " + used + "."
    )
    return [t]
