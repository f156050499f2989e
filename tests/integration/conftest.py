"""Integration fixtures: a LocalStack (private redis-server, emulator process, real Celery workers).

One stack per test module (starting workers costs seconds); each test makes its own portals, named
after the test, so tests do not see each other's jobs.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from workers.localdev.localstack import LocalStack
from workers.records.ledger import TERMINAL
from workers.runtime import Runtime, get_runtime

#: settings every integration stack uses: short backoffs so retries finish inside a test
FAST = {
    "gather_ms": 10,
    "backoff_base": 0.2,
    "backoff_max": 2.0,
    "permit_wait": 5.0,
    "visibility_timeout": 30,
    "transient_window": 10.0,
}


#: The RabbitMQ the tests of both brokers use: the machine's own (`.ci/run` starts it when it is not up). A test
#: on RabbitMQ fails, never skips, when it is missing.
RABBITMQ_URL = os.environ.get("B24Q_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: The brokers a broker-sensitive test runs on (`@pytest.mark.parametrize("broker", BROKERS)`).
BROKERS = ("redis", "rabbitmq")


def on_broker(broker: str) -> dict[str, Any]:
    """Settings that put a stack's messages on `broker`. On RabbitMQ the stack gets queues of its own, named
    for this run, which it deletes when it stops (`LocalStack`): runs never see each other's messages."""
    if broker == "redis":
        return {}
    assert broker == "rabbitmq", broker
    return {"broker_url": RABBITMQ_URL, "queue": f"b24q-test-{uuid.uuid4().hex[:12]}"}


def make_stack(workers: int = 2, concurrency: int = 16, **settings: Any) -> LocalStack:
    stack = LocalStack(settings={**FAST, **settings})
    stack.__enter__()
    try:
        stack.start_workers(workers, concurrency=concurrency)
    except Exception:
        stack.__exit__(None, None, None)
        raise
    return stack


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    s = make_stack()
    yield s
    s.__exit__(None, None, None)


@pytest.fixture
def rt(stack: LocalStack) -> Runtime:
    return get_runtime()


@pytest.fixture
def domain(request: pytest.FixtureRequest) -> str:
    """A portal name unique to the test."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"{name}.bitrix24.test"


def wait_for(ids: Iterable[str], timeout: float = 60, states: tuple[str, ...] = TERMINAL) -> dict[str, str]:
    """Wait until every job is in one of `states`; return {id: state}."""
    rt = get_runtime()
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        found = {i: s or "" for i, (s,) in rt.ledger.states(ids).items()}
        if all(s in states for s in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
