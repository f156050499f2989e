"""An unproven event's token, verified: one `app.info` call with it on the portal, paid for before it is made.

The call is a one-off of the delivery path (`workers.delivery.oneoff`, through `Dispatcher.once`): the lanes'
client, a slot in the portal's bucket booked as a lane books its own, a redirect under the endpoint rules,
errors typed as a job's. What it may cost a portal is bounded by `workers.delivery.verification`
(docs/security.md); when it is made is decided here: a request thread never waits for a portal (`Later`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from workers.bitrix.client import Credentials
from workers.delivery.oneoff import OneOffCalls
from workers.delivery.verification import Busy, VerificationGate
from workers.errors import Deferred, RestError, TransportError
from workers.portals.endpoints import domain_of
from workers.portals.record import Portal
from workers.retries import Action, classify

log = logging.getLogger("edges.lifecycle")  # one logger for the package: operators filter on it (README)

#: How far ahead a verification call may book its slot in the portal's bucket (the lanes book a few seconds).
BOOK_AHEAD = 15.0
#: How many times an event whose verification the portal's limit turned away is tried again at a booked slot.
MAX_DEFERRALS = 3


class Later(Exception):
    """The event's verification has a slot in the portal's bucket `wait` seconds from now."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"verification in {wait:.1f} s")
        self.wait = wait


class Unverified(Exception):
    """The portal could not confirm or deny an event's token just now (`status`: 503, or 429 when the
    portal's verification budget is spent), nor may it be asked for `retry_after` seconds."""

    def __init__(self, reason: str, status: int = 503, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.status, self.retry_after = status, retry_after


class EventVerification:
    """Verifies an event's access token for one handling of the event.

    Parameters:
        gate: the per-host single-flight, budget and failed-token memory (`VerificationGate`).
        once: the delivery path's one-off calls (`Dispatcher.once`).
        deferrals: how many times this event was put off to a slot booked for its verification (`Later`).
    """

    def __init__(self, gate: VerificationGate, once: OneOffCalls, deferrals: int = 0) -> None:
        self._gate = gate
        self._once = once
        self.deferrals = deferrals

    def _book_slot(self, portal: Portal) -> float:
        """Book a verification call's slot in the portal's bucket, as the lanes book theirs: the seconds
        until it comes (0 when the bucket has room now)."""
        permit = self._once.book(portal, BOOK_AHEAD)
        if not permit.granted:
            raise Unverified("the portal's request bucket is booked too far ahead", 503, permit.wait)
        return permit.wait

    def verify(self, endpoint: str, access_token: str, portal: Portal | None = None) -> dict[str, Any] | None:
        """`app.info` with this token on this portal: its result, or None if the portal refused the token.

        The only portal call an unproven event causes, so it is paid for before it is made: a token the portal
        refused before is refused again without a call, and `VerificationGate` allows one verification per
        portal at a time within its budget. A registered portal's bucket gives the call a slot like any
        request (its limits hold, and it is never marked full); when the slot is not now, the event is
        handled again in the background at its time (`Later`): a request thread never waits for a portal.
        Raises `Unverified` when the portal could not say, or may not be asked now.
        """
        host = domain_of(endpoint)
        if self._gate.failed_before(host, access_token):
            return None
        if self.deferrals:  # handled again at the slot this event booked: its turn and budget are spent
            return self._ask(endpoint, access_token, host, portal)
        try:
            with self._gate.turn(host):
                if portal is not None and (wait := self._book_slot(portal)) > 0:
                    raise Later(wait)
                return self._ask(endpoint, access_token, host, portal)
        except Busy as exc:
            raise Unverified(str(exc), 429, exc.retry_after) from None

    def _ask(self, endpoint: str, access_token: str, host: str, portal: Portal | None) -> dict[str, Any] | None:
        """The `app.info` call, its errors taken by their action: flow control (a registered portal over its
        limit even so: other apps on its IP, the network's jitter against the burst margin; or one that moved)
        gets it again at the next slot booked for it, up to `MAX_DEFERRALS` times; transient trouble leaves the
        token unverified; anything else (an expired or unknown token included: never refreshed) refuses it."""
        try:
            result = self._once.call(Credentials(endpoint, access_token), "app.info", {}, portal).result
        except (RestError, TransportError, Deferred) as exc:
            action, code = classify(exc), exc.why if isinstance(exc, Deferred) else exc.code
            if action is Action.FLOW:
                if portal is None or self.deferrals >= MAX_DEFERRALS:
                    raise Unverified(code, 503, 1.0) from None
                raise Later(max(1.0, self._book_slot(portal))) from None
            if action is Action.TRANSIENT:
                raise Unverified(code, 503, 1.0) from None
            self._gate.remember_failure(host, access_token)
            log.warning("app.info refused the event's token: %s", code)
            return None
        return dict(result) if isinstance(result, Mapping) else {}
