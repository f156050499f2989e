"""A lane: one portal's queue of calls in this process, and the thread that sends them as batches.

The thread lives while the lane has calls of this process to send (it ends when the lane is empty), so
lanes' threads never outnumber the jobs waiting on them: at most the worker's concurrency, whatever the
number of portals.

Every worker thread running a job hands its call to the portal's lane and waits for the outcome. The
lane's sender thread reserves a slot from the pool-wide limiter, and while it waits for that slot more
calls arrive, so each slot carries up to 50 of them in one `batch` (one unit of the portal's bucket).
Under light load the slot is free at once and a call goes out after a few milliseconds of gathering;
under saturation every request is a full batch. That is how a pool reaches rate x 50 jobs per second
per portal.

Whole-request trouble is handled here, once for all the calls in it: an expired token is refreshed
(once for the pool) and the request repeated; a 503 sets the limiter to full and the calls wait for
the next slot. Everything else is returned to each job for the pipeline to classify.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from workers.bitrix.client import CallResult, RestClient
from workers.delivery.callpool import CallPool
from workers.delivery.calls import Call, build_commands
from workers.delivery.operating import OperatingHolds
from workers.delivery.ordering import Ordering
from workers.delivery.ratelimit import RateLimiter
from workers.errors import (
    AuthLost,
    Deferred,
    OperationTimeLimit,
    PortalMoved,
    QueryLimitExceeded,
    RestError,
    Superseded,
    TokenExpired,
    TransportError,
)
from workers.events import events
from workers.portals.limits import Limits
from workers.portals.record import Portal
from workers.portals.state import PortalState
from workers.portals.tokens import TokenKeeper

log = logging.getLogger(__name__)


class PortalSource(Protocol):
    """Portal records as the delivery path reads them (`workers.portals.cache.CachedPortals`)."""

    def __call__(self, key: str) -> Portal: ...
    def limits(self, portal: Portal) -> Limits: ...
    def forget(self, key: str) -> None: ...
    def move(self, key: str, old_endpoint: str, new_endpoint: str) -> Portal: ...


@dataclass(frozen=True)
class Wire:
    """What a lane sends with: the REST client, the pool-wide limiter and holds, tokens, portals."""

    client: RestClient
    limiter: RateLimiter
    holds: OperatingHolds
    tokens: TokenKeeper
    portals: PortalSource
    ordering: Ordering
    #: a portal's pool-wide count of unfinished jobs (the ledger's), to know more are coming
    backlog: Callable[[str], int] = lambda portal: 0


@dataclass(frozen=True)
class LaneConfig:
    """How a lane packs.

    Parameters:
        batch_max: commands per request (Bitrix24's `batch` takes 50).
        gather: seconds a lane waits for companions when it has fewer than `batch_max` calls.
        gather_max: the longest it keeps gathering while calls keep arriving.
        merge_max: most items one merged call carries (1 turns merging off).
        max_reserve: the longest wait a lane books a slot for (keeps reservations short).
        idle_exit: seconds without calls after which the sender thread ends (0: as soon as the lane has
            nothing to send, so that a quiet portal costs no thread: at thousands of portals, most quiet, a
            thread kept per portal that sent recently was a thousand threads per worker).
        fill_max: the longest a booked slot waits for a full batch while more of the portal's jobs are
            known to be coming (and never longer than its slack: the bucket loses nothing meanwhile).
    """

    batch_max: int = 50
    gather: float = 0.005
    gather_max: float = 0.25
    merge_max: int = 50
    max_reserve: float = 5.0
    idle_exit: float = 0.0
    fill_max: float = 1.0


@dataclass
class LaneStats:
    requests: int = 0
    batches: int = 0
    calls: int = 0
    refused_503: int = 0
    refreshes: int = 0


class Lane:
    """One portal's queue of calls and the thread that sends them.

    With a `pool` (a rate-limited portal, see `workers.delivery.callpool`), the calls of every worker
    process wait in one Redis list and the local queue only stages what this lane has taken from it; the
    lane runs while this process has calls of its own waiting."""

    def __init__(self, portal_key: str, wire: Wire, config: LaneConfig, pool: CallPool | None = None) -> None:
        self.key = portal_key
        self._wire = wire
        self._config = config
        self.pool = pool
        self._cond = threading.Condition()
        self._queue: deque[Call] = deque()
        self._own = 0  # calls of this process submitted through the pool and not yet finished
        self._thread: threading.Thread | None = None
        self._busy = False  # a round is under way: calls taken, maybe other workers' (see `drain`)
        self._leading = False  # a caller sends a round in its own thread (`offer`, `lead`)
        self._closing = False
        self.stats = LaneStats()

    def submit(self, call: Call) -> None:
        """Queue a call for the lane's sender thread (started if there is none)."""
        if self.pool is not None:
            self.pool.submit(self.key, call)
        with self._cond:
            if self.pool is not None:
                self._own += 1
            else:
                self._queue.append(call)
            self._start_sender()
            self._cond.notify()

    def offer(self, call: Call) -> bool:
        """Queue a call; True when the caller is to send it itself (`lead`): a lane of this process alone with
        no sender at work, as a quiet portal's is. Its call then costs no thread and no hand-off."""
        if self.pool is not None:
            self.submit(call)
            return False
        with self._cond:
            self._queue.append(call)
            if not self._leading and (self._thread is None or not self._thread.is_alive()) and not self._closing:
                self._leading = True
                return True
            self._start_sender()
            self._cond.notify()
            return False

    def lead(self, within: float) -> None:
        """One round in the caller's thread (after `offer` said so), with a slot no further than `within` s
        away; calls left then go to a sender thread."""
        with self._cond:
            self._busy = True
        try:
            self._gather()
            self._send_round(within)
        except Exception as exc:  # never leave calls without an outcome
            log.exception("lane %s: unexpected error", self.key)
            self._fail_all(exc)
        finally:
            with self._cond:
                self._busy = False
                self._leading = False
                if self._queue:
                    self._start_sender()
                self._cond.notify_all()

    def _start_sender(self) -> None:
        """(Under the lock.) A sender thread, unless one is at work or a caller leads a round."""
        if not self._leading and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._run, name=f"b24q-lane-{self.key}", daemon=True)
            self._thread.start()

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

    def drain(self, timeout: float) -> bool:
        """Take no more calls from the pool and wait until the round under way (if any) has its answer and
        has delivered it, also to other workers' jobs it carries; False if `timeout` s were not enough.
        For a stopping worker: its own jobs are done, but a request it is sending may carry calls of jobs
        other workers run, which would otherwise be retried (and applied twice) once its heartbeat expires."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._busy, timeout=timeout)

    # -- sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._wait_for_work(self._config.idle_exit):
                return
            with self._cond:
                if self._closing and not self._queue:
                    self._thread = None
                    return
                self._busy = True
            try:
                self._gather()  # (reads the pool's depth: Redis may fail here too)
                self._send_round()
            except Exception as exc:  # never let the lane die with calls in it
                log.exception("lane %s: unexpected error", self.key)
                self._fail_all(exc)
            finally:
                self._flush()
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

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
        batch is still growing, up to `gather_max`. A lone call under light load sees no growth and leaves
        after one window. A lane of this process alone (no pool) also keeps gathering through quiet windows
        while the portal's backlog says a full batch more is coming; a pool lane books its slot first and
        fills the request after (`_fill`), so that the wait does not delay the portal's schedule."""
        if self._config.gather <= 0:
            return
        deadline = time.monotonic() + self._config.gather_max
        seen = self.depth()
        expecting = self.pool is None and self._expecting(seen)
        while seen < self._config.batch_max:
            time.sleep(self._config.gather)
            depth = self.depth()
            if (depth == seen and not expecting) or time.monotonic() >= deadline:
                return
            seen = depth

    def _expecting(self, depth: int) -> bool:
        """More of this portal's jobs are on their way: its pool-wide backlog (which counts the calls already
        here and jobs on the wire too) holds a full batch more than `depth`."""
        return depth < self._config.batch_max and self._wire.backlog(self.key) >= depth + self._config.batch_max

    def _fill(self, longest: float) -> None:
        """Spend the slot on a full batch when one is coming. At the start of a backlog (a free burst, a pool
        still taking the first messages from the broker) slots are booked as soon as calls arrive, which would
        send the burst out in part-filled requests, each a whole unit of the portal's bucket. But a slot booked
        while the bucket is in use may go up to its slack later at no cost (the bucket keeps draining), so
        while the backlog says a full batch more is on its way and calls keep arriving, wait for it (a wait
        that sees no new call for `gather_max` ends: the pool may hold no more of them)."""
        if self._config.gather <= 0 or longest <= 0 or self._closing:
            return
        now = time.monotonic()
        deadline, step = now + longest, max(self._config.gather, 0.02)
        seen, grew_at = self.depth(), now
        while self._expecting(seen):
            time.sleep(step)
            now = time.monotonic()
            depth = self.depth()
            if depth > seen:
                seen, grew_at = depth, now
            if now + step > deadline or now - grew_at >= self._config.gather_max:
                return

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            calls = list(self._queue)
            self._queue.clear()
        for call in calls:
            self._settle(call, exc)

    def _take(self, limit: int | None = None) -> list[Call]:
        """Up to `limit` (`batch_max`) commands' worth of calls; mergeable calls with the same key count as
        one command until their merged list reaches `merge_max` items."""
        if self.pool is None:
            return self._take_staged(limit)
        with self._cond:
            room = 2 * self._config.batch_max - len(self._queue)  # merging packs more than one call per command
            if self._closing:
                room = 0  # a stopping worker takes no other worker's calls
        if room > 0:
            taken = self.pool.take(self.key, room)
            with self._cond:
                self._queue.extend(taken)
        calls = self._take_staged(limit)
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

    def _take_staged(self, limit: int | None = None) -> list[Call]:
        limit = self._config.batch_max if limit is None else limit
        with self._cond:
            calls: list[Call] = []
            commands = 0
            groups: dict[tuple[Any, ...], int] = {}
            while self._queue:
                call = self._queue[0]
                if call.cancelled:
                    self._queue.popleft()
                    continue
                key = call.merge_key()
                size = call.size()
                joins = key is not None and key in groups and groups[key] + size <= self._config.merge_max
                if not joins and commands >= limit:
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

    def _send_round(self, within: float | None = None) -> None:
        """Book a slot, gather, send; a caller leading the round books one only `within` its own wait."""
        portal = self._wire.portals(self.key)
        limits = self._wire.portals.limits(portal)
        longest = self._config.max_reserve if within is None else min(within, self._config.max_reserve)
        permit = self._wire.limiter.reserve(self.key, limits, max_wait=longest)
        if not permit.granted:
            if within is None:
                time.sleep(min(permit.wait, self._config.max_reserve))
            return
        if permit.wait > 0:
            events.limiter_wait(self.key, permit.wait)
            time.sleep(permit.wait)
        self._fill(min(permit.slack, self._config.fill_max))
        calls = self._take()
        if not calls:
            return
        try:
            self._send_calls(portal, limits, calls)
        except Exception as exc:
            # whatever went wrong, no call taken from the queue is left without an outcome
            self._resolve([c for c in calls if not c.done.is_set()], exc)
            raise

    def _send_calls(self, portal: Portal, limits: Limits, taken: list[Call]) -> None:
        """Send what the holds and the ordering gate let through; calls they take out leave room in the
        request, which more waiting calls fill (a few rounds at most), so that the slot carries a full batch.
        `taken` grows with every call taken, so that the caller can settle any left over after an error."""
        calls = self._ready(taken)
        merge = self._config.merge_max > 1
        for _ in range(3):
            room = self._config.batch_max - len(build_commands(calls, merge=merge)) if calls else self._config.batch_max
            if room <= 0 or len(calls) == len(taken):  # full, or nothing was taken out
                break
            more = self._take(room)
            if not more:
                break
            taken.extend(more)
            calls += self._ready(more)
        if calls:
            self._send(portal, limits, calls)

    def _ready(self, calls: list[Call]) -> list[Call]:
        """The calls that go out now: those of a held method are deferred, those a newer job superseded
        end (`_gate`)."""
        held = self._wire.holds.held_until(self.key, {c.method for c in calls})
        if held:
            now = time.time()
            for call in [c for c in calls if c.method in held]:
                self._settle(call, Deferred(held[call.method] - now, f"{call.method} held by the operating limit"))
            calls = [c for c in calls if c.method not in held]
        return self._gate(calls)

    def _gate(self, calls: list[Call]) -> list[Call]:
        """Calls that still go out: one whose portal state a newer job has (or will have) ends as
        `Superseded`; one that sets fields a newer job set goes without them (`workers.delivery.ordering`)."""
        ordered = [c for c in calls if c.order is not None]
        if not ordered:
            return calls
        verdicts = self._wire.ordering.gate(self.key, [(c.order, c.params) for c in ordered if c.order is not None])
        for call, verdict in zip(ordered, verdicts, strict=True):
            if verdict.params is None:
                self._settle(call, Superseded(verdict.superseded_by))
            else:
                call.params = verdict.params
        return [c for c in calls if not c.done.is_set()]

    def _send(self, portal: Portal, limits: Limits, calls: list[Call], refreshed: int = 0, moved: bool = False) -> None:
        if portal.state == PortalState.UNINSTALLED:  # the app was removed while these waited for a slot (or, as
            self._wire.portals.forget(self.key)  # cached, a moment before a reinstall)
            portal = self._wire.portals(self.key)
        if portal.state == PortalState.UNINSTALLED:
            self._resolve(calls, RestError("APP_UNINSTALLED", portal.reason))
            return
        commands = build_commands(calls, merge=self._config.merge_max > 1)
        method = commands[0].method if len(commands) == 1 else "batch"
        started = time.monotonic()
        try:
            portal = self._wire.tokens.usable(portal)  # refreshes only when the token is about to expire
            creds = portal.credentials()
            self.stats.requests += 1
            client = self._wire.client
            if len(commands) == 1:
                outcomes: list[CallResult | RestError] = [client.call(creds, commands[0].method, commands[0].params)]
            else:
                self.stats.batches += 1
                answer = client.batch(creds, {f"j{i}": (c.method, c.params) for i, c in enumerate(commands)})
                outcomes = [answer.results[f"j{i}"] for i in range(len(commands))]
        except (RestError, TransportError) as exc:
            events.rest_request(self.key, method, len(calls), exc.code, time.monotonic() - started)
            self._whole_request_failed(portal, limits, calls, refreshed, moved, exc)
            return
        events.rest_request(self.key, method, len(calls), "ok", time.monotonic() - started)
        self.stats.calls += len(calls)
        split: list[Call] = []
        latest_time: dict[str, Mapping[str, Any]] = {}
        for command, outcome in zip(commands, outcomes, strict=True):
            if isinstance(outcome, CallResult) and outcome.time:
                latest_time[command.method] = outcome.time  # the last answer per method says it all
            elif isinstance(outcome, OperationTimeLimit):
                outcome.reset_at = self._wire.holds.blocked(self.key, command.method)
                events.operating_hold(self.key, command.method, outcome.reset_at)
            if len(command.members) > 1 and not command.succeeded(outcome):
                # a merged call failed: each member goes alone, so that it gets its own outcome
                for member in command.members:
                    member.solo = True
                split.extend(command.members)
                continue
            for member in command.members:
                self._settle(member, outcome)
        if split:
            self._put_back(split)
        for method, time_block in latest_time.items():
            until = self._wire.holds.record(self.key, method, time_block)
            if until:
                events.operating_hold(self.key, method, until)

    def _whole_request_failed(
        self,
        portal: Portal,
        limits: Limits,
        calls: list[Call],
        refreshed: int,
        moved: bool,
        exc: RestError | TransportError,
    ) -> None:
        """An error for the whole request: flow control, token refresh and a domain move here, the rest
        to each job."""
        if isinstance(exc, PortalMoved) and not moved:
            # the portal's domain changed (bitrix24-facts.md §7.5): store the new address and repeat the
            # POST there once, if the new host is one a portal may have (else the tokens stay home)
            target = portal.credentials().moved(exc.location, exc.method)
            now = self._wire.portals.move(self.key, portal.endpoint, target.endpoint)
            if now.endpoint != portal.endpoint:
                events.portal_moved(self.key)
                log.warning("portal %s moved: requests now go to its new domain", self.key)
                permit = self._wire.limiter.reserve(self.key, limits, max_wait=self._config.max_reserve)
                if permit.wait:
                    time.sleep(permit.wait)
                self._send(now, limits, calls, refreshed, moved=True)
                return
            exc = AuthLost("PORTAL_MOVED_AWAY", "the portal redirected to an endpoint the rules refuse")
        if isinstance(exc, QueryLimitExceeded):
            self.stats.refused_503 += 1
            events.refused_503(self.key)
            if limits.our_rate <= 0:  # an "unlimited" portal limits after all: do not hammer it
                log.warning("portal %s answered QUERY_LIMIT_EXCEEDED but has no rate set; give it --rate", self.key)
                time.sleep(1.0)
            self._wire.limiter.set_full(self.key, limits)
            self._put_back(calls)  # flow control: they go with the next slot
            return
        if isinstance(exc, TokenExpired) and portal.kind == "oauth" and refreshed < 2:
            self.stats.refreshes += 1
            try:
                fresh = self._wire.tokens.refresh(self.key, portal.access_token)
            except (RestError, TransportError) as refresh_error:
                self._resolve(calls, refresh_error)
                return
            self._wire.portals.forget(self.key)
            # the repeated request takes a slot of its own
            permit = self._wire.limiter.reserve(self.key, limits, max_wait=self._config.max_reserve)
            if permit.wait:
                time.sleep(permit.wait)
            self._send(fresh, limits, calls, refreshed + 1)
            return
        if isinstance(exc, TokenExpired):
            exc = AuthLost("TOKEN_REJECTED", "the portal refused a freshly refreshed token")
        if isinstance(exc, OperationTimeLimit):
            exc.reset_at = self._wire.holds.blocked(self.key, calls[0].method)
            events.operating_hold(self.key, calls[0].method, exc.reset_at)
        self._resolve(calls, exc)

    def _resolve(self, calls: list[Call], outcome: BaseException) -> None:
        for call in calls:
            self._settle(call, outcome)

    def _settle(self, call: Call, outcome: CallResult | BaseException) -> None:
        """Give a call its outcome; another worker's call gets it through the pool."""
        call.resolve(outcome)
        if call.remote and self.pool is not None:
            self.pool.reply(call, outcome)
