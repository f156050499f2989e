"""Forged application events (`/b24/*`, `edges.lifecycle`): what they may cost a portal and the app.

The portal is a counting `httpx.MockTransport`: every `app.info` an event causes is seen. A forged event is
refused without a portal call once the budget is spent, a failed token is never sent twice, an uninstall
erases the application_token so that an old one never brings a portal back, and events have threads of
their own: /healthz and /v1 answer while every event thread waits on a portal.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from edges.http import apikeys
from edges.http.app import create_app
from edges.lifecycle import Lifecycle
from tests.test_http_intake import Server
from workers.bitrix.querystring import encode
from workers.celery import configure
from workers.delivery.verification import Busy, VerificationGate
from workers.keys import Keys
from workers.runtime import Runtime, set_runtime
from workers.settings import Settings, get_settings

MEMBER = "m-acme"
ENDPOINT = "http://127.0.0.1:9/acme/rest/"
TOKEN = "app-token-of-acme"
KEY, ENTRY = apikeys.new()


class Portal:
    """A portal that accepts one access token; counts every app.info; can hold its answers."""

    def __init__(self) -> None:
        self.calls = 0
        self.good = "good-access-token"
        self.hold = threading.Event()
        self.hold.set()
        self.lock = threading.Lock()
        self.moved_to = ""  # the portal's new endpoint: its old one answers with a redirect there
        self.busy = 0  # how many calls to answer QUERY_LIMIT_EXCEEDED first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls += 1
            busy, self.busy = self.busy > 0, max(0, self.busy - 1)
        self.hold.wait(30)
        if self.moved_to and str(request.url).startswith(ENDPOINT):
            return httpx.Response(301, headers={"location": self.moved_to + "app.info"})
        if busy:
            return httpx.Response(503, json={"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
        if json.loads(request.content).get("auth") == self.good:
            return httpx.Response(200, json={"result": {"LICENSE": "en_std", "VERSION": 2}})
        return httpx.Response(401, json={"error": "invalid_token", "error_description": "Unable to get application"})


@pytest.fixture
def portal() -> Portal:
    return Portal()


@pytest.fixture
def rt(settings: Settings, rclient: redis.Redis, portal: Portal) -> Iterator[Runtime]:
    s = settings.model_copy(update={"api_keys": ENTRY, "http_rate": 0.0, "portal_hosts": "127.0.0.1"})
    runtime = Runtime(s, rclient, transport=httpx.MockTransport(portal))
    runtime.registry.install(
        MEMBER,
        {
            "member_id": MEMBER,
            "domain": "acme",
            "client_endpoint": ENDPOINT,
            "access_token": "stored-access",
            "refresh_token": "stored-refresh",
            "expires": 4102444800,
        },
        TOKEN,
        "1",
        "standard",
    )
    set_runtime(runtime)
    configure(s)  # the Celery producer, on the test's Redis
    yield runtime
    configure(get_settings())
    set_runtime(None)
    runtime.close()


def update(application_token: str, access_token: str | None = None) -> dict[str, Any]:
    auth = {"member_id": MEMBER, "application_token": application_token}
    if access_token is not None:
        auth |= {"access_token": access_token, "refresh_token": "r-" + access_token, "expires_in": "3600"}
    return {"event": "ONAPPUPDATE", "data": {"VERSION": "3"}, "auth": auth}


def test_the_gate_is_single_flight_within_a_budget_and_remembers_failures(rclient: redis.Redis) -> None:
    gate = VerificationGate(rclient, Keys("t"), per_minute=6.0, burst=2, lock_ttl=30.0)
    with gate.turn("acme"), pytest.raises(Busy, match="another verification"):
        gate.turn("acme").__enter__()
    with gate.turn("globex"):  # another portal has its own
        pass
    with gate.turn("acme"):  # the burst's second unit
        pass
    with pytest.raises(Busy, match="budget") as spent:
        gate.turn("acme").__enter__()
    assert 5.0 <= spent.value.retry_after <= 10.0  # one unit every 10 s
    assert not gate.failed_before("acme", "tok")
    gate.remember_failure("acme", "tok")
    assert gate.failed_before("acme", "tok") and not gate.failed_before("globex", "tok")
    assert not any(b"tok" in key for key in rclient.keys("t:verify:*"))  # digests, never the token


def test_forged_updates_cost_the_portal_its_budget_at_most(rt: Runtime, portal: Portal) -> None:
    life = Lifecycle(rt)
    outcomes = [life.handle(update(secrets.token_hex(16), secrets.token_hex(24))) for _ in range(50)]
    assert portal.calls == rt.settings.event_verify_burst  # then refused without a call
    assert {o.status for o in outcomes} == {401, 429}
    assert sum(o.status == 429 for o in outcomes) == 50 - rt.settings.event_verify_burst
    assert all(o.retry_after > 0 for o in outcomes if o.status == 429)
    stored = rt.registry.get(MEMBER)
    assert stored is not None and stored.application_token == TOKEN and stored.app_version == "1"


def test_a_token_the_portal_refused_is_never_sent_again(rt: Runtime, portal: Portal) -> None:
    life = Lifecycle(rt)
    assert life.handle(update("forged", "stolen-or-made-up")).status == 401
    for _ in range(5):
        assert life.handle(update("forged", "stolen-or-made-up")).status == 401
    assert portal.calls == 1


def test_forged_uninstalls_and_events_cost_no_portal_call(rt: Runtime, portal: Portal) -> None:
    life = Lifecycle(rt)
    for _ in range(20):
        forged = {"event": "ONAPPUNINSTALL", "auth": {"member_id": MEMBER, "application_token": secrets.token_hex(16)}}
        assert life.handle(forged).status == 401
    assert life.handle({"event": "ONAPPUNINSTALL", "auth": {"member_id": MEMBER}}).status == 401
    assert life.handle({"event": "ONCRMDEALADD", "auth": {"member_id": MEMBER, "application_token": "x"}}).status == 401
    assert portal.calls == 0
    stored = rt.registry.get(MEMBER)
    assert stored is not None and stored.state == "active"


def test_a_real_update_is_verified_once_and_stored(rt: Runtime, portal: Portal) -> None:
    outcome = Lifecycle(rt).handle(update("new-app-token", portal.good))
    assert outcome.result == "applied", outcome
    stored = rt.registry.get(MEMBER)
    assert stored is not None and stored.application_token == "new-app-token" and stored.app_version == "3"


def test_an_expired_token_is_refused_and_never_refreshed(rt: Runtime, portal: Portal) -> None:
    """The event's own token goes the delivery path's one-off way: `expired_token` refuses it, and nothing
    refreshes it with the stored refresh token nor stores anything."""
    portal.good = "some-other-token"  # the portal answers the event's token with invalid_token
    before = rt.registry.get(MEMBER)
    assert Lifecycle(rt).handle(update("new-app-token", "an-expired-token")).status == 401
    assert portal.calls == 1 and rt.registry.get(MEMBER) == before


def test_a_portal_over_its_limit_defers_the_verification_and_is_never_marked_full(rt: Runtime, portal: Portal) -> None:
    portal.busy = 1  # other apps on its IP: the verification's slot meets QUERY_LIMIT_EXCEEDED even so
    outcome = Lifecycle(rt).handle(update("new-app-token", portal.good))
    assert (outcome.result, outcome.status) == ("deferred", 202), outcome  # a request thread never waits
    until(lambda: (rt.registry.get(MEMBER) or pytest.fail()).application_token == "new-app-token", "verified")
    until(lambda: not any(isinstance(t, threading.Timer) for t in threading.enumerate()), "the deferred run done")
    assert portal.calls == 2 and rt.limiter.refusals() == {}  # asked again at its next slot; bucket not set full


def test_a_verification_follows_a_domain_move_within_the_rules_only(rt: Runtime, portal: Portal) -> None:
    portal.moved_to = "http://127.0.0.1:9/acme-new/rest/"
    outcome = Lifecycle(rt).handle(update("new-app-token", portal.good))
    assert (outcome.result, outcome.status) == ("deferred", 202), outcome  # asked again at the new address
    moved = rt.registry.get(MEMBER)
    assert moved is not None and moved.endpoint == portal.moved_to
    until(lambda: (rt.registry.get(MEMBER) or pytest.fail()).application_token == "new-app-token", "verified")
    until(lambda: not any(isinstance(t, threading.Timer) for t in threading.enumerate()), "the deferred run done")

    portal.moved_to, calls = "https://evil.example.com/rest/", portal.calls
    rt.registry.move(MEMBER, moved.endpoint, ENDPOINT)
    refused = Lifecycle(rt).handle(update("newer-app-token", "a-token-for-evil"))
    assert refused.status == 401 and portal.calls == calls + 1  # the token went no further
    stored = rt.registry.get(MEMBER)
    assert stored is not None and stored.endpoint == ENDPOINT and stored.application_token == "new-app-token"


def test_uninstall_erases_the_application_token_and_an_old_one_never_brings_the_portal_back(
    rt: Runtime, portal: Portal
) -> None:
    life = Lifecycle(rt)
    uninstall = {"event": "ONAPPUNINSTALL", "auth": {"member_id": MEMBER, "application_token": TOKEN}}
    assert life.handle(uninstall).result == "applied"
    gone = rt.registry.get(MEMBER)
    assert gone is not None and gone.state == "uninstalled" and gone.application_token == ""
    # the same uninstall again changes nothing; an update with the old token, and with the portal's old access
    # token, is refused without a portal call: only an install brings the portal back
    assert life.handle(uninstall).result == "ignored"
    replayed = life.handle(update(TOKEN, portal.good))
    assert (replayed.result, replayed.status) == ("refused", 409)
    other = {"event": "ONIMCONNECTORMESSAGEADD", "auth": {"member_id": MEMBER, "application_token": TOKEN}}
    assert life.handle(other).status == 401
    assert portal.calls == 0
    still = rt.registry.get(MEMBER)
    assert still is not None and still.state == "uninstalled"


def test_events_have_threads_of_their_own(rt: Runtime, portal: Portal) -> None:
    """Every event thread waits on a portal (new portals' installs: each its own budget), more events wait
    for one, more still are refused at once; /healthz and /v1 answer meanwhile."""
    portal.hold.clear()
    server = Server(create_app(lambda: rt))
    threads = rt.settings.http_event_concurrency
    try:

        def install(i: int) -> int:
            auth = {
                "member_id": f"new-{i}",
                "domain": f"p{i}",
                "client_endpoint": f"http://127.0.0.1:9/p{i}/rest/",
                "access_token": secrets.token_hex(24),
                "refresh_token": secrets.token_hex(24),
                "application_token": secrets.token_hex(16),
            }
            body = encode({"event": "ONAPPINSTALL", "auth": auth})
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            return httpx.post(f"{server.url}/b24/install", content=body, headers=headers, timeout=60).status_code

        with ThreadPoolExecutor(max_workers=threads * 3) as pool:
            held = [pool.submit(install, i) for i in range(threads * 3)]
            until(lambda: portal.calls >= threads, "every event thread waiting on the portal")
            with httpx.Client(base_url=server.url, timeout=5) as client:
                start = time.monotonic()
                assert client.get("/healthz").status_code == 200
                job = {"kind": "mark-unread", "portal": MEMBER, "dialog_id": "chat7", "message_id": 12}
                posted = client.post("/v1/jobs", json=job, headers={"X-API-Key": KEY})
                assert posted.status_code == 202, posted.text
                assert time.monotonic() - start < 2.0
            assert portal.calls == threads  # no more than its threads at once
            portal.hold.set()
            answers = [f.result(timeout=60) for f in held]
        assert set(answers) == {401}, answers  # (the portal refused their tokens)
    finally:
        portal.hold.set()
        server.stop()


def until(what: Callable[[], bool], why: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {why}")
        time.sleep(0.02)


def test_a_flood_past_the_waiting_room_is_refused_at_once(rt: Runtime, portal: Portal) -> None:
    portal.hold.clear()
    settings = rt.settings.model_copy(update={"http_event_concurrency": 1})
    small = Runtime(settings, rt.redis, transport=httpx.MockTransport(portal))
    server = Server(create_app(lambda: small))
    try:

        def install(i: int) -> httpx.Response:
            auth = {
                "member_id": f"n-{i}",
                "client_endpoint": f"http://127.0.0.1:9/q{i}/rest/",
                "access_token": f"a{i}",
                "refresh_token": f"r{i}",
            }
            body = encode({"event": "ONAPPINSTALL", "auth": auth})
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            return httpx.post(f"{server.url}/b24/install", content=body, headers=headers, timeout=60)

        with ThreadPoolExecutor(max_workers=16) as pool:
            held = [pool.submit(install, i) for i in range(12)]
            until(lambda: portal.calls >= 1, "the one event thread waiting")
            until(lambda: sum(f.done() for f in held) >= 12 - 9, "the waiting room full, the rest refused")
            refused = [f.result() for f in held if f.done()]
            assert refused and all(r.status_code == 503 and r.headers["retry-after"] == "1" for r in refused)
            assert json.loads(refused[0].text)["status"] == 503
            portal.hold.set()
            for f in held:
                f.result(timeout=60)
    finally:
        portal.hold.set()
        server.stop()
        small.close()
