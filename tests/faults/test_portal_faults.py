"""Portal faults: 500s, dropped connections (before and after the change is applied), answers that come
after the client's timeout having applied the change, garbage bodies. Jobs are retried within their
budget and end in the right state; a repeat is harmless and counted; nothing is lost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.conftest import (
    add_portal,
    applied_counts,
    enqueue,
    make_fault_stack,
    mixed_jobs,
    outcome,
    settle_bound,
    wait_drained,
    wait_terminal,
)
from tests.integration.conftest import BROKERS, on_broker
from workers.localdev.localstack import LocalStack
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=BROKERS)
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    """One stack per broker: retries wait out their countdowns (on RabbitMQ: in its delay queues). A short read
    timeout, so "applied, then answered late" is a timeout for the client."""
    s = make_fault_stack(workers=2, concurrency=64, request_timeout=1.0, **on_broker(request.param))
    yield s
    s.__exit__(None, None, None)


def run(stack: LocalStack, portal: str, n: int, timeout: float, **faults: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    add_portal(stack, portal)
    # at most max_failures - 2 requests are struck: however the jobs are packed (that depends on timing), no job
    # can spend its budget on injected faults, and one timeout of a loaded machine still leaves it a try
    bound = get_runtime().settings.max_failures - 2
    assert bound >= len(faults.get("script", ())), "the bound would leave scripted faults unstruck"
    stack.emulator.set_faults(portal, seed=5, faults_left=bound, **faults)
    jobs = mixed_jobs(portal, n)
    ids = enqueue(jobs)
    # a job may spend its whole budget before it is applied: max_failures - 1 countdowns (at the fault
    # suite's backoff that is well within `timeout`; at the defaults' up to 123 s)
    found, backlog = wait_drained(ids, timeout=settle_bound(timeout, retries=get_runtime().settings.max_failures - 1))
    state = stack.emulator.state(portal)
    result = outcome(jobs, ids, found, applied_counts(state))
    rt = get_runtime()
    records = rt.ledger.get_many(ids)
    retried = {i: int((records[i] or {}).get("failures") or 0) for i in ids}
    # what each failure was (the ledger records its error): every one should be a fault the emulator injected
    errors = {
        i: [
            str(e.get("error", ""))
            for e in (records[i] or {}).get("events", ())
            if e.get("state") in ("retrying", "dead")
        ]
        for i in ids
    }
    worst = max(ids, key=lambda i: retried[i])
    result.update(
        faults_injected=dict(state["counters"]["faults"]),
        requests=state["counters"]["requests"],
        jobs_retried=sum(1 for f in retried.values() if f),
        max_failures_of_a_job=retried[worst],
        failures_by_code=dict(Counter(e.split(":", 1)[0] for errs in errors.values() for e in errs)),
        most_failed_job_errors=[e[:100] for e in errors[worst]],
        dead_letters=[errors[i][-1][:200] for i in ids if found[i] == "dead" and errors[i]],
        broker_left=backlog,
    )
    return result, state


def one_sender_update(jobs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """`jobs` without the sender updates after the first. They all set the one sender's handler: an older one
    run together with a newer one is superseded by it, rightly, and never sent (whether a mix has two depends
    on the portal's name, and so on the test's id)."""
    kept: list[tuple[str, dict[str, Any]]] = []
    for kind, payload in jobs:
        if kind != "sender-update" or all(k != kind for k, _ in kept):
            kept.append((kind, payload))
    return kept


def test_500s_drops_and_garbage_are_retried_until_applied(
    stack: LocalStack, domain: str, figures: dict[str, Any]
) -> None:
    # the script makes sure every kind strikes, however the jobs are packed into requests; then the rates
    result, _ = run(
        stack,
        domain,
        600,
        90,
        error_500_rate=0.1,
        drop_rate=0.05,
        garbage_rate=0.1,
        script=["error_500", "drop", "garbage_html", "garbage_truncated"],
    )
    figures.update(result)
    assert result["lost"] == 0, result
    assert result["applied"] + result["superseded"] == 600 and result["dead_lettered"] == 0, result
    assert {"error_500", "drop", "garbage_html", "garbage_truncated"} <= set(result["faults_injected"])
    assert result["jobs_retried"] > 0


def test_changes_applied_but_answered_late_or_lost_are_retried_harmlessly(
    stack: LocalStack, domain: str, figures: dict[str, Any]
) -> None:
    """The portal applies the call, then answers after the client's 1 s timeout (slow) or drops the
    answer (drop after): the worker sees a failure for a change that happened, retries, and the repeat
    is harmless (the same status, the same delivery mark, the same unread mark)."""
    slow, state = run(stack, f"slow-{domain}", 300, 90, slow_rate=0.3, slow_seconds=2.5, script=["slow"])
    dropped, _ = run(stack, f"drop-{domain}", 300, 90, drop_rate=0.3, drop_phase="after", script=["drop"])
    result = {
        k: slow[k] + dropped[k]
        for k in (
            "jobs",
            "applied",
            "superseded",
            "dead_lettered",
            "lost",
            "applied_twice_or_more",
            "extra_applications",
            "jobs_retried",
        )
    }
    figures.update(
        result,
        faults_injected={**slow["faults_injected"], **dropped["faults_injected"]},
        **{
            f"{phase}_{k}": phase_result[k]
            for phase, phase_result in (("slow", slow), ("drop", dropped))
            for k in ("requests", "max_failures_of_a_job", "failures_by_code", "most_failed_job_errors", "dead_letters")
        },
    )
    assert result["lost"] == 0, (slow, dropped)
    assert result["applied"] + result["superseded"] == 600 and result["dead_lettered"] == 0, (slow, dropped)
    assert slow["faults_injected"].get("slow") and dropped["faults_injected"].get("drop_after")
    # a call applied and then answered too late is applied again by the retry: visible, and harmless
    assert result["applied_twice_or_more"] > 0
    repeated = [s for s in state["statuses"] if s["count"] > 1]
    assert all(len(set(s["statuses"])) == 1 for s in repeated)  # the repeat wrote the same status


def test_a_portal_that_keeps_failing_dead_letters_jobs_after_their_budget(
    stack: LocalStack, domain: str, figures: dict[str, Any]
) -> None:
    rt = get_runtime()
    add_portal(stack, domain)
    stack.emulator.set_faults(domain, error_500_rate=1.0)
    jobs = one_sender_update(mixed_jobs(domain, 12))[:6]
    ids = enqueue(jobs)
    # every job spends its whole budget: max_failures failures and transient_window seconds since the first
    # (60 s is ample at the fault suite's)
    found = wait_terminal(ids, timeout=settle_bound(60, retries=rt.settings.max_failures - 1))
    letters = [rt.dead.get(i) for i in ids]
    figures.update(
        jobs=len(ids),
        dead_lettered=sum(1 for s in found.values() if s == "dead"),
        codes=sorted({d.code for d in letters if d}),
        failures=[(rt.ledger.get(i) or {}).get("failures") for i in ids],
    )
    assert set(found.values()) == {"dead"}, found
    assert {d.code for d in letters if d} == {"INTERNAL_SERVER_ERROR"}
    for record in rt.ledger.get_many(ids).values():
        assert record is not None
        assert int(record["failures"]) >= rt.settings.max_failures
        # not before the window: the first failure was at least transient_window before the dead letter
        assert float(record["updated"]) - float(record["first_failure"]) >= rt.settings.transient_window
    assert sum(applied_counts(stack.emulator.state(domain)).values()) == 0
