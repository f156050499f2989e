"""Packing: concurrent calls for a portal share one batch; whole-request errors handled once."""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import httpx
import pytest
import redis

from tasks.jobs import DELIVERY_CONFIRMATION, KINDS
from tests.roundtrips import sent_to_redis
from tests.threads import in_threads
from workers.bitrix.client import CallResult
from workers.delivery import packing, wire
from workers.delivery.calls import Call
from workers.delivery.lane import Lane
from workers.delivery.ordering import Order
from workers.delivery.ratelimit import Permit, RateLimiter
from workers.delivery.wire import LaneConfig
from workers.errors import Deferred, RestError
from workers.pipeline import run_job
from workers.portals.limits import Limits
from workers.roundtrip import Batch
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


def at_once(rt: Runtime, calls: list[Callable[[], Any]]) -> list[Any]:
    """Each call in a thread of its own, all at once, each counted in the portal's backlog as a producer's job
    is (a lane packs by it); what each returned or raised."""
    for i in range(len(calls)):
        rt.ledger.enqueued(f"at-once-{uuid.uuid4().hex}-{i}", "test", "acme")
    return in_threads(calls)


def run_concurrently(rt: Runtime, n: int, message_id: int = 1) -> list[Any]:
    params = {"DIALOG_ID": "chat1", "MESSAGE_ID": message_id}
    return at_once(rt, [lambda: rt.dispatcher.run("acme", "im.dialog.unread", params, 5)] * n)


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

    def unread(mid: int) -> Callable[[], Any]:
        return lambda: rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "1", "MESSAGE_ID": mid}, 5)

    results = dict(zip((1, 2, 404, 3), at_once(rt, [unread(mid) for mid in (1, 2, 404, 3)]), strict=True))
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
    method, merge = DELIVERY_CONFIRMATION.method, DELIVERY_CONFIRMATION.merge

    def deliver(p: dict[str, Any]) -> Callable[[], Any]:
        return lambda: rt.dispatcher.run("acme", method, p, 5, merge).result

    return at_once(rt, [deliver(p) for p in params])


def test_deliveries_for_one_connector_and_line_share_a_call(settings: Settings, rclient: redis.Redis) -> None:
    """60 jobs on line 7 and 10 on line 8, all at once: in every request the calls of one connector and line
    are one merged command (up to 50 messages each), however the jobs' threads arrived between requests."""
    portal = DeliveryPortal()
    rt = make_runtime(settings, rclient, portal)
    out = run_deliveries(rt, [delivery(i, line=7 if i < 60 else 8) for i in range(70)])
    assert all(r == {"SUCCESS": True, "DATA": []} for r in out)

    def line_and_messages(command: dict[str, Any] | str) -> tuple[str, int]:
        if isinstance(command, dict):
            return str(command["LINE"]), len(command["MESSAGES"])
        query = urllib.parse.parse_qs(command.split("?", 1)[1])
        return query["LINE"][0], command.count("%5Bim%5D%5Bmessage_id%5D")

    total = 0
    for request in portal.requests:
        by_line: dict[str, list[int]] = {}
        for command in request.get("cmd", {"one": request}).values():
            line, messages = line_and_messages(command)
            by_line.setdefault(line, []).append(messages)
        for sizes in by_line.values():  # as few commands as 50 messages a command allow
            assert len(sizes) == -(-sum(sizes) // 50), (request, by_line)
            total += sum(sizes)
    assert total == 70
    assert sum(len(r.get("cmd", {"one": r})) for r in portal.requests) <= 12  # not one command a job


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


def record(rt: Runtime, job_id: str, kwargs: dict[str, Any]) -> None:
    """Record a mark-unread job of acme as the producer records one it enqueues (its ordering stamp included)."""
    unread = KINDS["mark-unread"]
    assert unread.order is not None
    pipe = rt.redis.pipeline(transaction=True)
    rt.ledger.enqueued(job_id, unread.name, "acme", pipe, payload=kwargs)
    rt.ordering.queue_stamps(pipe, {"acme": [(job_id, 0, None, unread.order.keys(kwargs))]})
    pipe.execute()


def no_retry(countdown: float, exc: BaseException) -> NoReturn:
    raise AssertionError(f"retried: {exc}")


@pytest.mark.parametrize("flushed", [False, True], ids=["scripts loaded", "scripts flushed"])
def test_at_a_quiet_portal_an_older_report_run_last_is_superseded(
    settings: Settings, rclient: redis.Redis, flushed: bool
) -> None:
    """The slot and the ordering gate share a round trip there; the gate still decides, also when Redis lost
    its scripts (a restart) between two jobs."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    unread = KINDS["mark-unread"]
    older = {"portal": "acme", "dialog_id": "chat1", "message_id": 5}
    newer = {"portal": "acme", "dialog_id": "chat1", "message_id": 9}
    record(rt, "older", older)
    record(rt, "newer", newer)
    assert run_job(unread, "newer", (), dict(newer), rt.job_services, no_retry) == {"outcome": "applied"}
    if flushed:
        rclient.script_flush()
    assert run_job(unread, "older", (), dict(older), rt.job_services, no_retry) == {
        "outcome": "superseded",
        "by": "newer",
    }
    assert [r["MESSAGE_ID"] for r in portal.requests] == [9]


@pytest.fixture
def fresh_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's start's readings of its portal's traffic stay fresh through the test. They count for `FRESH`
    (20 ms): a loaded machine can take longer from a job's start to its lane, and its call then routes and packs
    by readings taken again (another round trip, or the pool's lane), which is right but not what a test of the
    round trips a job makes at its fresh readings counts."""
    monkeypatch.setattr(wire, "FRESH", 60.0)
    monkeypatch.setattr(packing, "FRESH", 60.0)


def test_a_quiet_portals_job_costs_three_redis_round_trips(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch, fresh_readings: None
) -> None:
    """Its start (its run, its portal's record, the portal's traffic), its slot with the ordering gate, and its
    finish. A round trip costs a worker more than anything else b24q does for a job (docs/benchmarks.md:
    issue 21), so one more is a regression."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    unread = KINDS["mark-unread"]
    for n in range(3):  # the first loads the scripts and the registry's keys; the others are any job's
        kwargs = {"portal": "acme", "dialog_id": "chat1", "message_id": n + 1}
        record(rt, f"quiet-{n}", kwargs)
        rt.portals.forget("acme")  # its record as a quiet portal's is: older than the cache keeps it
        with sent_to_redis(monkeypatch) as sent:
            assert run_job(unread, f"quiet-{n}", (), kwargs, rt.job_services, no_retry) == {"outcome": "applied"}
    assert len(portal.requests) == 3
    assert len(sent) == 3, [s[:80] for s in sent]


def test_a_call_can_be_withdrawn_while_a_lone_round_books_its_slot(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet portal's round books the slot and asks the gate with its calls still staged: a job whose wait
    ends meanwhile withdraws its call (and is deferred), and the call is not sent behind its back."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    rt.ledger.enqueued("withdrawn", "mark-unread", "acme")  # the portal's backlog: this one job
    lane = rt.dispatcher.lane("acme")
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 1})
    withdrawn: list[bool] = []
    real_execute = Batch.execute

    def execute(batch: Batch, raise_on_error: bool = True) -> list[Any]:
        if not withdrawn:
            withdrawn.append(lane.cancel(call))  # the job's permit_wait ends during the round trip
        return real_execute(batch, raise_on_error)

    monkeypatch.setattr(Batch, "execute", execute)
    assert lane.offer(call)
    lane.lead(5.0)
    assert withdrawn == [True]
    assert portal.requests == [] and not call.done.is_set() and lane.depth() == 0


def test_raw_jobs_naming_a_portal_by_its_alias_run_under_its_key(settings: Settings, rclient: redis.Redis) -> None:
    """Two raw messages (no producer record) naming acme by its domain, the second while the first's reading
    is still cached: both runs, backlogs and lanes are acme's."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    rt.registry.set_aliases("acme", "acme.bitrix24.com")
    unread = KINDS["mark-unread"]
    for n in (1, 2):
        kwargs = {"portal": "acme.bitrix24.com", "dialog_id": "chat1", "message_id": n}
        assert run_job(unread, f"raw-{n}", (), kwargs, rt.job_services, no_retry) == {"outcome": "applied"}
    assert [rt.ledger.record(f"raw-{n}")["portal"] for n in (1, 2)] == ["acme", "acme"]
    assert rt.ledger.backlog("acme") == 0 and rt.ledger.backlog("acme.bitrix24.com") == 0
    assert len(portal.requests) == 2


def test_a_busy_portals_jobs_are_recorded_applied_by_the_round_trip_of_their_request(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch, fresh_readings: None
) -> None:
    """The lane that sent a request marks its jobs applied in one round trip, before they learn their outcome;
    their own threads then make none (one each was a busy portal's job's largest cost after its start)."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    unread = KINDS["mark-unread"]
    jobs = [(f"busy-{i}", {"portal": "acme", "dialog_id": f"chat{i}", "message_id": i + 1}) for i in range(30)]
    for job_id, kwargs in [("first", {"portal": "acme", "dialog_id": "chat999", "message_id": 1}), *jobs]:
        record(rt, job_id, kwargs)
    rclient.script_flush()  # as after a Redis restart: the lane loads the finish script again
    # the first job alone: the registry's keys, the scripts (as any worker's first job)
    assert run_job(
        unread, "first", (), {"portal": "acme", "dialog_id": "chat999", "message_id": 1}, rt.job_services, no_retry
    )
    requests_before = len(portal.requests)
    with sent_to_redis(monkeypatch) as sent:
        out = in_threads(
            [functools.partial(run_job, unread, j, (), dict(k), rt.job_services, no_retry) for j, k in jobs]
        )
    # per round trip that finished jobs: how many; the round trips that booked a slot
    finishes = [n for n in (p.count(b'"state": "applied"') for p in sent) if n]
    bookings = [p for p in sent if b"b24q:rl:{acme}" in p]
    assert out == [{"outcome": "applied"}] * len(jobs)
    assert {rt.ledger.get(j)["state"] for j, _ in jobs} == {"applied"}  # type: ignore[index]
    assert sum(finishes) == len(jobs)
    requests = len(portal.requests) - requests_before
    assert len(finishes) == requests < len(jobs), (finishes, requests)
    # each request's slot and its ordering gate: one round trip; the holds on its method as the jobs' starts
    # read them (fresh), never in a round trip of their own
    assert len(bookings) == requests
    assert all(b"b24q:ord:{acme}" in b for b in bookings)
    starts = [p for p in sent if b"b24q:calls:{acme}" in p]  # a job's start reads the call pool's depth
    assert len(starts) == len(jobs)
    assert [p for p in sent if b"b24q:hold:{acme}" in p and p not in starts] == []


def test_a_lone_round_without_fresh_readings_reads_the_holds_with_its_slot_and_gate(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No job's start read the portal's holds just now (a call routed by readings taken again): the lone round
    reads them in its booking's round trip, beside the slot and the ordering gate."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    unread = KINDS["mark-unread"]
    assert unread.order is not None
    first = {"portal": "acme", "dialog_id": "chat0", "message_id": 1}
    record(rt, "first", first)  # the scripts loaded, as by any worker's first job
    assert run_job(unread, "first", (), dict(first), rt.job_services, no_retry) == {"outcome": "applied"}
    kwargs = {"portal": "acme", "dialog_id": "chat1", "message_id": 1}
    keys = unread.order.keys(kwargs)
    (version,) = rt.ordering.stamp("acme", [("lone", 0, None, keys)])
    monkeypatch.setattr(wire, "FRESH", 0.0)  # the first job's readings no longer count
    monkeypatch.setattr(packing, "FRESH", 0.0)
    lane = rt.dispatcher.lane("acme", pooled=False)
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}, order=Order("lone", version, keys))
    assert lane.offer(call)
    with sent_to_redis(monkeypatch) as sent:
        lane.lead(5.0)
    assert isinstance(call.outcome, CallResult), call.outcome
    bookings = [p for p in sent if b"b24q:rl:{acme}" in p]
    assert len(bookings) == 1
    assert b"b24q:hold:{acme}:im.dialog.unread" in bookings[0] and b"b24q:ord:{acme}" in bookings[0]
    assert [p for p in sent if b"b24q:hold:{acme}" in p or b"b24q:ord:{acme}" in p] == bookings


def test_a_job_the_lane_could_not_record_records_itself(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refused the lane's round trip (`finish_applied` says so, job by job): the job's own finish writes
    the record."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    unread = KINDS["mark-unread"]
    kwargs = {"portal": "acme", "dialog_id": "chat1", "message_id": 1}
    record(rt, "unrecorded", kwargs)
    monkeypatch.setattr(rt.ledger, "finish_applied", lambda portal_key, job_ids: [False] * len(job_ids))
    assert run_job(unread, "unrecorded", (), dict(kwargs), rt.job_services, no_retry) == {"outcome": "applied"}
    assert rt.ledger.get("unrecorded")["state"] == "applied"  # type: ignore[index]
