"""Packing: concurrent calls for a portal share one batch; whole-request errors handled once."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any, NoReturn

import httpx
import pytest
import redis

from tasks.jobs import DELIVERY_CONFIRMATION, KINDS
from workers.bitrix.client import CallResult
from workers.delivery.calls import Call
from workers.delivery.lane import Lane
from workers.delivery.ratelimit import Permit, RateLimiter
from workers.delivery.wire import LaneConfig
from workers.errors import Deferred, RestError
from workers.pipeline import run_job
from workers.portals.limits import Limits
from workers.runtime import Runtime
from workers.settings import Settings


class FakePortal:
    """Answers single calls and batches; scripts a few whole-request errors first."""

    def __init__(self, first: list[tuple[int, dict[str, Any]]] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.first = list(first or [])
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.requests.append({"method": request.url.path.rsplit("/", 1)[-1], **body})
            if self.first:
                status, answer = self.first.pop(0)
                return httpx.Response(status, json=answer)
        if request.url.path.endswith("/batch"):
            results = {}
            errors = {}
            for key, cmd in body["cmd"].items():
                if "MESSAGE_ID=404" in cmd:
                    errors[key] = {"error": "ERROR_MESSAGE_NOT_FOUND", "error_description": "Message not found!"}
                else:
                    results[key] = True
            return httpx.Response(
                200,
                json={"result": {"result": results or [], "result_error": errors or [], "result_time": []}, "time": {}},
            )
        return httpx.Response(200, json={"result": True, "time": {"operating": 0}})


def make_runtime(settings: Settings, rclient: redis.Redis, portal: FakePortal) -> Runtime:
    rt = Runtime(settings, rclient, transport=httpx.MockTransport(portal))
    rt.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    return rt


def run_concurrently(rt: Runtime, n: int, message_id: int = 1) -> list[Any]:
    out: list[Any] = [None] * n

    def one(i: int) -> None:
        try:
            out[i] = rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": message_id}, 5)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_calls_share_a_batch(settings: Settings, rclient: redis.Redis) -> None:
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    out = run_concurrently(rt, 120)
    assert all(r is not None and r.result is True for r in out)
    # 120 calls in at most a handful of requests, none over 50 commands
    assert len(portal.requests) <= 6
    assert all(len(r.get("cmd", {1: 1})) <= 50 for r in portal.requests)
    assert sum(len(r.get("cmd", {1: 1})) for r in portal.requests) == 120


def test_a_lone_call_goes_out_alone_and_fast(settings: Settings, rclient: redis.Redis) -> None:
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    start = time.monotonic()
    rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}, 5)
    assert time.monotonic() - start < 0.2
    assert portal.requests[0]["method"] == "im.dialog.unread"


def test_per_command_errors_reach_only_their_job(settings: Settings, rclient: redis.Redis) -> None:
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    results: dict[int, Any] = {}

    def one(mid: int) -> None:
        try:
            results[mid] = rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "1", "MESSAGE_ID": mid}, 5)
        except RestError as exc:
            results[mid] = exc

    threads = [threading.Thread(target=one, args=(mid,)) for mid in (1, 2, 404, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[404], RestError) and results[404].code == "ERROR_MESSAGE_NOT_FOUND"
    assert all(results[m].result is True for m in (1, 2, 3))


def test_503_sets_the_limiter_full_and_the_calls_go_with_the_next_slot(
    settings: Settings, rclient: redis.Redis
) -> None:
    portal = FakePortal(first=[(503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})])
    rt = make_runtime(settings, rclient, portal)
    start = time.monotonic()
    out = run_concurrently(rt, 10)
    assert all(r.result is True for r in out)
    assert len(portal.requests) == 2  # the refused one and the retry, no job failed
    assert rt.limiter.refusals() == {"acme": 1}  # counted for the console's live 503s
    # full at 50, ours is 45: the server must drain 6 requests at 2/s before the next slot
    assert 2.5 < time.monotonic() - start < 5


def test_expired_token_is_refreshed_once_and_the_request_repeated(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    portal = FakePortal(
        first=[(401, {"error": "expired_token", "error_description": "The access token provided has expired"})]
    )
    rt = make_runtime(settings, rclient, portal)
    calls = []

    def fake_refresh(key: str, stale: str) -> Any:
        calls.append(stale)
        rt.registry.rotate(key, "R0", "A1", "R1", time.time() + 3600)
        return rt.registry.get(key)

    monkeypatch.setattr(rt.tokens, "refresh", fake_refresh)
    out = run_concurrently(rt, 20)
    assert all(r.result is True for r in out)
    assert calls == ["A0"]
    assert [r["auth"] for r in portal.requests] == ["A0", "A1"]


def test_a_held_method_is_deferred_until_the_reset(settings: Settings, rclient: redis.Redis) -> None:
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    rt.holds.hold("acme", "im.dialog.unread", time.time() + 30)
    with pytest.raises(Deferred) as info:
        rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "1", "MESSAGE_ID": 1}, 5)
    assert 25 < info.value.delay <= 30
    assert portal.requests == []
    # other methods keep flowing
    rt.dispatcher.run("acme", "messageservice.message.status.update", {"CODE": "x"}, 5)
    assert len(portal.requests) == 1


def test_a_call_that_cannot_get_a_slot_in_time_is_deferred(settings: Settings, rclient: redis.Redis) -> None:
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    limits = rt.registry.get("acme").limits(settings)  # type: ignore[union-attr]
    rt.limiter.set_full("acme", limits)  # ~3 s until the next slot
    with pytest.raises(Deferred):
        rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "1", "MESSAGE_ID": 1}, 0.5)
    time.sleep(0.1)
    assert rt.dispatcher.lane("acme").depth() == 0  # withdrawn, not sent later behind the job's back


class DeliveryPortal(FakePortal):
    """imconnector: SUCCESS false whenever MESSAGES holds message id 666."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.requests.append({"method": request.url.path.rsplit("/", 1)[-1], **body})
        if request.url.path.endswith("/batch"):
            results = {k: {"SUCCESS": "666" not in cmd, "DATA": []} for k, cmd in body["cmd"].items()}
            return httpx.Response(200, json={"result": {"result": results, "result_error": []}})
        bad = any(m["im"]["message_id"] == 666 for m in body["MESSAGES"])
        return httpx.Response(200, json={"result": {"SUCCESS": not bad, "DATA": []}})


def delivery(message_id: int, line: int = 7) -> dict[str, Any]:
    return {
        "CONNECTOR": "wa",
        "LINE": line,
        "MESSAGES": [
            {
                "im": {"chat_id": 1, "message_id": message_id},
                "message": {"id": [str(message_id)], "date": 1},
                "chat": {"id": "c"},
            }
        ],
    }


def run_deliveries(rt: Runtime, params: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = [None] * len(params)

    def one(i: int) -> None:
        try:
            out[i] = rt.dispatcher.run(
                "acme", DELIVERY_CONFIRMATION.method, params[i], 5, DELIVERY_CONFIRMATION.merge
            ).result
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(params))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_deliveries_for_one_connector_and_line_share_a_call(settings: Settings, rclient: redis.Redis) -> None:
    portal = DeliveryPortal()
    rt = make_runtime(settings, rclient, portal)
    out = run_deliveries(rt, [delivery(i, line=7 if i < 60 else 8) for i in range(70)])
    assert all(r == {"SUCCESS": True, "DATA": []} for r in out)
    commands = [cmd for r in portal.requests for cmd in r.get("cmd", {"x": r}).values()]
    # 60 jobs on line 7 (≤ 50 per merged call) and 10 on line 8: three merged commands, not 70
    assert len(commands) <= 4, commands
    assert (
        sum(
            str(c).count("%5Bim%5D%5Bmessage_id%5D") + len(c.get("MESSAGES", []))
            if isinstance(c, dict)
            else c.count("%5Bim%5D%5Bmessage_id%5D")
            for c in commands
        )
        == 70
    )


def test_a_failed_merged_call_gives_each_job_its_own_outcome(settings: Settings, rclient: redis.Redis) -> None:
    portal = DeliveryPortal()
    rt = make_runtime(settings, rclient, portal)
    out = run_deliveries(rt, [delivery(i) for i in (1, 2, 666, 3)])
    assert [r["SUCCESS"] if isinstance(r, dict) else r for r in out] == [True, True, False, True]
    # the merged call failed, then each member went alone (as a batch of four single commands)
    last = portal.requests[-1]
    assert len(last["cmd"]) == 4


def test_a_token_refused_after_two_refreshes_parks_the_job_with_token_rejected(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: `invalid_token` is refreshed like expired_token (twice at most), and parked (TOKEN_REJECTED)
    if the portal refuses the fresh token again."""
    refused = (401, {"error": "invalid_token", "error_description": "The access token provided is invalid"})
    portal = FakePortal(first=[refused] * 3)
    rt = make_runtime(settings, rclient, portal)
    rotations = iter(range(1, 4))

    def fake_refresh(key: str, stale: str) -> Any:
        now = rt.registry.get(key)
        assert now is not None
        n = next(rotations)
        rt.registry.rotate(key, now.refresh_token, f"A{n}", f"R{n}", time.time() + 3600)
        return rt.registry.get(key)

    monkeypatch.setattr(rt.tokens, "refresh", fake_refresh)
    unread = KINDS["mark-unread"]
    rt.ledger.enqueued("t1", unread.name, "acme")

    def retry(countdown: float, exc: BaseException) -> NoReturn:
        raise AssertionError(f"retried: {exc}")

    out = run_job(unread, "t1", (), {"portal": "acme", "dialog_id": "chat1", "message_id": 5}, rt.job_services, retry)
    assert out["outcome"] == "parked" and "TOKEN_REJECTED" in out["reason"]
    assert [r["auth"] for r in portal.requests] == ["A0", "A1", "A2"]  # the first token, then two fresh ones
    portal_now = rt.registry.get("acme")
    assert portal_now is not None and portal_now.state == "reauth"
    assert rt.parking.count("acme") == 1


class SpyLimiter:
    """The runtime's limiter, telling the test when a lane has booked its slot."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.booked = threading.Event()

    def reserve(self, portal: str, limits: Limits, max_wait: float) -> Permit:
        permit = self.limiter.reserve(portal, limits, max_wait)
        self.booked.set()
        return permit

    def set_full(self, portal: str, limits: Limits) -> float:
        return self.limiter.set_full(portal, limits)


def test_a_slot_booked_while_a_backlog_is_coming_waits_for_a_full_batch(
    settings: Settings, rclient: redis.Redis
) -> None:
    """With the portal's bucket in use, a booked slot loses nothing by going a moment later: while the
    backlog says a batch more is on its way, the lane fills the request instead of sending the 10 calls it has."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    record = rt.registry.get("acme")
    assert record is not None
    limits = rt.portals.limits(record)
    for _ in range(10):  # other requests of the pool: the bucket is in use, the next slot has seconds of slack
        assert rt.limiter.reserve("acme", limits, max_wait=0).granted
    spy = SpyLimiter(rt.limiter)
    wire = dataclasses.replace(rt.dispatcher.wire, limiter=spy, backlog=lambda _: 1000)  # type: ignore[arg-type]
    lane = Lane("acme", wire, LaneConfig(fill_max=10.0))
    first = [Call("im.dialog.unread", {"DIALOG_ID": f"chat{i}", "MESSAGE_ID": i}) for i in range(10)]
    for call in first:
        lane.submit(call)
    assert spy.booked.wait(10)
    more = [Call("im.dialog.unread", {"DIALOG_ID": f"chat{i}", "MESSAGE_ID": i}) for i in range(10, 55)]
    for call in more:
        lane.submit(call)
    for call in first + more:
        assert call.done.wait(30) and isinstance(call.outcome, CallResult), call.outcome
    assert [len(r["cmd"]) for r in portal.requests] == [50, 5]


def test_a_slot_with_no_backlog_behind_it_does_not_wait(settings: Settings, rclient: redis.Redis) -> None:
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    record = rt.registry.get("acme")
    assert record is not None
    for _ in range(10):  # the bucket in use: the slot could wait ~5 s at no cost, if anything were coming
        assert rt.limiter.reserve("acme", rt.portals.limits(record), max_wait=0).granted
    lane = Lane("acme", rt.dispatcher.wire, LaneConfig(fill_max=10.0))  # the ledger's backlog: nothing coming
    started = time.monotonic()
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 1})
    lane.submit(call)
    assert call.done.wait(10) and isinstance(call.outcome, CallResult)
    assert time.monotonic() - started < 2.5  # not the ~5 s of slack it could have filled for


def test_a_fill_that_sees_no_new_call_gives_up(settings: Settings, rclient: redis.Redis) -> None:
    """The backlog may say more is coming while none can reach this lane (the pool's threads are all taken,
    or the jobs wait behind other portals' in the broker): a fill that sees no new call for gather_max ends."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    record = rt.registry.get("acme")
    assert record is not None
    for _ in range(10):  # the bucket in use: the slot could wait its fill_max
        assert rt.limiter.reserve("acme", rt.portals.limits(record), max_wait=0).granted
    wire = dataclasses.replace(rt.dispatcher.wire, backlog=lambda _: 1000)
    lane = Lane("acme", wire, LaneConfig(gather_max=0.25, fill_max=10.0))
    started = time.monotonic()
    calls = [Call("im.dialog.unread", {"DIALOG_ID": f"chat{i}", "MESSAGE_ID": i}) for i in range(10)]
    for call in calls:
        lane.submit(call)
    for call in calls:
        assert call.done.wait(15) and isinstance(call.outcome, CallResult)
    assert time.monotonic() - started < 5  # not the 10 s of fill_max
    assert [len(r["cmd"]) for r in portal.requests] == [10]


def test_a_quiet_portal_keeps_no_thread(settings: Settings, rclient: redis.Redis) -> None:
    """Thousands of portals, most quiet: a lane's sender thread ends as soon as its portal has nothing to send,
    so threads follow the jobs waiting, not the portals that ever had one."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    names = [f"p{i}" for i in range(60)]
    for name in names:
        rt.registry.add_oauth(name, f"https://{name}.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    for name in names:  # one job each, one after another: a quiet portal's lone call
        assert isinstance(
            rt.dispatcher.run(name, "im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}, 5), CallResult
        )
    deadline = time.monotonic() + 5
    while any(t.name.startswith("b24q-lane-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    lanes = [t.name for t in threading.enumerate() if t.name.startswith("b24q-lane-")]
    assert not lanes, f"{len(lanes)} quiet portals kept a thread"
    assert len(portal.requests) == len(names)
