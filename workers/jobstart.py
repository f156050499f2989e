"""A job's start in one Redis round trip: its run in the ledger, its portal's record when the cached one is
stale, and what its lane will want to know of the portal's traffic (the backlog, calls waiting in the pool,
holds on the job's method).

Each store queues its own reads (`queue_*`, `read_*`) and parses its own replies; this module only puts them
on one wire. Round trips cost more than anything else b24q does per job (a socket write and read each, on
both sides), and a quiet portal's job made seven of them; these four are now one (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError

from workers.delivery.callpool import CallPool
from workers.delivery.operating import OperatingHolds
from workers.delivery.wire import Look, pipelined
from workers.portals.cache import CachedPortals
from workers.portals.record import Portal
from workers.portals.registry import PortalRegistry
from workers.portals.state import PortalState
from workers.records.ledger import Ledger, Run
from workers.roundtrip import round_trip


@dataclass(frozen=True)
class Started:
    """A job as its start found it."""

    #: the portal's record to decide the job's admission on (`CachedPortals.current`'s rule), None if unknown
    portal: Portal | None
    #: the registry key the job runs under: its own, or the one its portal's alias names
    key: str
    run: Run
    look: Look


class JobStart:
    """Starts jobs: `start(job_id, kind, method, portal_key, worker, payload)`."""

    def __init__(
        self,
        client: redis.Redis,
        portals: CachedPortals,
        registry: PortalRegistry,
        ledger: Ledger,
        calls: CallPool,
        holds: OperatingHolds,
    ) -> None:
        self._client = client
        self._portals = portals
        self._registry = registry
        self._ledger = ledger
        self._calls = calls
        self._holds = holds

    def __call__(
        self, job_id: str, kind: str, method: str, key: str, worker: str, payload: Callable[[], Any]
    ) -> Started:
        portal, fresh = self._portals.cached(key)
        read = not fresh or portal is None or portal.state == PortalState.UNINSTALLED  # as `current` decides
        if (portal is not None and portal.key != key) or (read and not self._portals.is_key(key)):
            # an alias (as cached, or a name not known here as a registry key) or an unknown name: resolved
            # first, so that the run and its reads are the key's every other record of the portal uses
            portal = self._portals.current(key)
            key = portal.key if portal is not None else key
            read = False
        pipe = round_trip(self._client)
        if read:  # a registry key: its record is read beside the rest
            self._registry.queue_get(pipe, key)
        self._ledger.queue_started(pipe, job_id, kind, key, worker)
        self._ledger.read_backlog(key, pipe)
        self._calls.read_depth(key, pipe)
        self._holds.queue_held(pipe, key, [method])
        at = time.monotonic()
        replies = pipe.execute(raise_on_error=False)
        if read:
            portal = self._registry.portal_from(pipelined(replies.pop(0)))
            self._portals.keep(key, portal)
            if portal is None and self._portals.alias_now(key):
                # removed since, and its name another portal's alias now (a move): started again under that
                # portal's key, as a job naming the alias is (its run counted twice: a rare move costs that)
                return self(job_id, kind, method, key, worker, payload)
        started, backlog, waiting, held = replies
        if isinstance(started, NoScriptError):  # a Redis restarted or flushed since the script was loaded
            run = self._ledger.started(job_id, kind, key, worker, payload)
        else:
            run = self._ledger.run_from(job_id, pipelined(started), payload)
        look = Look(
            at,
            int(pipelined(backlog) or 0),
            int(pipelined(waiting) or 0),
            frozenset([method]),
            self._holds.held_from([method], [pipelined(held)]),
        )
        return Started(portal, key, run, look)
