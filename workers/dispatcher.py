"""Packing: jobs for the same portal that are ready together go out in one request.

Every worker thread running a job hands its call to the portal's `Lane` and waits for the outcome.
The lane's sender thread reserves a slot from the pool-wide limiter, and while it waits for that
slot more calls arrive, so each slot carries up to 50 of them in one `batch` (one unit of the
portal's bucket). Under light load the slot is free at once and a call goes out after a few
milliseconds of gathering; under saturation every request is a full batch. That is how a pool
reaches rate x 50 jobs per second per portal.

Each job stays its own Celery task and is acknowledged only after its own outcome, so packing does
not widen the window in which a crash loses work. Whole-request trouble is handled here, once for
all the calls in it: an expired token is refreshed (once for the pool) and the request repeated;
a 503 sets the limiter to full and the calls wait for the next slot. Everything else is returned to
each job for the pipeline to classify.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.callpool import CallPool
from workers.client import CallResult, RestClient
from workers.errors import (
    Action,
    AuthLost,
    B24QError,
    OperationTimeLimit,
    QueryLimitExceeded,
    RestError,
    TokenExpired,
    TransportError,
)
from workers.observe import events
from workers.operating import OperatingHolds
from workers.portals import Portal
from workers.ratelimit import Limits, RateLimiter
from workers.tokens import TokenKeeper

log = logging.getLogger(__name__)


class Deferred(B24QError):
    """Flow control: the call could not go out soon enough; retry the job in `delay` seconds."""

    def __init__(self, delay: float, why: str) -> None:
        self.delay = delay
        self.why = why
        super().__init__(f"deferred {delay:.1f}s: {why}")

    action = Action.FLOW


@dataclass(eq=False)  # identity: a queue removes this call, not one with equal fields
class Call:
    """One job's call waiting in a lane."""

    method: str
    params: Mapping[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: CallResult | BaseException | None = None
    sent: bool = False
    cancelled: bool = False
    solo: bool = False  # never merged again (its merged call failed; it goes alone to learn its own outcome)
    # in a pool-wide lane (workers.callpool): the call's id, the worker that holds its job, the worker
    # sending it, and for a call another worker holds, the pool its outcome goes back through
    id: str = ""
    owner: str = ""
    taker: str | None = None
    relay: CallPool | None = field(default=None, repr=False)

    def resolve(self, outcome: CallResult | BaseException) -> None:
        self.outcome = outcome
        self.done.set()
        if self.relay is not None:
            self.relay.reply(self, outcome)


#: Methods whose calls for the same key can share one call: key params, and the list param they merge.
MERGEABLE: dict[str, tuple[tuple[str, ...], str]] = {
    "imconnector.send.status.delivery": (("CONNECTOR", "LINE"), "MESSAGES"),
}


def merge_key(call: Call) -> tuple[Any, ...] | None:
    rule = MERGEABLE.get(call.method)
    if rule is None or call.solo:
        return None
    return (call.method, *(call.params.get(k) for k in rule[0]))


def merged_size(call: Call) -> int:
    rule = MERGEABLE.get(call.method)
    return len(call.params.get(rule[1]) or ()) if rule else 1


@dataclass
class Command:
    """One command of a request: a call, or several merged calls that share it."""

    method: str
    params: Mapping[str, Any]
    members: list[Call]


def build_commands(calls: list[Call]) -> list[Command]:
    """Group mergeable calls (same method and key, in arrival order); others stay one command each."""
    commands: list[Command] = []
    open_groups: dict[tuple[Any, ...], Command] = {}
    for call in calls:
        key = merge_key(call)
        group = open_groups.get(key) if key is not None else None
        if group is not None:
            group.members.append(call)
            continue
        command = Command(call.method, call.params, [call])
        commands.append(command)
        if key is not None:
            open_groups[key] = command
    for command in commands:
        if len(command.members) > 1:
            list_param = MERGEABLE[command.method][1]
            items = [item for member in command.members for item in member.params[list_param]]
            command.params = {**command.members[0].params, list_param: items}
    return commands


@dataclass
class LaneStats:
    requests: int = 0
    batches: int = 0
    calls: int = 0
    refused_503: int = 0
    refreshes: int = 0


class Lane:
    """One portal's queue of calls and the thread that sends them.

    With a `pool` (a rate-limited portal, see `workers.callpool`), the calls of every worker process
    wait in one Redis list and the local queue only stages what this lane has taken from it; the lane
    runs while this process has calls of its own waiting."""

    def __init__(self, dispatcher: Dispatcher, portal_key: str, pool: CallPool | None = None) -> None:
        self.key = portal_key
        self._d = dispatcher
        self.pool = pool
        self._cond = threading.Condition()
        self._queue: deque[Call] = deque()
        self._own = 0  # calls of this process submitted through the pool and not yet finished
        self._thread: threading.Thread | None = None
        self.stats = LaneStats()

    def submit(self, call: Call) -> None:
        if self.pool is not None:
            self.pool.submit(self.key, call)
        with self._cond:
            if self.pool is not None:
                self._own += 1
            else:
                self._queue.append(call)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"b24q-lane-{self.key}", daemon=True)
                self._thread.start()
            self._cond.notify()

    def release(self, call: Call) -> None:
        """The owner is done with a call submitted through the pool."""
        if self.pool is not None:
            self.pool.done(call)
            with self._cond:
                self._own -= 1

    def cancel(self, call: Call) -> bool:
        """Withdraw a call that has not been sent; False if it is already on the wire (or a sender of
        the pool has it)."""
        with self._cond:
            if call.sent or call.done.is_set():
                return False
            if call in self._queue or self.pool is None:
                call.cancelled = True
                with contextlib.suppress(ValueError):
                    self._queue.remove(call)
                return True
        if self.pool.withdraw(self.key, call):
            call.cancelled = True
            return True
        return False

    def depth(self) -> int:
        with self._cond:
            staged = len(self._queue)
        return staged + (self.pool.depth(self.key) if self.pool is not None else 0)

    # -- sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        d = self._d
        while True:
            if not self._wait_for_work(d.idle_exit):
                return
            try:
                self._gather()  # (reads the pool's depth: Redis may fail here too)
                self._send_round()
            except Exception as exc:  # never let the lane die with calls in it
                log.exception("lane %s: unexpected error", self.key)
                self._fail_all(exc)
            finally:
                self._flush()

    def _wait_for_work(self, idle_exit: float) -> bool:
        """Block until there is something to send; False (the thread ends) after `idle_exit` idle s."""
        while True:
            with self._cond:
                if self._queue:
                    return True
                if self.pool is None or self._own <= 0:
                    if not self._cond.wait_for(lambda: bool(self._queue) or self._own > 0, timeout=idle_exit):
                        self._thread = None
                        return False
                    if self._queue or self.pool is None:
                        return True
            # calls of ours are in the pool (or with another sender): help while the list holds any
            try:
                if self.pool.depth(self.key) > 0:
                    return True
            except Exception as exc:  # Redis trouble: the owners' own waits handle it
                log.warning("lane %s: call pool unavailable (%s)", self.key, exc)
                time.sleep(0.5)
            with self._cond:
                self._cond.wait(0.1)  # our calls are with another sender; a new one of ours wakes us at once

    def _flush(self) -> None:
        if self.pool is not None:
            try:
                self.pool.flush()
            except Exception as exc:  # the owners see the sender alive but silent: their bound applies
                log.warning("lane %s: replies not delivered (%s)", self.key, exc)

    def _gather(self) -> None:
        """Let calls that arrive together share the request: wait one window, and another while the
        batch is still growing (a backlog arriving from the broker), up to `gather_max`. A lone call
        under light load sees no growth and leaves after one window; a flood fills its batches from the
        first request instead of spending the portal's burst on small ones."""
        d = self._d
        if d.gather <= 0:
            return
        deadline = time.monotonic() + d.gather_max
        seen = self.depth()
        # more of this portal's jobs are known to be on their way (its pool-wide backlog): keep gathering
        # even through a quiet window, rather than spend a slot of the burst on a few calls
        # (the backlog counts calls already here and jobs on the wire too: only a full batch more counts)
        expecting = seen < d.batch_max and d.backlog(self.key) >= seen + d.batch_max
        while seen < d.batch_max:
            time.sleep(d.gather)
            depth = self.depth()
            if (depth == seen and not expecting) or time.monotonic() >= deadline:
                return
            seen = depth

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            calls = list(self._queue)
            self._queue.clear()
        for call in calls:
            call.resolve(exc)

    def _take(self) -> list[Call]:
        """Up to `batch_max` commands' worth of calls; mergeable calls with the same key count as one
        command until their merged list reaches `merge_max` items."""
        d = self._d
        if self.pool is None:
            return self._take_staged()
        with self._cond:
            room = 2 * d.batch_max - len(self._queue)  # merging packs more than one call per command
        if room > 0:
            taken = self.pool.take(self.key, room)
            with self._cond:
                self._queue.extend(taken)
        calls = self._take_staged()
        with self._cond:
            surplus = list(self._queue)
            self._queue.clear()
        try:
            self.pool.put_back(self.key, surplus)  # others may send them before this lane's next slot
        except Exception as exc:  # then this lane keeps them and sends them itself
            log.warning("lane %s: could not return calls to the pool (%s)", self.key, exc)
            with self._cond:
                self._queue.extendleft(reversed(surplus))
        return calls

    def _take_staged(self) -> list[Call]:
        d = self._d
        with self._cond:
            calls: list[Call] = []
            commands = 0
            groups: dict[tuple[Any, ...], int] = {}
            while self._queue:
                call = self._queue[0]
                if call.cancelled:
                    self._queue.popleft()
                    continue
                key = merge_key(call)
                size = merged_size(call)
                joins = key is not None and key in groups and groups[key] + size <= d.merge_max
                if not joins and commands >= d.batch_max:
                    break
                self._queue.popleft()
                if joins:
                    groups[key] += size  # type: ignore[index]
                else:
                    commands += 1
                    if key is not None:
                        groups[key] = size
                call.sent = True
                calls.append(call)
            return calls

    def _put_back(self, calls: list[Call]) -> None:
        with self._cond:
            for call in reversed(calls):
                call.sent = False
                self._queue.appendleft(call)

    def _send_round(self) -> None:
        d = self._d
        portal = d.portal(self.key)
        limits = d.limits(portal)
        permit = d.limiter.reserve(self.key, limits, max_wait=d.max_reserve)
        if not permit.granted:
            time.sleep(min(permit.wait, d.max_reserve))
            return
        if permit.wait > 0:
            events.limiter_wait(self.key, permit.wait)
            time.sleep(permit.wait)
        calls = self._take()
        if not calls:
            return
        try:
            self._send_calls(portal, limits, calls)
        except Exception as exc:
            # whatever went wrong, no call taken from the queue is left without an outcome
            self._resolve([c for c in calls if not c.done.is_set()], exc)
            raise

    def _send_calls(self, portal: Portal, limits: Limits, calls: list[Call]) -> None:
        d = self._d
        held = d.holds.held_until(self.key, {c.method for c in calls})
        if held:
            now = time.time()
            for call in [c for c in calls if c.method in held]:
                call.resolve(Deferred(held[call.method] - now, f"{call.method} held by the operating limit"))
            calls = [c for c in calls if c.method not in held]
            if not calls:
                return
        self._send(portal, limits, calls)

    def _send(self, portal: Portal, limits: Limits, calls: list[Call], refreshed: int = 0) -> None:
        d = self._d
        commands = build_commands(calls) if d.merge_max > 1 else [Command(c.method, c.params, [c]) for c in calls]
        method = commands[0].method if len(commands) == 1 else "batch"
        started = time.monotonic()
        try:
            portal = d.tokens.usable(portal)  # refreshes only when the token is about to expire
            creds = portal.credentials()
            self.stats.requests += 1
            if len(commands) == 1:
                outcomes: list[CallResult | RestError] = [d.client.call(creds, commands[0].method, commands[0].params)]
            else:
                self.stats.batches += 1
                answer = d.client.batch(creds, {f"j{i}": (c.method, c.params) for i, c in enumerate(commands)})
                outcomes = [answer.results[f"j{i}"] for i in range(len(commands))]
        except (RestError, TransportError) as exc:
            events.rest_request(self.key, method, len(calls), exc.code, time.monotonic() - started)
            self._whole_request_failed(portal, limits, calls, refreshed, exc)
            return
        events.rest_request(self.key, method, len(calls), "ok", time.monotonic() - started)
        self.stats.calls += len(calls)
        split: list[Call] = []
        latest_time: dict[str, Mapping[str, Any]] = {}
        for command, outcome in zip(commands, outcomes, strict=True):
            if isinstance(outcome, CallResult) and outcome.time:
                latest_time[command.method] = outcome.time  # the last answer per method says it all
            elif isinstance(outcome, OperationTimeLimit):
                outcome.reset_at = d.holds.blocked(self.key, command.method)
                events.operating_hold(self.key, command.method, outcome.reset_at)
            if len(command.members) > 1 and not _merged_ok(outcome):
                # a merged call failed: each member goes alone, so that it gets its own outcome
                for member in command.members:
                    member.solo = True
                split.extend(command.members)
                continue
            for member in command.members:
                member.resolve(outcome)
        if split:
            self._put_back(split)
        for method, time_block in latest_time.items():
            until = d.holds.record(self.key, method, time_block)
            if until:
                events.operating_hold(self.key, method, until)

    def _whole_request_failed(
        self, portal: Portal, limits: Limits, calls: list[Call], refreshed: int, exc: RestError | TransportError
    ) -> None:
        """An error for the whole request: flow control and token refresh here, the rest to each job."""
        d = self._d
        if isinstance(exc, QueryLimitExceeded):
            self.stats.refused_503 += 1
            events.refused_503(self.key)
            if limits.our_rate <= 0:  # an "unlimited" portal limits after all: do not hammer it
                log.warning("portal %s answered QUERY_LIMIT_EXCEEDED but has no rate set; give it --rate", self.key)
                time.sleep(1.0)
            d.limiter.set_full(self.key, limits)
            self._put_back(calls)  # flow control: they go with the next slot
            return
        if isinstance(exc, TokenExpired) and portal.kind == "oauth" and refreshed < 2:
            self.stats.refreshes += 1
            try:
                fresh = d.tokens.refresh(self.key, portal.access_token)
            except (RestError, TransportError) as refresh_error:
                self._resolve(calls, refresh_error)
                return
            d.forget(self.key)
            # the repeated request takes a slot of its own
            permit = d.limiter.reserve(self.key, limits, max_wait=d.max_reserve)
            if permit.wait:
                time.sleep(permit.wait)
            self._send(fresh, limits, calls, refreshed + 1)
            return
        if isinstance(exc, TokenExpired):
            exc = AuthLost("TOKEN_REJECTED", "the portal refused a freshly refreshed token")
        if isinstance(exc, OperationTimeLimit):
            exc.reset_at = d.holds.blocked(self.key, calls[0].method)
            events.operating_hold(self.key, calls[0].method, exc.reset_at)
        self._resolve(calls, exc)

    @staticmethod
    def _resolve(calls: list[Call], outcome: BaseException) -> None:
        for call in calls:
            call.resolve(outcome)


def _merged_ok(outcome: CallResult | RestError) -> bool:
    return (
        isinstance(outcome, CallResult)
        and isinstance(outcome.result, Mapping)
        and outcome.result.get("SUCCESS") is True
    )


class Dispatcher:
    """All lanes of one worker process.

    Parameters:
        portal: loads a portal record by key (the registry's `get`, raising when unknown).
        limits: a portal's bucket parameters.
        max_reserve: the longest wait a lane books a slot for (keeps reservations short).
        gather: seconds a lane waits for companions when it has fewer than `batch_max` calls.
        gather_max: the longest it keeps gathering while calls keep arriving.
        merge_max: most items one merged call carries (1 turns merging off).
        backlog: a portal's pool-wide count of unfinished jobs (the ledger's), to know more are coming.
        pool: the pool-wide call lists (`workers.callpool`); used for portals whose rate is at most
            `share_max_rate` requests/s, so that every request carries calls from any worker.
    """

    def __init__(
        self,
        client: RestClient,
        limiter: RateLimiter,
        holds: OperatingHolds,
        tokens: TokenKeeper,
        portal: Callable[[str], Portal],
        limits: Callable[[Portal], Limits],
        batch_max: int = 50,
        gather: float = 0.005,
        gather_max: float = 0.25,
        merge_max: int = 50,
        backlog: Callable[[str], int] = lambda portal: 0,
        max_reserve: float = 5.0,
        idle_exit: float = 30.0,
        in_flight_timeout: float = 300.0,
        pool: CallPool | None = None,
        share_max_rate: float = 0.0,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.holds = holds
        self.tokens = tokens
        self.portal = portal
        self.limits = limits
        self.batch_max = batch_max
        self.gather = gather
        self.gather_max = gather_max
        self.merge_max = merge_max
        self.backlog = backlog
        self.max_reserve = max_reserve
        self.idle_exit = idle_exit
        self.in_flight_timeout = in_flight_timeout
        self.pool = pool
        self.share_max_rate = share_max_rate
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()

    def lane(self, portal_key: str) -> Lane:
        with self._lock:
            lane = self._lanes.get(portal_key)
        if lane is None:
            pool = None
            if self.pool is not None and self.share_max_rate > 0:
                rate = self.limits(self.portal(portal_key)).our_rate
                pool = self.pool if 0 < rate <= self.share_max_rate else None
            with self._lock:
                lane = self._lanes.setdefault(portal_key, Lane(self, portal_key, pool))
        return lane

    def run(self, portal_key: str, method: str, params: Mapping[str, Any], wait: float) -> CallResult:
        """Send one call through its portal's lane; raise what it got, or `Deferred` after `wait` s."""
        lane = self.lane(portal_key)
        call = Call(method, params)
        lane.submit(call)
        try:
            if not call.done.wait(wait) and lane.cancel(call):
                # still queued: free the worker slot, come back when the backlog ahead has gone out
                ahead = lane.depth()
                portal = self.portal(portal_key)
                limits = self.limits(portal)
                delay = (ahead / self.batch_max + 1) / max(limits.our_rate, 0.1)
                raise Deferred(delay, "portal busy: waited for a slot longer than permit_wait")
            self._await_outcome(lane, call)
        finally:
            lane.release(call)
        if isinstance(call.outcome, BaseException):
            raise call.outcome
        assert call.outcome is not None
        return call.outcome

    def _await_outcome(self, lane: Lane, call: Call) -> None:
        """Wait for a sent call. Locally the HTTP timeouts bound this (the bound here only guards against
        a bug); a call another worker sends is watched: its sender's heartbeat must stay fresh."""
        pool = lane.pool
        if pool is None:
            if not call.done.wait(self.in_flight_timeout):
                raise TransportError("LANE_TIMEOUT", "no outcome for a sent call; retried as transient")
            return
        started = time.monotonic()
        while not call.done.wait(0.5):
            waited = time.monotonic() - started
            if waited > self.in_flight_timeout:
                raise TransportError("LANE_TIMEOUT", "no outcome for a sent call; retried as transient")
            if call.taker is None:
                if waited > pool.lost_after:
                    raise TransportError("CALL_LOST", "the call left the portal's queue without a sender")
            elif not pool.alive(call.taker):
                raise TransportError("SENDER_LOST", "the worker sending the call stopped before its outcome")

    def forget(self, portal_key: str) -> None:
        """Drop any cached copy of the portal's record (its tokens changed)."""
        forget = getattr(self.portal, "forget", None)
        if forget is not None:
            forget(portal_key)

    def lanes(self) -> dict[str, Lane]:
        with self._lock:
            return dict(self._lanes)
