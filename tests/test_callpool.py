"""The pool-wide call queue: calls of several worker processes share requests; outcomes travel back
typed; an owner notices a sender that died and a call the list lost."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from typing import Any

import httpx
import pytest
import redis

from tests.test_dispatcher import FakePortal, make_runtime
from workers import errors, retries
from workers.bitrix.client import CallResult
from workers.delivery.callpool import CallPool, decode_outcome, encode_outcome
from workers.delivery.calls import Call
from workers.delivery.lane import Lane
from workers.delivery.ratelimit import Permit
from workers.delivery.wire import LaneConfig
from workers.errors import Deferred
from workers.keys import Keys
from workers.portals.limits import Limits
from workers.runtime import Runtime
from workers.settings import Settings


def test_outcomes_cross_processes_with_their_types() -> None:
    cases: list[CallResult | BaseException] = [
        CallResult({"SUCCESS": True}, {"operating": 1.5}),
        CallResult(True, None),
        Deferred(2.5, "held"),
        errors.QueryLimitExceeded("QUERY_LIMIT_EXCEEDED", "Too many requests", 503),
        errors.OperationTimeLimit("OPERATION_TIME_LIMIT", "Method is blocked", 429, reset_at=1234.5),
        errors.TokenExpired("expired_token", "The access token provided has expired.", 401),
        errors.AuthLost("TOKEN_REJECTED", "refused"),
        errors.ServerError("INTERNAL_SERVER_ERROR", "boom", 500),
        errors.ResultFailed("SUCCESS_FALSE", "no"),
        errors.RestError("ERROR_MESSAGE_NOT_FOUND", "Message not found!", 400),
        errors.TransportError("TIMEOUT", "read timed out"),
        errors.OAuthUnavailable("OAUTH_DOWN", "503"),
    ]
    for outcome in cases:
        back = decode_outcome(encode_outcome(outcome))
        assert type(back) is type(outcome)
        if isinstance(outcome, CallResult):
            assert back == outcome
        else:
            assert isinstance(back, BaseException) and str(back) == str(outcome)
            assert retries.classify(back) == retries.classify(outcome)
    held = decode_outcome(encode_outcome(errors.OperationTimeLimit("OPERATION_TIME_LIMIT", reset_at=9.0)))
    assert isinstance(held, errors.OperationTimeLimit) and held.reset_at == 9.0
    # anything unexpected travels as a transient transport error, never as a crash of the listener
    odd = decode_outcome(encode_outcome(KeyError("x")))
    assert isinstance(odd, errors.TransportError) and retries.classify(odd) == retries.Action.TRANSIENT


def _two_processes(settings: Settings, rclient: redis.Redis, portal: FakePortal) -> tuple[Runtime, Runtime]:
    """Two runtimes on one Redis, as two worker processes are (each with its own call pool identity)."""
    one = Runtime(settings, rclient, transport=httpx.MockTransport(portal))
    one.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    two = Runtime(settings, rclient, transport=httpx.MockTransport(portal))
    assert one.dispatcher.pool is not None and two.dispatcher.pool is not None
    assert one.dispatcher.pool.worker_id != two.dispatcher.pool.worker_id
    for rt in (one, two):  # a busy portal (a full batch of jobs unfinished pool-wide): calls go through the pool
        rt.dispatcher.pressure = busy
    return one, two


def busy(portal: str) -> tuple[int, int]:
    return 1000, 0


def _run_many(rt: Runtime, ids: range, out: dict[int, Any]) -> list[threading.Thread]:
    def one(i: int) -> None:
        try:
            out[i] = rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": i}, 10)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    return threads


def _message_ids(request: dict[str, Any]) -> set[int]:
    commands = request.get("cmd") or {"one": f"MESSAGE_ID={request.get('MESSAGE_ID')}"}
    return {int(m) for cmd in commands.values() for m in re.findall(r"MESSAGE_ID=(\d+)", cmd)}


def test_calls_of_two_processes_share_requests(settings: Settings, rclient: redis.Redis) -> None:
    portal = FakePortal()
    one, two = _two_processes(settings, rclient, portal)
    out: dict[int, Any] = {}
    threads = _run_many(one, range(1, 41), out) + _run_many(two, range(1001, 1041), out)
    for t in threads:
        t.join(30)
    assert len(out) == 80 and all(isinstance(r, CallResult) and r.result is True for r in out.values()), out
    sent = [_message_ids(r) for r in portal.requests]
    assert sorted(i for ids in sent for i in ids) == [*range(1, 41), *range(1001, 1041)]  # each call once
    # a request carries calls of both processes: one lane sent the other's jobs
    assert any(min(ids) < 1000 < max(ids) for ids in sent), sent
    assert len(portal.requests) <= 4
    assert rclient.llen(one.keys.calls("acme")) == 0


def test_a_call_the_other_process_sends_gets_its_typed_error(settings: Settings, rclient: redis.Redis) -> None:
    owner = CallPool(rclient, Keys(settings.key_prefix), "owner")
    sender = CallPool(rclient, Keys(settings.key_prefix), "sender")
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 7})
    owner.submit("acme", call)
    (taken,) = sender.take("acme", 10)
    assert taken.id == call.id and taken.remote
    sender.reply(taken, errors.OperationTimeLimit("OPERATION_TIME_LIMIT", "blocked", 429, reset_at=77.0))
    sender.flush()
    assert call.done.wait(5)
    assert isinstance(call.outcome, errors.OperationTimeLimit) and call.outcome.reset_at == 77.0
    assert call.taker == "sender"
    owner.done(call)


def _watching_lane(settings: Settings, rclient: redis.Redis, pool: CallPool) -> tuple[Runtime, Lane]:
    rt = Runtime(settings, rclient)
    return rt, Lane("acme", rt.dispatcher.wire, rt.dispatcher.config, pool)


def test_owner_gives_up_when_the_sender_dies(settings: Settings, rclient: redis.Redis) -> None:
    owner = CallPool(rclient, Keys(settings.key_prefix), "owner-2", alive_ttl=2.0)
    rt, lane = _watching_lane(settings, rclient, owner)
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 8})
    owner.submit("acme", call)
    # a worker that takes the call and dies at once: it told the owner, but has no heartbeat
    thief = CallPool(rclient, Keys(settings.key_prefix), "dead-worker")
    assert [c.id for c in thief.take("acme", 10)] == [call.id]
    assert not lane.cancel(call)  # not in the list any more: a sender has it
    started = time.monotonic()
    with pytest.raises(errors.TransportError, match="SENDER_LOST"):
        rt.dispatcher._await_outcome(lane, call)
    assert time.monotonic() - started < 5
    assert call.taker == "dead-worker"


def test_owner_gives_up_on_a_call_the_list_lost(settings: Settings, rclient: redis.Redis) -> None:
    owner = CallPool(rclient, Keys(settings.key_prefix), "owner-3", lost_after=1.0)
    rt, lane = _watching_lane(settings, rclient, owner)
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 9})
    owner.submit("acme", call)
    rclient.delete(Keys(settings.key_prefix).calls("acme"))  # e.g. Redis restarted without persistence
    assert not lane.cancel(call)
    with pytest.raises(errors.TransportError, match="CALL_LOST"):
        rt.dispatcher._await_outcome(lane, call)


def test_a_waiting_call_is_withdrawn_and_deferred(settings: Settings, rclient: redis.Redis) -> None:
    owner = CallPool(rclient, Keys(settings.key_prefix), "owner-4")
    _rt, lane = _watching_lane(settings, rclient, owner)
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 10})
    owner.submit("acme", call)
    assert lane.cancel(call) and call.cancelled
    assert rclient.llen(Keys(settings.key_prefix).calls("acme")) == 0
    # nobody sends a withdrawn call: a sender that comes later finds nothing
    assert CallPool(rclient, Keys(settings.key_prefix), "late").take("acme", 10) == []


def test_owner_gives_up_when_a_live_senders_heartbeat_expires(settings: Settings, rclient: redis.Redis) -> None:
    """The sender had a real heartbeat when it took the call; it stops (its process dies), the key expires,
    and the owner retries the job instead of waiting for an answer that will never come."""
    owner = CallPool(rclient, Keys(settings.key_prefix), "owner-5", alive_ttl=2.0)
    rt, lane = _watching_lane(settings, rclient, owner)
    sender = CallPool(rclient, Keys(settings.key_prefix), "sender-5", alive_ttl=1.0)
    sender.submit("elsewhere", Call("im.dialog.unread", {"DIALOG_ID": "chat9", "MESSAGE_ID": 1}))  # beating now
    assert owner.alive("sender-5")
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 11})
    owner.submit("acme", call)
    assert [c.id for c in sender.take("acme", 10)] == [call.id]
    sender.close()  # its heartbeat stops with it
    started = time.monotonic()
    with pytest.raises(errors.TransportError, match="SENDER_LOST"):
        rt.dispatcher._await_outcome(lane, call)
    assert time.monotonic() - started < 10
    assert call.taker == "sender-5"


class HeldPortal(FakePortal):
    """A FakePortal whose answers wait until `release` is set; `arrived` is set by the first request."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.release = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrived.set()
        assert self.release.wait(30), "the test never released the portal"
        return super().__call__(request)


def test_a_stopping_worker_answers_the_other_workers_calls_it_is_sending(
    settings: Settings, rclient: redis.Redis
) -> None:
    """A stopping worker's lane finishes the request on the wire and delivers the answers of the other
    worker's calls in it (instead of exiting and leaving them to SENDER_LOST, a retry and a second apply),
    and takes no more of them."""
    portal = HeldPortal()
    stopping = Runtime(settings, rclient, transport=httpx.MockTransport(portal))
    stopping.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    other = CallPool(rclient, Keys(settings.key_prefix), "other-worker")
    theirs = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 2001})
    other.submit("acme", theirs)
    out: dict[int, Any] = {}
    (own,) = _run_many(stopping, range(1, 2), out)  # its own job: its lane takes both calls
    try:
        assert portal.arrived.wait(10)
        lane = stopping.dispatcher.lanes()[("acme", True)]  # (another worker's call waits in the pool)
        assert not lane.drain(0.2)  # the request is on the wire: the drain waits for it
    finally:
        portal.release.set()
    assert stopping.dispatcher.drain(10) == []
    # its answer was sent before the drain ended (the owner's listener then takes it in)
    assert theirs.done.wait(10) and isinstance(theirs.outcome, CallResult)
    assert theirs.taker == stopping.dispatcher.pool.worker_id  # type: ignore[union-attr]
    own.join(10)
    assert isinstance(out[1], CallResult)
    later = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 2002})
    other.submit("acme", later)
    assert lane._take() == []  # the lane is closed: it takes no other worker's call
    assert rclient.llen(Keys(settings.key_prefix).calls("acme")) == 1
    other.close()


def test_a_quiet_portals_call_stays_in_its_process_and_a_busy_portals_goes_through_the_pool(
    settings: Settings, rclient: redis.Redis
) -> None:
    """The pool lets any worker's request carry any worker's calls: worth its round trips for a portal with
    more jobs than a request carries, not for a quiet one (whose call would travel alone anyway)."""
    portal = FakePortal()
    rt = Runtime(settings, rclient, transport=httpx.MockTransport(portal))
    rt.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    assert rt.dispatcher.pooled("acme") is False  # nothing unfinished, nothing waiting
    result = rt.dispatcher.run("acme", "im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 1}, 5)
    assert isinstance(result, CallResult)
    assert list(rt.dispatcher.lanes()) == [("acme", False)]
    other = CallPool(rclient, Keys(settings.key_prefix), "other-worker")
    other.submit("acme", Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 2}))
    assert rt.dispatcher.pooled("acme") is True  # another worker's call waits: ours may share its request
    rclient.delete(rt.keys.calls("acme"))
    assert rt.dispatcher.pooled("acme") is False
    rt.dispatcher.pressure = lambda key: (settings.batch_max, 0)  # a full batch unfinished pool-wide
    assert rt.dispatcher.pooled("acme") is True
    other.close()
    rt.close()


class FlakyRedis:
    """A Redis client that refuses the commands named in `down` (ConnectionError), as during an outage."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.down: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name in self.down:
            raise redis.ConnectionError(f"{name}: Redis is down (a test's outage)")
        if name == "pipeline":
            return lambda **kw: FlakyPipeline(self, self.client.pipeline(**kw))
        return getattr(self.client, name)


class FlakyPipeline:
    def __init__(self, flaky: FlakyRedis, pipe: Any) -> None:
        self.flaky = flaky
        self.pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def execute(self) -> Any:
        if "execute" in self.flaky.down:
            raise redis.ConnectionError("execute: Redis is down (a test's outage)")
        return self.pipe.execute()


def test_an_outcome_redis_refused_reaches_its_owner_once_redis_answers(
    settings: Settings, rclient: redis.Redis
) -> None:
    """On RabbitMQ jobs keep running through a Redis outage: a sender whose answer for another worker's call
    meets Redis down keeps it and sends it once Redis answers (its listener does, if its lane has nothing
    more to send), instead of leaving the owner to watch a live sender until the in-flight bound."""
    keys = Keys(settings.key_prefix)
    owner = CallPool(rclient, keys, "owner-6")
    flaky = FlakyRedis(rclient)
    sender = CallPool(flaky, keys, "sender-6")  # type: ignore[arg-type]
    sender.submit("elsewhere", Call("im.dialog.unread", {"DIALOG_ID": "chat9", "MESSAGE_ID": 1}))  # listening
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 12})
    owner.submit("acme", call)
    (theirs,) = sender.take("acme", 10)
    flaky.down.add("execute")
    sender.reply(theirs, CallResult(True, None))
    with pytest.raises(redis.ConnectionError):
        sender.flush()
    assert not call.done.wait(1.0)
    flaky.down.clear()  # Redis is back; nobody calls flush: the sender's listener sends what it kept
    assert call.done.wait(5) and isinstance(call.outcome, CallResult)
    assert call.taker == "sender-6"
    sender.close()
    owner.close()


def test_calls_popped_as_redis_fails_are_still_sent(settings: Settings, rclient: redis.Redis) -> None:
    """Redis fails between the pop of calls and the notices to their owners: the sender keeps the calls (they
    are no longer in the list) and tells their owners once Redis answers."""
    keys = Keys(settings.key_prefix)
    owner = CallPool(rclient, keys, "owner-7")
    call = Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": 13})
    owner.submit("acme", call)
    flaky = FlakyRedis(rclient)
    sender = CallPool(flaky, keys, "sender-7")  # type: ignore[arg-type]
    flaky.down |= {"exists", "execute"}  # the owner's heartbeat and the notices
    assert [c.id for c in sender.take("acme", 10)] == [call.id]
    assert call.taker is None
    flaky.down.clear()
    sender.flush()
    assert _until(lambda: call.taker == "sender-7")
    sender.close()
    owner.close()


def test_a_claim_takes_a_whole_batch_or_nothing(settings: Settings, rclient: redis.Redis) -> None:
    """Lanes waiting together for a full batch each take their own: a claim pops only once the list holds one."""
    keys = Keys(settings.key_prefix)
    owner = CallPool(rclient, keys, "owner-8")
    sender = CallPool(rclient, keys, "sender-8")
    calls = [Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": i}) for i in range(1, 61)]
    for call in calls[:30]:
        owner.submit("acme", call)
    assert sender.claim("acme", 50, 50) == ([], 30)
    assert rclient.llen(keys.calls("acme")) == 30  # nothing taken, no owner told
    for call in calls[30:]:
        owner.submit("acme", call)
    taken, popped = sender.claim("acme", 50, 50)
    assert popped == 50 and [c.id for c in taken] == [c.id for c in calls[:50]]
    assert rclient.llen(keys.calls("acme")) == 10
    assert _until(lambda: all(c.taker == "sender-8" for c in calls[:50]))
    assert all(c.taker is None for c in calls[50:])
    sender.close()
    owner.close()


def _finish(lane: Lane, calls: list[Call]) -> None:
    """Every call answered; their owner releases them, and the lane's sender thread ends."""
    for call in calls:
        assert call.done.wait(15) and isinstance(call.outcome, CallResult), call.outcome
        lane.release(call)
    assert _until(lambda: lane._thread is None or not lane._thread.is_alive())


class StagedAtBooking:
    """The runtime's limiter, noting how many calls a lane held when it booked its slot."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.lane: Lane | None = None
        self.staged: list[int] = []

    def reserve(self, portal: str, limits: Limits, max_wait: float) -> Permit:
        assert self.lane is not None
        self.staged.append(len(self.lane._queue))
        return self.rt.limiter.reserve(portal, limits, max_wait)


def _dribble(lanes: list[Lane], count: int, every: float, first_id: int = 1) -> list[list[Call]]:
    """Calls arriving 10 at a time, `every` s apart (the feed's pace, not a wait for an outcome), each group
    submitted through the next lane in turn; the calls of each lane."""
    mine: list[list[Call]] = [[] for _ in lanes]
    for n, start in enumerate(range(first_id, first_id + count, 10)):
        group = [Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": i}) for i in range(start, start + 10)]
        for call in group:
            lanes[n % len(lanes)].submit(call)
        mine[n % len(lanes)] += group
        time.sleep(every)
    return mine


def test_a_pool_lane_books_its_slot_once_it_holds_a_whole_batch(settings: Settings, rclient: redis.Redis) -> None:
    """A backlog's first calls arrive over some time: a pool lane waits for a whole batch and books then, so
    that the bucket's burst goes in full requests (booking first sent the 10 calls there were when the slot's
    slack ran out), and its slot is sent at its time (a slot sent late is not safe with other lanes' sent on
    time)."""
    portal = FakePortal()
    rt = make_runtime(settings, rclient, portal)
    spy = StagedAtBooking(rt)
    wire = dataclasses.replace(rt.dispatcher.wire, limiter=spy, backlog=lambda _: 1000)  # type: ignore[arg-type]
    lane = spy.lane = Lane("acme", wire, LaneConfig(fill_max=5.0, gather_max=1.0), rt.dispatcher.pool)
    (calls,) = _dribble([lane], 50, 0.2)
    _finish(lane, calls)
    assert [len(r["cmd"]) for r in portal.requests] == [50]
    assert spy.staged == [50]


def test_lanes_of_two_workers_waiting_together_each_send_a_whole_batch(
    settings: Settings, rclient: redis.Redis
) -> None:
    """Two workers' lanes wait for a batch while a backlog's calls arrive: each takes a whole one (reading the
    depth, both saw the same 50 and split them, as 50 and 10)."""
    portal = FakePortal()
    one, two = _two_processes(settings, rclient, portal)
    config = LaneConfig(fill_max=5.0, gather_max=1.0)
    lanes = [
        Lane("acme", dataclasses.replace(rt.dispatcher.wire, backlog=lambda _: 1000), config, rt.dispatcher.pool)
        for rt in (one, two)
    ]
    mine = _dribble(lanes, 100, 0.05)
    for lane, calls in zip(lanes, mine, strict=True):
        _finish(lane, calls)
    assert [len(r["cmd"]) for r in portal.requests] == [50, 50]
    assert sorted(i for r in portal.requests for i in _message_ids(r)) == list(range(1, 101))


def _until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
