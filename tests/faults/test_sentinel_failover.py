"""Redis Sentinel: the pool runs on a `sentinel://` URL, the master is SIGKILLed under load, the sentinel
promotes the replica, and producers and workers carry on against the new master by themselves.

Replication is asynchronous, so what a failover can lose is Redis's to say (writes acknowledged by the
old master in its last moments, before they reached the replica); the test asserts that jobs
acknowledged ≥ 1 s before the crash all end applied, and counts any later ones that did not.

On both brokers: on RabbitMQ the jobs' messages are not in Redis, but their state is (limits, tokens, the
ledger, ordering, the pool-wide call queue), and it fails over under them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.conftest import (
    FAULT,
    QUICK,
    KeepEnqueueing,
    add_portal,
    applied_counts,
    outcome,
    wait_drained,
)
from tests.integration.conftest import BROKERS, on_broker
from workers.localdev.localstack import LocalStack
from workers.localdev.redisserver import RedisSentinel, RedisServer

pytestmark = pytest.mark.integration

PASSWORD = "sentinel-test-pw"


@pytest.fixture
def redis_ha() -> Iterator[tuple[RedisServer, RedisServer, RedisSentinel]]:
    master = RedisServer(password=PASSWORD).start()
    replica = RedisServer(password=PASSWORD, replica_of=master.port).start()
    sentinel = RedisSentinel(master.port, password=PASSWORD).start()
    try:
        deadline = time.monotonic() + 20
        while not sentinel.replicas() or replica.client().info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never came up"
            time.sleep(0.1)
        yield master, replica, sentinel
    finally:
        sentinel.close()
        replica.close()
        master.close()


@pytest.mark.parametrize("broker", BROKERS)
def test_master_killed_the_pool_follows_the_sentinel_to_the_new_master(
    redis_ha: tuple[RedisServer, RedisServer, RedisSentinel], domain: str, broker: str, figures: dict[str, Any]
) -> None:
    master, replica, sentinel = redis_ha
    settings = {**FAULT, "redis_sentinel_master": sentinel.master_name, **on_broker(broker)}
    stack = LocalStack(redis_url=sentinel.url, settings=settings)
    stack.__enter__()
    try:
        stack.start_workers(2, concurrency=64, extra=QUICK)
        add_portal(stack, domain, rate=5.0, burst=20)
        stack.emulator.set_faults(domain, latency=0.1)
        load = KeepEnqueueing(domain)
        time.sleep(4.0)
        crash = time.monotonic()
        master.kill()
        deadline = time.monotonic() + 30
        while sentinel.master() != ("127.0.0.1", replica.port):
            assert time.monotonic() < deadline, "the sentinel did not promote the replica"
            time.sleep(0.1)
        promoted = time.monotonic()
        load.wait_acked_after(promoted)
        time.sleep(3.0)
        ids, jobs = load.stop()
        found, backlog = wait_drained(ids, timeout=90)
        drained = time.monotonic() - promoted
        result = outcome(jobs, ids, found, applied_counts(stack.emulator.state(domain)))
        before = load.ids_between(float("-inf"), crash - 1.0)
        last_second = load.ids_between(crash - 1.0, crash)
        after = load.ids_between(promoted)
        figures.update(
            result,
            failover_s=round(promoted - crash, 1),
            enqueued_before_crash=len(before),
            enqueued_after_failover=len(after),
            producer_errors=len(load.failures),
            producer_error_types=sorted({name for _, name in load.failures}),
            lost_of_last_second=sum(1 for i in last_second if found[i] not in ("applied", "superseded", "dead")),
            drained_after_failover_s=round(drained, 1),
            broker_left=backlog,
        )
        assert before and after, "the producer did not follow the failover by itself"
        assert [i for i in before if found[i] not in ("applied", "superseded")] == []
        assert "applied" in {found[i] for i in after} <= {"applied", "superseded"}, (
            "the workers did not follow the failover"
        )
        assert result["applied"] + result["superseded"] + result["dead_lettered"] >= len(ids) - len(last_second)
        for worker in stack.workers:  # the sentinel URL's password stays out of the logs
            worker._log.flush()
            assert PASSWORD not in worker.log_path.read_text(errors="replace"), worker.name
    finally:
        stack.__exit__(None, None, None)
