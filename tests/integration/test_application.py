"""b24q as the Bitrix24 application's back end, end to end: the emulator installs, updates, uninstalls and
moves portals exactly as Bitrix24 does (form-encoded events to the app's handlers), the HTTP app (uvicorn,
on loopback) registers them, and real workers deliver the jobs producers enqueue by member_id or domain.

The tests whose jobs take broker-specific paths run on both brokers (`BOTH`): jobs waiting in their retry
countdown when the app is uninstalled (on RabbitMQ, in its delay queues), dead letters replayed, status jobs
held and resumed around an update. The others only meet the HTTP app and the portal (`REDIS_ONLY`): a second
stack for them would add CI time and prove nothing of the broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from tasks.producer import enqueue, enqueue_many, replay
from workers.bitrix.querystring import encode
from workers.errors import PortalUninstalled
from workers.localdev.localstack import LocalStack
from workers.portals.record import Portal
from workers.runtime import get_runtime

from .conftest import BROKERS, make_stack, on_broker, wait_for

PROVIDER = {"code": "b24qsms", "name": "b24q SMS", "handler": "https://sms.example.com/b24"}

T = TypeVar("T")


def until(what: Callable[[], T], timeout: float = 30.0, why: str = "") -> T:
    """Wait for `what()` to be truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {why or what}")
        time.sleep(0.05)


#: A test on both brokers, or on Redis only (one stack per broker for the module: `stack` is parametrised).
BOTH = pytest.mark.parametrize("stack", BROKERS, indirect=True)
REDIS_ONLY = pytest.mark.parametrize("stack", ["redis"], indirect=True)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    s = make_stack(workers=2, providers=json.dumps([PROVIDER]), **on_broker(request.param))
    s.start_http()
    yield s
    s.__exit__(None, None, None)


def installed(stack: LocalStack, domain: str, **options: Any) -> Portal:
    """Install the app on a new emulator portal; the portal as b24q registered it, providers in place."""
    answer = stack.install_portal(domain, auto_messages=True, **options)
    assert answer["handler_status"] == 200, answer
    portal = get_runtime().registry.get(answer["key"])
    assert portal is not None
    return portal


def statuses(domain: str, n: int, start: int = 0, status: str = "delivered") -> list[tuple[str, dict[str, Any]]]:
    return [
        ("status-update", {"portal": domain, "code": PROVIDER["code"], "message_id": f"m{i}", "status": status})
        for i in range(start, start + n)
    ]


def applied_statuses(stack: LocalStack, domain: str) -> int:
    return sum(len(m["statuses"]) for m in stack.emulator.state(domain)["statuses"])


def post_event(stack: LocalStack, fields: dict[str, Any]) -> httpx.Response:
    assert stack.http is not None
    return stack.http.http.post(
        "/b24/events", content=encode(fields), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


@REDIS_ONLY
def test_installed_portals_take_jobs_by_member_id_and_by_domain(stack: LocalStack, domain: str) -> None:
    standard = installed(stack, domain)
    enterprise = installed(stack, "ent-" + domain, plan="enterprise")
    info = stack.emulator.state(domain)
    assert standard.key == info["member_id"] and standard.domain == domain
    assert (standard.plan, standard.plan_from) == ("standard", "license")
    assert (enterprise.plan, enterprise.plan_from) == ("enterprise", "license")  # en_ent250 → 5/s, 250
    limits = enterprise.limits(get_runtime().settings)
    assert (limits.rate, limits.burst) == (5.0, 250)
    assert [s["code"] for s in info["senders"]] == [PROVIDER["code"]]  # sender.add went out as a job
    bound = {e["event"]: e["handler"] for e in info["event_handlers"]}
    assert bound["ONAPPUNINSTALL"] == bound["ONAPPUPDATE"] == f"{stack.http.url}/b24/events"  # type: ignore[union-attr]

    ids = enqueue_many(statuses(domain, 20) + statuses(enterprise.key, 20))
    assert set(wait_for(ids).values()) == {"applied"}
    assert applied_statuses(stack, domain) == 20 and applied_statuses(stack, "ent-" + domain) == 20

    again = stack.emulator.admin("POST", f"portals/{domain}/install", {})  # the same install twice
    assert again["handler_status"] == 200
    same = get_runtime().registry.get(standard.key)
    assert same is not None and (same.plan, same.state, same.domain) == ("standard", "active", domain)
    assert len(get_runtime().registry.keys()) == len(set(get_runtime().registry.keys()))


@REDIS_ONLY
def test_forged_events_are_refused_and_change_nothing(stack: LocalStack, domain: str) -> None:
    portal = installed(stack, domain)
    answer = post_event(
        stack,
        {"event": "ONAPPUNINSTALL", "auth": {"member_id": portal.key, "domain": domain, "application_token": "x" * 32}},
    )
    assert answer.status_code == 401 and answer.headers["content-type"].startswith("application/problem+json")
    assert portal.application_token not in answer.text
    forged_install = post_event(
        stack,
        {
            "event": "ONAPPINSTALL",
            "auth": {
                "member_id": portal.key,
                "domain": domain,
                "client_endpoint": portal.endpoint,
                "access_token": "not-a-token",
                "refresh_token": "not-either",
                "application_token": "y" * 32,
            },
        },
    )
    assert forged_install.status_code == 401
    after = get_runtime().registry.get(portal.key)
    assert after == portal
    assert set(wait_for([enqueue(*statuses(domain, 1)[0])]).values()) == {"applied"}


@BOTH
def test_uninstall_dead_letters_waiting_jobs_and_a_reinstall_replays_them(stack: LocalStack, domain: str) -> None:
    portal = installed(stack, domain)
    rt = get_runtime()
    stack.emulator.set_faults(domain, error_500_rate=1.0)  # the jobs wait in their retry backoff
    ids = enqueue_many(statuses(domain, 10))
    until(lambda: all(s == "retrying" for (s,) in rt.ledger.states(ids).values()), why="every job retrying")

    answer = stack.emulator.admin("POST", f"portals/{domain}/uninstall", {})
    assert [e["status"] for e in answer["events"]] == [200]  # ONAPPUNINSTALL reached /b24/events
    stack.emulator.set_faults(domain, error_500_rate=0.0)
    assert set(wait_for(ids).values()) == {"dead"}
    assert {rt.dead.get(i).code for i in ids} == {"APP_UNINSTALLED"}  # type: ignore[union-attr]
    gone = rt.registry.get(portal.key)
    assert gone is not None and gone.state == "uninstalled" and not gone.access_token
    rt.portals.forget(domain)  # (this process's record of the portal may be up to a second old)
    with pytest.raises(PortalUninstalled):
        enqueue(*statuses(domain, 1, start=99)[0])

    installed(stack, domain)  # reinstall: new tokens, providers registered again
    done, refused = replay(portal=portal.key, code="APP_UNINSTALLED")
    assert sorted(done) == sorted(ids) and not refused
    assert set(wait_for(ids).values()) == {"applied"}
    assert applied_statuses(stack, domain) == 10


@BOTH
def test_an_update_brings_the_providers_back_before_status_jobs_go(stack: LocalStack, domain: str) -> None:
    portal = installed(stack, domain, rate=2, burst=5)  # a slow portal: a backlog is waiting at the update
    ids = enqueue_many(statuses(domain, 120))
    until(lambda: applied_statuses(stack, domain) >= 20, why="some applied before the update")
    # the update also removes the app's event handlers (§7.2, event-bind.md)
    answer = stack.emulator.admin("POST", f"portals/{domain}/update", {"unbind_events": True})
    assert answer["senders_removed"] == [PROVIDER["code"]] and answer["handlers_removed"] >= 2
    # ONAPPUPDATE handled: its new token verified at once, or (202) at its slot in the portal's busy bucket; the
    # answer does not wait for the handlers to be bound again through that bucket
    assert [e["status"] for e in answer["events"]] in ([200], [202]), answer
    until(
        lambda: (
            {e["event"] for e in stack.emulator.state(domain)["event_handlers"]} >= {"ONAPPUNINSTALL", "ONAPPUPDATE"}
        ),
        why="the app's handlers bound again",
    )
    rt = get_runtime()
    until(lambda: rt.registry.get(portal.key).application_token == answer["application_token"], why="verified")  # type: ignore[union-attr]
    assert set(wait_for(ids, timeout=120).values()) == {"applied"}  # none dead ERROR_MESSAGE_NOT_FOUND
    assert applied_statuses(stack, domain) == 120
    assert [s["code"] for s in stack.emulator.state(domain)["senders"]] == [PROVIDER["code"]]
    updated = get_runtime().registry.get(portal.key)
    assert updated is not None and updated.application_token == answer["application_token"]
    assert updated.app_version == str(answer["version"])
    # the new application_token is the one later events must carry: the old one no longer uninstalls
    old = {"member_id": portal.key, "application_token": portal.application_token}
    assert post_event(stack, {"event": "ONAPPUNINSTALL", "auth": old}).status_code == 401


@REDIS_ONLY
def test_a_domain_move_mid_run_loses_nothing(stack: LocalStack, domain: str) -> None:
    portal = installed(stack, domain, rate=4, burst=10)
    rt = get_runtime()
    ids = enqueue_many(statuses(domain, 150))
    until(lambda: applied_statuses(stack, domain) >= 30, why="some applied before the move")
    new = "moved-" + domain
    stack.emulator.admin("POST", f"portals/{domain}/move", {"new_domain": new})
    assert set(wait_for(ids, timeout=120).values()) == {"applied"}
    state = stack.emulator.state(new)
    assert sum(len(m["statuses"]) for m in state["statuses"]) == 150
    assert state["counters"].get("redirects", 0) >= 1
    moved = rt.registry.get(portal.key)
    assert moved is not None and moved.endpoint.endswith(f"/{new}/rest/") and moved.domain == new
    assert rt.registry.resolve(new) == portal.key  # producers may use the new name at once
    assert set(wait_for([enqueue(*statuses(new, 1, start=500)[0])]).values()) == {"applied"}


@REDIS_ONLY
def test_the_app_refuses_big_bodies_counts_refusals_and_logs_no_secret(stack: LocalStack, domain: str) -> None:
    portal = installed(stack, domain)
    assert stack.http is not None
    big = "event=ONAPPUPDATE&pad=" + "x" * (stack.settings.http_max_body + 1)
    answer = stack.http.http.post(
        "/b24/events", content=big, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 413 and answer.json()["status"] == 413
    forged = {"event": "ONAPPUPDATE", "auth": {"member_id": portal.key, "application_token": "z" * 32}}
    assert post_event(stack, forged).status_code == 401
    metrics = stack.http.http.get("/metrics").text
    assert 'b24q_app_events_total{event="ONAPPUPDATE",outcome="refused"}' in metrics
    assert 'b24q_app_events_total{event="ONAPPINSTALL",outcome="applied"}' in metrics
    log = stack.http.log_path.read_text()
    assert "POST /b24/install" in log  # the log is the app's (uvicorn's access lines)
    for secret in (portal.access_token, portal.refresh_token, portal.application_token):
        assert secret and secret not in log
