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
from collections.abc import Mapping
from typing import Any

from workers import retries
from workers.bitrix.client import CallResult
from workers.delivery.calls import Call, build_commands
from workers.delivery.packing import Packing
from workers.delivery.wire import LaneStats
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

log = logging.getLogger("workers.delivery.lane")  # the lane's parts log as the lane


class Sending(Packing):
    """A lane's rounds: one slot, one request, an outcome for each call in it."""

    stats: LaneStats

    def _send_round(self, within: float | None = None) -> None:
        """Book a slot, gather, send; a caller leading the round books one only `within` its own wait."""
        portal = self._wire.portals(self.key)
        limits = self._wire.portals.limits(portal)
        longest = self._config.max_reserve if within is None else min(within, self._config.max_reserve)
        permit = self._wire.limiter.reserve(self.key, limits, max_wait=longest)
        if not permit.granted:
            if self.pool is not None:
                self._return_staged()  # a batch claimed for this slot: others may get one sooner
            if within is None:
                time.sleep(min(permit.wait, self._config.max_reserve))
            return
        if permit.wait > 0:
            events.limiter_wait(self.key, permit.wait)
            time.sleep(permit.wait)
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
        # each job was admitted before it got here; the app may have been removed while these waited for a
        # slot (or, as cached, a moment before a reinstall): asked again, of the record as it is now
        portal = self._wire.portals.current(self.key) or portal
        refusal = admission(portal, self.key)
        if refusal is not None and refusal.code == "APP_UNINSTALLED":
            self._resolve(calls, RestError(refusal.code, portal.reason))
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
            decision.error.reset_at = self._wire.holds.blocked(self.key, calls[0].method)
            events.operating_hold(self.key, calls[0].method, decision.error.reset_at)
        self._resolve(calls, decision.error)

    def _repeat(self, portal: Portal, limits: Limits, calls: list[Call], refreshed: int, moved: bool = False) -> None:
        """Send the request again, at a slot of its own."""
        permit = self._wire.limiter.reserve(self.key, limits, max_wait=self._config.max_reserve)
        if permit.wait:
            time.sleep(permit.wait)
        self._send(portal, limits, calls, refreshed, moved=moved)

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
