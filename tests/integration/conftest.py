"""Integration fixtures: a LocalStack (private redis-server, emulator process, real Celery workers).

One stack per test module (starting workers costs seconds); each test makes its own portals, named
after the test, so tests do not see each other's jobs.
"""

from __future__ import annotations

import re
import time
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
