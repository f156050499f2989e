"""A one-off call: one request with credentials its caller gives (an application event's own access token,
`edges.lifecycle.verification`), sent beside the lanes so that delivery/ stays the one path to a portal.

It cannot be a lane's call. A lane sends with the portal's stored tokens and refreshes them on
`expired_token`; it sleeps until its slot comes; a 503 marks the portal's bucket full; and it exists only for
a registered portal. An event's token must never be refreshed with the stored refresh token, nor stored
before the portal accepts it; the event's request thread never waits for a portal; a verification never
marks a portal's bucket full; and an installing portal has no record (nor bucket) yet. So a one-off call
takes the rest of the lanes' path: the same `Wire` (client, limiter, portal records), its slot booked in the
portal's bucket as a lane books its own, a redirect followed under the same endpoint rules, and the errors
typed as a job's are (`workers.errors`), for the caller to act on by their `Action`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from workers import retries
from workers.bitrix.client import CallResult, Credentials
from workers.delivery.ratelimit import Permit
from workers.delivery.wire import Wire
from workers.errors import AuthLost, Deferred, PortalMoved
from workers.portals.record import Portal

log = logging.getLogger(__name__)


class OneOffCalls:
    """Calls made once, with given credentials, through the lanes' client, limiter and portal records."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire

    def book(self, portal: Portal, within: float) -> Permit:
        """A slot in the portal's bucket no further than `within` s away, booked as a lane books its own; never
        waits (the caller sends at `wait`, or not at all)."""
        return self._wire.limiter.reserve(portal.key, self._wire.portals.limits(portal), max_wait=within)

    def call(
        self, creds: Credentials, method: str, params: Mapping[str, Any], portal: Portal | None = None
    ) -> CallResult:
        """Send now (at the slot the caller booked in `portal`'s bucket, if it has one) with `creds`, which are
        never refreshed nor stored. Raises the typed error of the answer; a redirect as `_moved` says."""
        try:
            return self._wire.client.call(creds, method, params)
        except PortalMoved as exc:
            raise self._moved(creds, exc, portal) from None

    def _moved(self, creds: Credentials, exc: PortalMoved, portal: Portal | None) -> Deferred | AuthLost:
        """A redirect, as a lane takes one (bitrix24-facts.md §7.5): a registered portal at this endpoint moves
        to the new one if the rules allow it, and the call is to be made again there at another slot
        (`Deferred`); else the credentials go no further (`PORTAL_MOVED_AWAY`)."""
        if portal is not None and portal.endpoint == creds.endpoint and self._wire.follow(portal, creds, exc):
            return Deferred(0.0, "the portal moved to a new domain: call it there at its next slot")
        return retries.moved_away()
