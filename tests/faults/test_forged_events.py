"""A flood of forged application events costs us and the portals nothing (issue 20, docs/security.md).

Forty clients post forged ONAPPINSTALL, ONAPPUPDATE and ONAPPUNINSTALL events (wrong tokens, fresh ones each
time) at two installed portals for 20 s, as fast as the app answers, while a producer posts a real job every
50 ms over HTTP and a monitor asks /healthz every 100 ms. What must hold: the producer's p99 ≤ 0.5 s; /healthz
never fails; the portals get at most one verification call a second each from the flood, and never a
QUERY_LIMIT_EXCEEDED; their records do not change; every real job is applied. On both brokers: the flood
meets only the HTTP app, but the real jobs are enqueued (on RabbitMQ, each POST waits for its confirms).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from edges.http import apikeys
from tests.integration.conftest import BROKERS, on_broker
from workers.bitrix.querystring import encode
from workers.localdev.localstack import LocalStack
from workers.portals.record import Portal
from workers.runtime import get_runtime

from .conftest import SENDER, make_fault_stack, wait_terminal

pytestmark = pytest.mark.integration

KEY, ENTRY = apikeys.new()
FLOOD_SECONDS = 20.0
CLIENTS = 40
PRODUCER_EVERY = 0.05
HEALTH_EVERY = 0.1
#: errors the emulator answers a REST call whose token it does not know (every forged verification's answer)
AUTH_ERRORS = ("invalid_token", "expired_token", "NO_AUTH_FOUND", "INVALID_CREDENTIALS", "WRONG_AUTH_TYPE")


@dataclass
class Timings:
    latencies: list[float]
    failures: list[str]


def forged_events(portal: Portal, n: int) -> Iterator[dict[str, Any]]:
    """Install, update and uninstall events naming `portal`, each with tokens of its own."""
    for i in range(n):
        token = secrets.token_hex(16)
        auth = {"member_id": portal.member_id, "domain": portal.domain, "application_token": token}
        if i % 3 == 0:
            auth |= {"client_endpoint": portal.endpoint, "access_token": secrets.token_hex(24), "refresh_token": token}
            yield {"event": "ONAPPINSTALL", "data": {"VERSION": "1"}, "auth": auth}
        elif i % 3 == 1:
            auth |= {"access_token": secrets.token_hex(24), "refresh_token": token}
            yield {"event": "ONAPPUPDATE", "data": {"VERSION": "9"}, "auth": auth}
        else:
            yield {"event": "ONAPPUNINSTALL", "data": {"CLEAN": "1"}, "auth": auth}


async def flood(url: str, portals: list[Portal], until: float, answers: Counter[int]) -> None:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(index: int) -> None:
            events = forged_events(portals[index % len(portals)], 10**9)
            while time.monotonic() < until:
                body = encode(next(events))
                try:
                    answer = await client.post(
                        "/b24/events", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
                    )
                    answers[answer.status_code] += 1
                except httpx.HTTPError:
                    answers[0] += 1

        await asyncio.gather(*(one(i) for i in range(CLIENTS)))


def produce(url: str, domains: list[str], until: float, ids: list[str], timings: Timings) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        n = 0
        next_at = time.monotonic()
        while next_at < until:
            job = {
                "kind": "status-update",
                "portal": domains[n % len(domains)],
                "code": SENDER,
                "message_id": f"real-{n}",
                "status": "delivered",
            }
            start = time.monotonic()
            try:
                answer = client.post("/v1/jobs", json=job)
                timings.latencies.append(time.monotonic() - start)
                if answer.status_code == 202:
                    ids.extend(answer.json()["ids"])
                else:
                    timings.failures.append(f"{answer.status_code} {answer.text[:200]}")
            except httpx.HTTPError as exc:
                timings.latencies.append(time.monotonic() - start)
                timings.failures.append(repr(exc))
            n += 1
            next_at += PRODUCER_EVERY
            time.sleep(max(0.0, next_at - time.monotonic()))


def watch_health(url: str, until: float, timings: Timings) -> None:
    with httpx.Client(base_url=url, timeout=2) as client:
        while time.monotonic() < until:
            start = time.monotonic()
            try:
                answer = client.get("/healthz")
                if answer.status_code != 200:
                    timings.failures.append(str(answer.status_code))
            except httpx.HTTPError as exc:
                timings.failures.append(repr(exc))
            timings.latencies.append(time.monotonic() - start)
            time.sleep(max(0.0, HEALTH_EVERY - (time.monotonic() - start)))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.fixture(params=BROKERS)
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    s = make_fault_stack(workers=2, api_keys=ENTRY, http_rate=0.0, **on_broker(request.param))
    try:
        s.start_http()
        yield s
    finally:
        s.__exit__(None, None, None)


def test_a_flood_of_forged_events_costs_the_portals_and_the_producers_nothing(
    stack: LocalStack, domain: str, figures: dict[str, Any]
) -> None:
    rt = get_runtime()
    domains = [domain, "second-" + domain]
    portals = []
    for name in domains:
        key = stack.install_portal(name, auto_messages=True)["key"]
        stack.emulator.admin("POST", f"portals/{name}/senders", {"code": SENDER, "name": "SMS"})
        portal = rt.registry.get(key)
        assert portal is not None
        portals.append(portal)
    before = {name: stack.emulator.state(name)["counters"] for name in domains}
    assert stack.http is not None
    url = stack.http.url

    start = time.monotonic()
    until = start + FLOOD_SECONDS
    answers: Counter[int] = Counter()
    ids: list[str] = []
    producer, health = Timings([], []), Timings([], [])
    threads = [
        threading.Thread(target=produce, args=(url, domains, until, ids, producer), name="producer"),
        threading.Thread(target=watch_health, args=(url, until, health), name="health"),
        threading.Thread(target=lambda: asyncio.run(flood(url, portals, until, answers)), name="flood"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=FLOOD_SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a client thread did not stop"
    flooded = time.monotonic() - start

    outcomes = wait_terminal(ids, timeout=60)
    after = {name: stack.emulator.state(name)["counters"] for name in domains}
    forged_calls = {
        name: sum(
            after[name]["by_error_code"].get(code, 0) - before[name]["by_error_code"].get(code, 0)
            for code in AUTH_ERRORS
        )
        for name in domains
    }
    limit_exceeded = {name: after[name]["by_error_code"].get("QUERY_LIMIT_EXCEEDED", 0) for name in domains}
    figures.update(
        forged_requests=sum(answers.values()),
        forged_answers=dict(sorted(answers.items())),
        flood_seconds=round(flooded, 1),
        forged_verification_calls=forged_calls,
        query_limit_exceeded=limit_exceeded,
        producer_posts=len(producer.latencies),
        producer_p50_s=round(sorted(producer.latencies)[len(producer.latencies) // 2], 3),
        producer_p99_s=round(p99(producer.latencies), 3),
        producer_failures=producer.failures[:5],
        health_checks=len(health.latencies),
        health_failures=health.failures[:5],
        health_p99_s=round(p99(health.latencies), 3),
        real_jobs=Counter(outcomes.values()),
    )
    assert sum(answers.values()) >= CLIENTS * 10, f"the flood did not flood: {answers}"
    assert answers[200] == 0, f"a forged event was taken: {answers}"
    assert not producer.failures and not health.failures, figures
    assert p99(producer.latencies) <= 0.5, figures
    for name in domains:
        assert forged_calls[name] <= flooded, figures  # at most one a second
        assert limit_exceeded[name] == 0, figures
    for portal in portals:
        assert rt.registry.get(portal.key) == portal
    assert len(ids) >= FLOOD_SECONDS / PRODUCER_EVERY * 0.8 and set(outcomes.values()) == {"applied"}, figures
