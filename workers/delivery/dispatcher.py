"""The dispatcher: this process's lanes, one per portal, and the wait of a job for its call's outcome; and
the one-off calls made with an event's own token (`once`: `workers.delivery.oneoff`).

Each job stays its own Celery task and is acknowledged only after its own outcome, so packing does not
widen the window in which a crash loses work. A call for a busy rate-limited portal (rate at most
`share_max_rate`, and a full batch of its jobs unfinished pool-wide, or calls of other workers already
waiting in the pool) goes through the pool-wide call queue, so that any worker's lane holding a slot can
send it; the job then watches the sender's heartbeat while it waits. A quiet portal's call stays in this
process: packing across processes gains nothing for it, and the pool's round trips and hand-offs were most
of what a quiet portal's job cost (bench.run scale).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from workers.bitrix.client import CallResult
from workers.delivery.callpool import CallPool
from workers.delivery.calls import Call, Finish, MergeRule
from workers.delivery.lane import Lane
from workers.delivery.oneoff import OneOffCalls
from workers.delivery.ordering import Order
from workers.delivery.wire import LaneConfig, Look, Wire
from workers.errors import Deferred, TransportError


class Dispatcher:
    """All lanes of one worker process.

    Parameters:
        wire: what lanes send with (client, limiter, holds, tokens, portals, backlog).
        config: how lanes pack (`LaneConfig`).
        in_flight_timeout: the longest a job waits for a sent call's outcome (a guard against a bug).
        pool: the pool-wide call lists (`workers.delivery.callpool`); used for portals whose rate is at
            most `share_max_rate` requests/s while they are busy, so that every request carries calls from
            any worker.
        pressure: a portal's (unfinished jobs pool-wide, calls waiting in the pool), read in one round trip;
            without it every call of a rate-limited portal goes through the pool.
    """

    def __init__(
        self,
        wire: Wire,
        config: LaneConfig | None = None,
        in_flight_timeout: float = 300.0,
        pool: CallPool | None = None,
        share_max_rate: float = 0.0,
        pressure: Callable[[str], tuple[int, int]] | None = None,
    ) -> None:
        self.wire = wire
        self.config = config or LaneConfig()
        self.in_flight_timeout = in_flight_timeout
        self.pool = pool
        self.share_max_rate = share_max_rate
        self.pressure = pressure
        self._lanes: dict[tuple[str, bool], Lane] = {}
        self._lock = threading.Lock()
        #: calls made once with credentials their caller gives (an event's own token), beside the lanes
        self.once = OneOffCalls(wire)

    def pooled(self, portal_key: str) -> bool:
        """Does a call for this portal go through the pool-wide call queue now?"""
        return self._route(portal_key)[0]

    def _route(self, portal_key: str, look: Look | None = None) -> tuple[bool, int | None]:
        """Whether a call for this portal goes through the pool now, and the portal's backlog if it was read
        to decide (the lane of this process then need not read it again); by `look` while it is fresh."""
        if self.pool is None or self.share_max_rate <= 0:
            return False, None
        portals = self.wire.portals
        if not 0 < portals.limits(portals(portal_key)).our_rate <= self.share_max_rate:
            return False, None
        if look is not None and look.fresh():
            backlog, waiting = look.backlog, look.waiting
        elif self.pressure is None:
            return True, None
        else:
            backlog, waiting = self.pressure(portal_key)
        return waiting > 0 or backlog >= self.config.batch_max, backlog

    def lane(self, portal_key: str, pooled: bool | None = None, look: Look | None = None) -> Lane:
        """The portal's lane that sends through the pool (`pooled`), or its lane of this process alone;
        by default the one a call for it takes now (as `look` says, if it is fresh)."""
        backlog = None
        if pooled is None:
            pooled, backlog = self._route(portal_key, look)
        with self._lock:
            lane = self._lanes.get((portal_key, pooled))
            if lane is None:
                pool = self.pool if pooled else None
                lane = self._lanes[(portal_key, pooled)] = Lane(portal_key, self.wire, self.config, pool)
        lane.note(look if look is not None and look.fresh() else None, backlog)
        return lane

    def run(
        self,
        portal_key: str,
        method: str,
        params: Mapping[str, Any],
        wait: float,
        merge: MergeRule | None = None,
        order: Order | None = None,
        look: Look | None = None,
        finish: Finish | None = None,
    ) -> CallResult:
        """Send one call through its portal's lane; raise what it got, or `Deferred` after `wait` s.
        Calls with the same `merge` key may share one command; an `order` makes it pass the ordering
        gate (it may end `Superseded`); a `look` read just now saves the lane reading it again; a `finish`
        lets the lane mark the job applied with the others of its request (`finish.done` says it did)."""
        lane = self.lane(portal_key, look=look)
        call = Call(method, params, merge, order, finish=finish)
        deadline = time.monotonic() + wait
        if lane.offer(call):
            lane.lead(wait)  # a quiet portal: this thread sends, no hand-off
        try:
            if not call.done.wait(max(0.0, deadline - time.monotonic())) and lane.cancel(call):
                # still queued: free the worker slot, come back when the backlog ahead has gone out
                ahead = lane.depth()
                portals = self.wire.portals
                limits = portals.limits(portals(portal_key))
                delay = (ahead / self.config.batch_max + 1) / max(limits.our_rate, 0.1)
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

    def drain(self, timeout: float) -> list[str]:
        """Every lane finishes the round under way and takes no more calls (`Lane.drain`); the portals whose
        lanes were still busy after `timeout` s."""
        deadline = time.monotonic() + timeout
        busy = {key for (key, _), lane in self.lanes().items() if not lane.drain(max(0.0, deadline - time.monotonic()))}
        return sorted(busy)

    def forget(self, portal_key: str) -> None:
        """Drop any cached copy of the portal's record (its tokens changed)."""
        self.wire.portals.forget(portal_key)

    def lanes(self) -> dict[tuple[str, bool], Lane]:
        """Every lane by (portal, whether it sends through the pool)."""
        with self._lock:
            return dict(self._lanes)
