"""A job's transient budget: `max_failures` failures *and* `transient_window` seconds since the first.

A portal answering 500 for a minute must not end jobs that the next minute would apply (8 countdowns at the
default backoff fit in about two minutes); one that keeps failing still ends them, with the reason."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import NoReturn

import httpx
import pytest
import redis
from celery.exceptions import Retry

from tasks.jobs import KINDS
from workers.errors import JobDeadLettered
from workers.keys import Keys
from workers.pipeline import run_job
from workers.records.ledger import Ledger
from workers.records.outcomes import Outcomes
from workers.runtime import Runtime
from workers.settings import Settings

UNREAD = KINDS["mark-unread"]
KWARGS = {"portal": "acme", "dialog_id": "chat1", "message_id": 7}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def always_500(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500, json={"error": "INTERNAL_SERVER_ERROR", "error_description": "down"})


def retry(countdown: float, exc: BaseException) -> NoReturn:
    raise Retry(exc=exc, when=countdown)


def clocked(rt: Runtime) -> Clock:
    """The runtime's ledger (and the pipeline's) on a clock the test moves."""
    clock = Clock()
    rt.ledger = Ledger(rt.redis, Keys(rt.settings.key_prefix), clock=clock)
    rt.outcomes = Outcomes(rt.ledger, rt.dead, rt.parking)
    rt.job_services = replace(rt.job_services, ledger=rt.ledger, outcomes=rt.outcomes)
    return clock


@pytest.fixture
def rt(settings: Settings, rclient: redis.Redis) -> Runtime:
    s = settings.model_copy(update={"max_failures": 3, "transient_window": 600.0})
    runtime = Runtime(s, rclient, transport=httpx.MockTransport(always_500))
    runtime.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    return runtime


def test_failures_end_a_job_only_after_the_window_since_the_first(rt: Runtime) -> None:
    clock = clocked(rt)
    rt.ledger.enqueued("j1", UNREAD.name, "acme")
    for _ in range(5):  # past max_failures (3), all within the window: each is a retry
        with pytest.raises(Retry):
            run_job(UNREAD, "j1", (), dict(KWARGS), rt.job_services, retry)
        clock.now += 60
    assert rt.ledger.record("j1")["failures"] == "5"
    assert rt.dead.get("j1") is None

    clock.now += 600 - 5 * 60  # the window has passed since the first failure: the next one ends the job
    with pytest.raises(JobDeadLettered):
        run_job(UNREAD, "j1", (), dict(KWARGS), rt.job_services, retry)
    letter = rt.dead.get("j1")
    assert letter is not None and letter.code == "INTERNAL_SERVER_ERROR"
    assert "after 6 failures in 600 s" in letter.description


def test_a_window_long_past_does_not_end_a_job_before_its_count(rt: Runtime) -> None:
    clock = clocked(rt)
    rt.ledger.enqueued("j2", UNREAD.name, "acme")
    with pytest.raises(Retry):
        run_job(UNREAD, "j2", (), dict(KWARGS), rt.job_services, retry)
    clock.now += 3600  # failed once, an hour ago: the second failure is a retry, not a dead letter
    with pytest.raises(Retry):
        run_job(UNREAD, "j2", (), dict(KWARGS), rt.job_services, retry)
    assert rt.dead.get("j2") is None


def test_a_replayed_job_gets_its_whole_budget_again(rt: Runtime) -> None:
    clock = clocked(rt)
    rt.ledger.enqueued("j3", UNREAD.name, "acme")
    assert rt.ledger.failure("j3").count == 1
    clock.now += 700
    rt.ledger.requeued("j3", "acme", "replay")
    failures = rt.ledger.failure("j3")
    assert (failures.count, failures.since) == (1, 0.0)
