"""The outcome recorder, as the pipeline applies the retry policy's decisions: each outcome writes its ledger
state, dead letter or parking entry and its events, one way (`workers.records.outcomes`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, NoReturn

import httpx
import pytest
import redis
from celery.exceptions import Retry

from tasks.jobs import KINDS
from workers.errors import JobDeadLettered
from workers.events import Observer, add_observer, remove_observer
from workers.pipeline import run_job
from workers.records.outcomes import JobRef
from workers.retries import UNINSTALLED
from workers.runtime import Runtime
from workers.settings import Settings

STATUS = KINDS["status-update"]
JOB = {"portal": "acme", "code": "smsgw", "message_id": "m1", "status": "delivered"}


class Seen(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def job_finished(self, kind: str, portal: str, outcome: str, latency: float | None) -> None:
        self.calls.append(("finished", (kind, portal, outcome)))

    def job_retried(self, kind: str, portal: str, reason: str, code: str) -> None:
        self.calls.append(("retried", (kind, portal, reason, code)))

    def dead_letter(self, kind: str, portal: str, code: str) -> None:
        self.calls.append(("dead", (kind, portal, code)))

    def parked(self, portal: str) -> None:
        self.calls.append(("parked", (portal,)))


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"result": {"result": True}})


def retry(countdown: float, exc: BaseException) -> NoReturn:
    raise Retry(exc=exc, when=countdown)


@pytest.fixture
def seen() -> Iterator[Seen]:
    observer = Seen()
    add_observer(observer)
    yield observer
    remove_observer(observer)


@pytest.fixture
def rt(settings: Settings, rclient: redis.Redis) -> Runtime:
    runtime = Runtime(settings, rclient, transport=httpx.MockTransport(ok))
    runtime.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    return runtime


def test_a_status_waits_while_its_providers_are_added_again(rt: Runtime, seen: Seen) -> None:
    rt.registry.providers_pending("acme", ["smsgw"])
    rt.ledger.enqueued("w1", STATUS.name, "acme")
    with pytest.raises(Retry) as retried:
        run_job(STATUS, "w1", (), dict(JOB), rt.job_services, retry)
    assert str(retried.value.exc).startswith("deferred ")  # a `Deferred`: nothing failed
    record = rt.ledger.record("w1")
    assert (record["state"], record["last_error"]) == (
        "deferred",
        "waiting for SMS providers to be registered again: smsgw",
    )
    assert seen.calls == [("retried", ("status-update", "acme", "flow", "PROVIDERS_PENDING"))]


def test_a_job_of_a_portal_awaiting_reauthorisation_is_parked(rt: Runtime, seen: Seen) -> None:
    assert rt.registry.mark_reauth("acme", "invalid_grant: used")
    rt.ledger.enqueued("p1", STATUS.name, "acme")
    assert run_job(STATUS, "p1", (), dict(JOB), rt.job_services, retry) == {
        "outcome": "parked",
        "reason": "invalid_grant: used",
    }
    assert rt.parking.get("acme", "p1") == {"id": "p1", "task": STATUS.task_name, "kwargs": JOB}
    assert rt.ledger.record("p1")["state"] == "parked"
    assert seen.calls == [("parked", ("acme",)), ("finished", ("status-update", "acme", "parked"))]

    # the uninstall's sweep: the parked job becomes a dead letter, one dead letter more for the observers
    rt.outcomes.dead_while_parked(JobRef("p1", STATUS.name, STATUS.task_name, "acme"), dict(JOB), UNINSTALLED)
    letter = rt.dead.get("p1")
    assert letter is not None and (letter.code, letter.attempts) == ("APP_UNINSTALLED", 0)
    record = rt.ledger.record("p1")
    assert (record["state"], record["last_error"]) == ("dead", "APP_UNINSTALLED")
    assert rt.parking.count("acme") == 0
    assert seen.calls[-1] == ("dead", ("status-update", "acme", "APP_UNINSTALLED"))


def test_an_unexpected_error_is_the_dead_letter_internal_error(rt: Runtime, seen: Seen) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("surprise")

    rt.ordering.stamp = broken  # type: ignore[method-assign]  # before the call: not the call's error
    rt.ledger.enqueued("c1", STATUS.name, "acme")
    with pytest.raises(JobDeadLettered) as dead:
        run_job(STATUS, "c1", (), dict(JOB), rt.job_services, retry)
    assert dead.value.code == "INTERNAL_ERROR"
    letter = rt.dead.get("c1")
    assert letter is not None and letter.description == "KeyError: 'surprise'"
    record = rt.ledger.record("c1")
    assert (record["state"], record["last_error"]) == ("dead", "INTERNAL_ERROR")
    assert seen.calls == []  # as before the recorder: no event for a crash (its traceback is in the log)


def test_an_applied_job_is_recorded_once(rt: Runtime, seen: Seen) -> None:
    rt.ledger.enqueued("a1", STATUS.name, "acme")
    assert run_job(STATUS, "a1", (), dict(JOB), rt.job_services, retry) == {"outcome": "applied"}
    assert rt.ledger.record("a1")["state"] == "applied"
    assert seen.calls == [("finished", ("status-update", "acme", "applied"))]
