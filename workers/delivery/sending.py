"""How a lane spends a slot: book it, fill the request, let the operating holds and the ordering gate take
out what may not go, send one call or a `batch`, and give every call its outcome.

Whole-request trouble is handled here, once for all the calls in it: an expired token is refreshed
(once for the pool) and the request repeated; a 503 sets the limiter to full and the calls wait for
the next slot; a redirect to an endpoint the rules allow moves the portal and repeats the request there.
Which of these an error calls for is the retry policy's to say (`workers.retries.whole_request`); everything
else is returned to each job, whose pipeline applies the policy's decision (`workers.retries.decide`).

Part of `Lane` (`workers.delivery.lane`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

from redis.exceptions import NoScriptError

from workers import retries
from workers.bitrix.client import CallResult
from workers.delivery.calls import Call, Finish, build_commands
from workers.delivery.ordering import Verdict
from workers.delivery.packing import Packing
from workers.delivery.ratelimit import Permit
from workers.delivery.wire import LaneStats, pipelined
from workers.errors import (
    Deferred,
    OperationTimeLimit,
    PortalMoved,
    RestError,
    Superseded,
    TransportError,
)
from workers.events import events
from workers.portals.admission import admission
from workers.portals.limits import Limits
from workers.portals.record import Portal
from workers.retries import RequestStep
from workers.roundtrip import round_trip

log = logging.getLogger("workers.delivery.lane")  # the lane's parts log as the lane


class Sending(Packing):
    """A lane's rounds: one slot, one request, an outcome for each call in it."""

    stats: LaneStats
    _resets: dict[str, float]  # method -> when the reset its last answer here named comes (monotonic)

    def _send_round(self, within: float | None = None) -> None:
        """Book a slot, gather, send; a caller leading the round books one only `within` its own wait."""
        portal = self._wire.portals(self.key)
        limits = self._wire.portals.limits(portal)
        longest = self._config.max_reserve if within is None else min(within, self._config.max_reserve)
        if self._alone(limits):
            self._send_alone(portal, limits, longest, within)
            return
        permit = self._wire.limiter.reserve(self.key, limits, max_wait=longest)
        if not permit.granted and self.pool is not None:
            self._return_staged()  # a batch claimed for this slot: others may get one sooner
        if not self._await_slot(permit, within):
            return
        self._fill(min(permit.slack, self._config.fill_max))  # (nothing to wait for when a batch is here)
        calls = self._take()
        if not calls:
            return
        try:
            self._send_calls(portal, limits, calls)
        except Exception as exc:
            # whatever went wrong, no call taken from the queue is left without an outcome
            self._resolve([c for c in calls if not c.done.is_set()], exc)
            raise

    def _await_slot(self, permit: Permit, within: float | None) -> bool:
        """Sleep until a granted slot's time; False when none was granted (a sender thread, not a caller leading
        the round, then waits until one may be)."""
        if not permit.granted:
            if within is None:
                time.sleep(min(permit.wait, self._config.max_reserve))
            return False
        if permit.wait > 0:
            events.limiter_wait(self.key, permit.wait)
            time.sleep(permit.wait)
        return True

    def _alone(self, limits: Limits) -> bool:
        """Is what is staged here one request's worth, with no full batch more on its way (a quiet portal's lone
        call, or a busy one's gathered calls)? Then there is nothing to fill once the slot is booked."""
        wire = self._wire
        if self.pool is not None or limits.our_rate <= 0 or wire.redis is None or wire.backlog is None:
            return False
        staged = self.depth()
        return 0 < staged <= self._config.batch_max and not self._expecting(staged)

    def _send_alone(self, portal: Portal, limits: Limits, longest: float, within: float | None) -> None:
        """Book the slot, read the holds on the staged calls' methods and ask the ordering gate for them, in one
        round trip. The calls stay staged (a job may still withdraw its call) until the slot is known to be now;
        those still staged then go, with the gate's verdicts. A later slot is waited for, and its calls are gated
        again when they go (a newer job may go out meanwhile). The gate may so record a call that does not go now
        (a later slot, a held method): it records no newer version than the call's own, which the call passes
        again and every older job's call is superseded by anyway."""
        staged = self._staged()
        methods = sorted({c.method for c in staged})
        held = self._looked_held(methods)
        gated = staged if held is None else [c for c in staged if c.method not in held]
        orders = [(c.order, c.params) for c in gated if c.order is not None]
        pipe = round_trip(self._wire.redis)
        self._wire.limiter.queue_reserve(pipe, self.key, limits, longest)
        if held is None:
            self._wire.holds.queue_held(pipe, self.key, methods)
        if orders:
            self._wire.ordering.queue_gate(pipe, self.key, orders)
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[0], NoScriptError):  # a Redis restarted since the script was loaded
            permit = self._wire.limiter.reserve(self.key, limits, max_wait=longest)
        else:
            permit = self._wire.limiter.permit_from(pipelined(replies[0]))
        if held is None:
            held = self._wire.holds.held_from(methods, [pipelined(r) for r in replies[1 : 1 + len(methods)]])
        if not self._await_slot(permit, within):
            return
        if permit.wait > 0:
            calls = self._take()
            verdicts = None
        else:
            if orders and not isinstance(replies[-1], NoScriptError):
                ordered = [c for c in gated if c.order is not None]
                answers = self._wire.ordering.verdicts_from(orders, pipelined(replies[-1]))
                verdicts = {id(c): v for c, v in zip(ordered, answers, strict=True)}
            else:
                verdicts = None
            calls = self._claim(staged)
        try:
            if verdicts is None:
                self._send_calls(portal, limits, calls)
                return
            ready = self._defer_held(calls, held)
            ready = self._gate(ready, [verdicts[id(c)] for c in ready if c.order is not None])
            if ready:
                self._send(portal, limits, ready)
        except Exception as exc:
            self._resolve([c for c in calls if not c.done.is_set()], exc)
            raise

    def _send_calls(self, portal: Portal, limits: Limits, taken: list[Call]) -> None:
        """Send what the holds and the ordering gate let through; calls they take out leave room in the
        request, which more waiting calls fill (a few rounds at most), so that the slot carries a full batch.
        `taken` grows with every call taken, so that the caller can settle any left over after an error."""
        calls = self._ready(taken)
        merge_max = self._config.merge_max
        for _ in range(3):
            room = self._config.batch_max - len(build_commands(calls, merge_max)) if calls else self._config.batch_max
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
        return self._gate(self._unheld(calls))

    def _unheld(self, calls: list[Call]) -> list[Call]:
        """The calls whose method is not held; the others are deferred until the hold ends."""
        return self._defer_held(calls, self._held(calls))

    def _held(self, calls: list[Call]) -> dict[str, float]:
        """Which of the calls' methods are held, until when (this process's clock). As read with the job's
        start while that is fresh: a hold set since by another worker costs at most one 429, after which the
        answer holds the method here too."""
        methods = {c.method for c in calls}
        held = self._looked_held(methods)
        return held if held is not None else self._wire.holds.held_until(self.key, methods)

    def _looked_held(self, methods: Collection[str]) -> dict[str, float] | None:
        """`_held` as the last job's start read it, if that reading is fresh and covers `methods`; else None."""
        look = self._look
        if look is not None and look.fresh() and set(methods) <= look.methods:
            return {m: end for m, end in look.held.items() if m in methods}
        return None

    def _defer_held(self, calls: list[Call], held: dict[str, float]) -> list[Call]:
        """Defer the calls of a held method; the others."""
        if held:
            now = time.time()
            for call in [c for c in calls if c.method in held]:
                self._settle(call, Deferred(held[call.method] - now, f"{call.method} held by the operating limit"))
            calls = [c for c in calls if c.method not in held]
        return calls

    def _gate(self, calls: list[Call], verdicts: list[Verdict] | None = None) -> list[Call]:
        """Calls that still go out: one whose portal state a newer job has (or will have) ends as
        `Superseded`; one that sets fields a newer job set goes without them (`workers.delivery.ordering`).
        `verdicts`: the gate's, asked already (for the calls with an order, in their order)."""
        ordered = [c for c in calls if c.order is not None]
        if not ordered:
            return calls
        if verdicts is None:
            verdicts = self._wire.ordering.gate(self.key, [(c.order, c.params) for c in ordered if c.order is not None])
        for call, verdict in zip(ordered, verdicts, strict=True):
            if verdict.params is None:
                self._settle(call, Superseded(verdict.superseded_by))
            else:
                call.params = verdict.params
        return [c for c in calls if not c.done.is_set()]

    def _send(self, portal: Portal, limits: Limits, calls: list[Call], refreshed: int = 0, moved: bool = False) -> None:
        # each job was admitted before it got here; the app may have been removed while these waited for a
        # slot (or, as cached, a moment before a reinstall): asked again, of the record as it is now
        portal = self._wire.portals.current(self.key) or portal
        refusal = admission(portal, self.key)
        if refusal is not None and refusal.code == "APP_UNINSTALLED":
            self._resolve(calls, RestError(refusal.code, portal.reason))
            return
        commands = build_commands(calls, self._config.merge_max)
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
        settled: list[tuple[Call, CallResult | RestError]] = []
        latest_time: dict[str, Mapping[str, Any]] = {}
        for command, outcome in zip(commands, outcomes, strict=True):
            if isinstance(outcome, CallResult) and outcome.time:
                latest_time[command.method] = outcome.time  # the last answer per method says it all
            elif isinstance(outcome, OperationTimeLimit):
                outcome.reset_at = self._wire.holds.blocked(self.key, command.method, self._reset_in(command.method))
                events.operating_hold(self.key, command.method, outcome.reset_at)
            if len(command.members) > 1 and not command.succeeded(outcome):
                # a merged call failed: each member goes alone, so that it gets its own outcome
                for member in command.members:
                    member.solo = True
                split.extend(command.members)
                continue
            settled.extend((member, outcome) for member in command.members)
        self._finish_applied(settled)
        for member, outcome in settled:
            self._settle(member, outcome)
        if split:
            self._put_back(split)
        for method, time_block in latest_time.items():
            _, reset_in = self._wire.holds.reading(time_block)
            if reset_in is not None:
                self._resets[method] = time.monotonic() + reset_in
            until = self._wire.holds.record(self.key, method, time_block)
            if until:
                events.operating_hold(self.key, method, until)

    def _finish_applied(self, settled: list[tuple[Call, CallResult | RestError]]) -> None:
        """Mark applied, in one round trip, the records of this process's jobs whose calls succeeded (`Finish`),
        before their jobs learn it: each job's own thread then has no round trip left to make."""
        ledger = self._wire.ledger
        ready: list[Finish] = []
        for call, outcome in settled:
            if ledger is None or call.finish is None or call.remote or not isinstance(outcome, CallResult):
                continue
            try:
                call.finish.check(outcome.result)
            except Exception:  # not applied after all: the job's own pipeline decides what it is
                continue
            ready.append(call.finish)
        if ready:
            assert ledger is not None
            for finish, done in zip(ready, ledger.finish_applied(self.key, [f.job_id for f in ready]), strict=True):
                finish.done = done

    def _whole_request_failed(
        self,
        portal: Portal,
        limits: Limits,
        calls: list[Call],
        refreshed: int,
        moved: bool,
        exc: RestError | TransportError,
    ) -> None:
        """An error for the whole request, as the retry policy says (`workers.retries.whole_request`): a domain
        move, flow control and a token refresh here, the rest to each job's own decision."""
        decision = retries.whole_request(exc, portal.kind, refreshed, moved)
        if decision.step is RequestStep.MOVE:
            assert isinstance(exc, PortalMoved)
            now = self._wire.follow(portal, portal.credentials(), exc)
            if now is not None:  # repeat the POST once at the portal's new address
                self._repeat(now, limits, calls, refreshed, moved=True)
                return
            decision = retries.whole_request(retries.moved_away(), portal.kind, refreshed, moved=True)
        if decision.step is RequestStep.FLOW:
            self.stats.refused_503 += 1
            events.refused_503(self.key)
            if limits.our_rate <= 0:  # an "unlimited" portal limits after all: do not hammer it
                log.warning("portal %s answered QUERY_LIMIT_EXCEEDED but has no rate set; give it --rate", self.key)
                time.sleep(1.0)
            self._wire.limiter.set_full(self.key, limits)
            self._put_back(calls)  # flow control: they go with the next slot
            return
        if decision.step is RequestStep.REFRESH:
            self.stats.refreshes += 1
            try:
                fresh = self._wire.tokens.refresh(self.key, portal.access_token)
            except (RestError, TransportError) as refresh_error:
                self._resolve(calls, refresh_error)
                return
            self._wire.portals.forget(self.key)
            self._repeat(fresh, limits, calls, refreshed + 1)
            return
        if decision.step is RequestStep.HOLD and isinstance(decision.error, OperationTimeLimit):
            method = calls[0].method
            decision.error.reset_at = self._wire.holds.blocked(self.key, method, self._reset_in(method))
            events.operating_hold(self.key, calls[0].method, decision.error.reset_at)
        self._resolve(calls, decision.error)

    def _repeat(self, portal: Portal, limits: Limits, calls: list[Call], refreshed: int, moved: bool = False) -> None:
        """Send the request again, at a slot of its own."""
        permit = self._wire.limiter.reserve(self.key, limits, max_wait=self._config.max_reserve)
        if permit.wait:
            time.sleep(permit.wait)
        self._send(portal, limits, calls, refreshed, moved=moved)

    def _reset_in(self, method: str) -> float | None:
        """Seconds until the reset the lane's last answer for `method` named, if it is still ahead."""
        left = self._resets.get(method, 0.0) - time.monotonic()
        return left if left > 0 else None

    def _resolve(self, calls: list[Call], outcome: BaseException) -> None:
        for call in calls:
            self._settle(call, outcome)

    def _settle(self, call: Call, outcome: CallResult | BaseException) -> None:
        """Give a call its outcome; another worker's call gets it through the pool."""
        call.resolve(outcome)
        if call.remote and self.pool is not None:
            self.pool.reply(call, outcome)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            calls = list(self._queue)
            self._queue.clear()
        for call in calls:
            self._settle(call, exc)
