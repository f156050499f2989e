"""A portal's pool-wide queue of calls: whichever worker gets the next slot sends every waiting call.

Packing in one process (`workers.delivery.lane`) fills a request with the calls that process holds.
With several worker processes each one books its own slots from the pool-wide limiter, so on a
rate-limited portal the processes take turns: a request carries only its own process's share of the
backlog, and a lone job waits for its own process's next turn (up to one slot per process away).
The call pool removes that bound: every process puts its calls for a rate-limited portal in one
Redis list, and the lane that holds a slot takes up to a full batch from it, whoever holds the jobs.
Outcomes go back to the owning process through its reply list.

Each job is still its own Celery message, acknowledged by its owner after its own outcome, so the
at-least-once contract is unchanged. What can go wrong between processes, and what then happens:

* the owner dies: once its heartbeat has expired its calls are dropped by whoever takes them (the
  broker redelivers its jobs); sent before that, a call is applied twice (harmless, as after any
  crash); replies to it expire;
* the sender dies after taking calls: owners learn who took them ("taken" notices) and watch that
  worker's heartbeat key; when it expires the job fails as transient and is retried;
* the list itself is lost (a Redis restart without persistence): an owner that can neither withdraw
  its call nor hear that it was taken gives up after `lost_after` seconds and retries the job;
* Redis is down when a sender answers (jobs keep running through a Redis outage on RabbitMQ): its
  "taken" notices and outcomes stay queued and go once Redis answers again, by the next flush or the
  listener's; dropped, they would leave owners watching a live sender for an answer that never comes,
  until the in-flight bound (tests/faults/test_redis_restart.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from workers import errors
from workers.bitrix.client import CallResult
from workers.delivery.calls import Call, MergeRule
from workers.delivery.ordering import Order
from workers.keys import Keys

log = logging.getLogger(__name__)

#: Pop ARGV[2] calls from the list KEYS[1] if it holds at least ARGV[1]; else answer its length.
_CLAIM = """
local n = redis.call('LLEN', KEYS[1])
if n < tonumber(ARGV[1]) then return n end
return redis.call('LPOP', KEYS[1], ARGV[2])
"""

#: The typed errors an outcome can carry between processes (anything else travels as a TransportError).
_ERRORS: dict[str, type[errors.RestError]] = {
    cls.__name__: cls
    for cls in (
        errors.RestError,
        errors.QueryLimitExceeded,
        errors.OperationTimeLimit,
        errors.TokenExpired,
        errors.AuthLost,
        errors.ServerError,
        errors.ResultFailed,
    )
}
_TRANSPORT: dict[str, type[errors.TransportError]] = {
    cls.__name__: cls for cls in (errors.TransportError, errors.OAuthUnavailable)
}


def encode_outcome(outcome: CallResult | BaseException) -> dict[str, Any]:
    """An outcome as JSON-safe data (the inverse of `decode_outcome`)."""
    if isinstance(outcome, CallResult):
        return {"result": outcome.result, "time": outcome.time}
    if isinstance(outcome, errors.Deferred):
        return {"error": "Deferred", "delay": outcome.delay, "why": outcome.why}
    if isinstance(outcome, errors.Superseded):
        return {"error": "Superseded", "by": outcome.by}
    if isinstance(outcome, errors.RestError):
        data = {"error": type(outcome).__name__, "code": outcome.code, "description": outcome.description}
        extra = dict(outcome.extra)
        if isinstance(outcome, errors.OperationTimeLimit) and outcome.reset_at is not None:
            extra["reset_at"] = outcome.reset_at
        return {**data, "status": outcome.status, "extra": extra}
    if isinstance(outcome, errors.TransportError):
        return {"error": type(outcome).__name__, "code": outcome.code, "description": outcome.description}
    return {"error": "TransportError", "code": "LANE_ERROR", "description": f"{type(outcome).__name__}: {outcome}"}


def decode_outcome(data: Mapping[str, Any]) -> CallResult | BaseException:
    kind = data.get("error")
    if kind is None:
        return CallResult(data.get("result"), data.get("time"))
    if kind == "Deferred":
        return errors.Deferred(float(data["delay"]), str(data["why"]))
    if kind == "Superseded":
        return errors.Superseded(str(data["by"]))
    if kind in _ERRORS:
        return _ERRORS[kind](data["code"], data.get("description", ""), data.get("status"), **data.get("extra", {}))
    cls = _TRANSPORT.get(kind, errors.TransportError)
    return cls(str(data.get("code", "LANE_ERROR")), str(data.get("description", "")))


class CallPool:
    """The shared call lists of one Redis, as seen by one worker process (`worker_id`).

    Parameters:
        client: the Redis that every worker of the pool shares.
        keys: the Redis key layout (`B24Q_KEY_PREFIX`).
        alive_ttl: seconds a worker's heartbeat key lives; a sender silent for longer is taken for dead.
        lost_after: seconds an owner waits to hear that a call it could not withdraw was taken.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str | None = None,
        alive_ttl: float = 3.0,
        lost_after: float = 15.0,
        reply_ttl: int = 120,
    ) -> None:
        self._redis = client
        self._keys = keys
        self.worker_id = worker_id or uuid.uuid4().hex[:16]
        self.alive_ttl = alive_ttl
        self.lost_after = lost_after
        self.reply_ttl = reply_ttl
        self._pending: dict[str, Call] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._outbox: dict[str, list[tuple[float, str]]] = defaultdict(list)  # owner -> (queued at, reply)
        self._outbox_lock = threading.Lock()
        self._alive_cache: dict[str, float] = {}  # worker -> when it was last seen alive (monotonic)
        self._beat_at = float("-inf")
        self._closed = threading.Event()
        self._claim = client.register_script(_CLAIM)

    # -- owner side --------------------------------------------------------------------------

    def submit(self, portal: str, call: Call) -> None:
        """Put a call in the portal's list (and start listening for outcomes, once per process). Our
        heartbeat is fresh before the call is visible: a sender never takes it for a dead worker's."""
        self._ensure_listener()
        if time.monotonic() - self._beat_at > self.alive_ttl / 3:
            self._heartbeat()
        call.id = call.id or uuid.uuid4().hex
        call.owner = self.worker_id
        with self._lock:
            self._pending[call.id] = call
        try:
            self._redis.rpush(self._keys.calls(portal), self._entry(call))
        except BaseException:
            self.done(call)
            raise

    def withdraw(self, portal: str, call: Call) -> bool:
        """Take back a call nobody has taken yet; False if a sender has it (or the list lost it)."""
        return bool(self._redis.lrem(self._keys.calls(portal), 1, self._entry(call)))

    def done(self, call: Call) -> None:
        """The owner has its outcome (or gave up): forget the call."""
        with self._lock:
            self._pending.pop(call.id, None)

    def alive(self, worker: str) -> bool:
        """Whether `worker`'s heartbeat is fresh. A live answer is cached briefly (many calls watch one
        worker); a dead one never is, so a worker that has just started is seen at once."""
        if worker == self.worker_id:
            return True
        now = time.monotonic()
        seen = self._alive_cache.get(worker)
        if seen is not None and now - seen < self.alive_ttl / 4:
            return True
        alive = bool(self._redis.exists(self._keys.alive(worker)))
        if alive:
            self._alive_cache[worker] = now
        else:
            self._alive_cache.pop(worker, None)
        return alive

    def close(self) -> None:
        """Stop the listener (and the heartbeat with it); calls of this process are no longer answered."""
        self._closed.set()
        listener = self._listener
        if listener is not None:
            listener.join(timeout=self.alive_ttl)

    # -- sender side -------------------------------------------------------------------------

    def depth(self, portal: str) -> int:
        return int(self._redis.llen(self._keys.calls(portal)))

    def read_depth(self, portal: str, pipe: Any) -> None:
        """Queue the read of `depth(portal)` in a pipeline."""
        pipe.llen(self._keys.calls(portal))

    def take(self, portal: str, count: int) -> list[Call]:
        """Pop up to `count` calls; tell their owners who has them. Calls of a worker that died are
        dropped: the broker redelivers its jobs, so sending them would only apply them twice."""
        raw = self._redis.lpop(self._keys.calls(portal), count) if count > 0 else None
        return self._taken(raw or ())

    def claim(self, portal: str, need: int, count: int) -> tuple[list[Call], int]:
        """Pop up to `count` calls, but only once the list holds at least `need` (one check-and-pop in Redis):
        of lanes waiting together for a full batch, one takes each batch, instead of all of them splitting the
        first one. Returns the calls taken (none while the list is short) and how many the list held then (when
        short) or how many were popped."""
        answer = self._claim(keys=[self._keys.calls(portal)], args=[max(1, need), max(1, count)])
        if isinstance(answer, int):
            return [], answer
        return self._taken(answer), len(answer)

    def _taken(self, raw: Iterable[bytes]) -> list[Call]:
        calls: list[Call] = []
        for item in raw:
            data = json.loads(item)
            if not self._owner_alive(data["owner"]):
                continue
            with self._lock:
                own = self._pending.get(data["id"]) if data["owner"] == self.worker_id else None
            if own is not None:
                own.taker = self.worker_id
                calls.append(own)
                continue
            if data["owner"] == self.worker_id:
                continue  # its owner here gave up on it already (and retries the job)
            call = Call(
                data["method"],
                data["params"],
                MergeRule.from_list(data.get("merge")),
                Order.from_list(data.get("order")),
                solo=bool(data.get("solo")),
                id=data["id"],
                owner=data["owner"],
                taker=self.worker_id,
                remote=True,
            )
            self._queue_reply(call.owner, {"id": call.id, "taken": self.worker_id})
            calls.append(call)
        # once popped, the calls are this sender's to send: Redis failing now must not lose them (their
        # notices stay queued for the next flush)
        try:
            self.flush()
        except redis.RedisError as exc:
            log.warning("call pool: notices of taken calls not delivered yet (%s)", exc)
        return calls

    def _owner_alive(self, owner: str) -> bool:
        """`alive`, for a call already popped: when Redis cannot tell, the call is sent (a dead owner's call
        applied twice is harmless; a live owner's dropped would wait `lost_after` for nothing)."""
        try:
            return self.alive(owner)
        except redis.RedisError:
            return True

    def put_back(self, portal: str, calls: list[Call]) -> None:
        """Return calls that did not fit in the request to the head of the list, in order."""
        if calls:
            self._redis.lpush(self._keys.calls(portal), *[self._entry(c) for c in reversed(calls)])

    def reply(self, call: Call, outcome: CallResult | BaseException) -> None:
        """Queue a taken call's outcome for its owner (sent by `flush`)."""
        self._queue_reply(call.owner, {"id": call.id, "outcome": encode_outcome(outcome)})

    def flush(self) -> None:
        """Send the queued replies: one RPUSH per owner. When Redis fails, they stay queued (ahead of newer
        ones) for the next flush, until `reply_ttl` has passed (their owners have given up by then; a reply
        sent twice, as by a pipeline that failed half-way, is ignored by its owner)."""
        with self._outbox_lock:
            outbox, self._outbox = self._outbox, defaultdict(list)
        oldest = time.monotonic() - self.reply_ttl
        outbox = {owner: kept for owner, items in outbox.items() if (kept := [i for i in items if i[0] > oldest])}
        if not outbox:
            return
        pipe = self._redis.pipeline(transaction=False)
        for owner, items in outbox.items():
            key = self._keys.replies(owner)
            pipe.rpush(key, *[text for _, text in items])
            pipe.expire(key, self.reply_ttl)
        try:
            pipe.execute()
        except BaseException:
            with self._outbox_lock:
                for owner, items in outbox.items():
                    self._outbox[owner][:0] = items
            raise

    def _queue_reply(self, owner: str, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"), default=str)
        with self._outbox_lock:
            self._outbox[owner].append((time.monotonic(), text))

    @staticmethod
    def _entry(call: Call) -> str:
        # the same call always encodes to the same text: LREM finds it by value
        return json.dumps(
            {
                "id": call.id,
                "owner": call.owner,
                "method": call.method,
                "params": call.params,
                "solo": call.solo,
                "merge": call.merge.as_list() if call.merge is not None else None,
                "order": call.order.as_list() if call.order is not None else None,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    # -- the listener: outcomes and "taken" notices for this process, its heartbeat, held-back replies --

    def _ensure_listener(self) -> None:
        if self._listener is not None and self._listener.is_alive():
            return
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._heartbeat()
                self._listener = threading.Thread(target=self._listen, name="b24q-callpool", daemon=True)
                self._listener.start()

    def _heartbeat(self) -> None:
        started = time.monotonic()
        self._redis.set(self._keys.alive(self.worker_id), "1", px=int(self.alive_ttl * 1000))
        self._beat_at = started

    def _listen(self) -> None:
        key = self._keys.replies(self.worker_id)
        while not self._closed.is_set():
            try:
                if time.monotonic() - self._beat_at >= self.alive_ttl / 6:
                    self._heartbeat()
                if self._outbox:  # replies a Redis outage held back: their lane may not flush again soon
                    self.flush()
                first = self._redis.blpop([key], timeout=self.alive_ttl / 6)
                if first is None:
                    continue
                items = [first[1], *(self._redis.lpop(key, 500) or ())]
                for item in items:
                    self._deliver(json.loads(item))
            except redis.RedisError as exc:
                log.warning("call pool listener: %s; retrying", exc)
                self._closed.wait(0.5)
            except Exception:  # a bad message must not stop outcomes from arriving
                log.exception("call pool listener: unexpected error")

    def _deliver(self, message: Mapping[str, Any]) -> None:
        with self._lock:
            call = self._pending.get(message.get("id", ""))
        if call is None:
            return  # its owner gave up on it (and retried the job)
        if "taken" in message:
            call.taker = message["taken"]
            call.sent = True
        elif "outcome" in message:
            call.resolve(decode_outcome(message["outcome"]))
