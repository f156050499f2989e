"""What a lane works with: the services it sends through (`Wire`), how it packs (`LaneConfig`), and what it
counts (`LaneStats`). Plain data, shared by the lane's parts (`lane`, `packing`, `sending`) and the one-off
calls (`oneoff`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from workers.bitrix.client import Credentials, RestClient
from workers.delivery.operating import OperatingHolds
from workers.delivery.ordering import Ordering
from workers.delivery.ratelimit import RateLimiter
from workers.errors import PortalMoved
from workers.events import events
from workers.portals.limits import Limits
from workers.portals.record import Portal
from workers.portals.tokens import TokenKeeper
from workers.records.ledger import Ledger

log = logging.getLogger("workers.delivery.lane")  # a move is logged as the lane's, whoever met the redirect


class PortalSource(Protocol):
    """Portal records as the delivery path reads them (`workers.portals.cache.CachedPortals`)."""

    def __call__(self, key: str) -> Portal: ...
    def current(self, key: str) -> Portal | None: ...
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
    #: a portal's pool-wide count of unfinished jobs (the ledger's), to know more are coming; None: not known
    backlog: Callable[[str], int] | None = None
    #: the stores' Redis, to ask several of them in one round trip (None: each is asked on its own)
    redis: Any = None
    #: where the lane marks applied the jobs of a request it sent (`Call.finish`); None: each job does
    ledger: Ledger | None = None

    def follow(self, portal: Portal, creds: Credentials, redirect: PortalMoved) -> Portal | None:
        """The portal's domain changed (bitrix24-facts.md §7.5): store the address `redirect` points to and
        return the moved record, if the new host is one a portal may have; else None (the tokens stay home)."""
        target = creds.moved(redirect.location, redirect.method)
        now = self.portals.move(portal.key, portal.endpoint, target.endpoint)
        if now.endpoint == portal.endpoint:
            return None
        events.portal_moved(portal.key)
        log.warning("portal %s moved: requests now go to its new domain", portal.key)
        return now


def pipelined(reply: Any) -> Any:
    """A reply from a pipeline run with `raise_on_error=False`, or the error it carries, raised."""
    if isinstance(reply, Exception):
        raise reply
    return reply


#: A reading of a portal's traffic younger than this is good enough for a lane's decisions (to wait for more
#: calls, to defer a held method; a fill looks again every 20 ms at most), so it is not read again.
FRESH = 0.02


@dataclass(frozen=True)
class Look:
    """A portal's traffic as read moments before a call reaches its lane (`workers.jobstart`, with the job's
    other reads): the dispatcher routes the call by it and the lane decides by it while it is `FRESH`."""

    at: float  # time.monotonic() of the reading
    backlog: int  # the portal's unfinished jobs pool-wide (the ledger's count)
    waiting: int  # its calls waiting in the pool-wide call queue
    methods: frozenset[str]  # the methods whose holds were read
    held: Mapping[str, float]  # those of them held now: method -> the hold's end on this process's clock

    def fresh(self) -> bool:
        return time.monotonic() - self.at < FRESH


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
