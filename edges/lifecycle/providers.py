"""What an install or an update sets up on its portal: the application's event handlers (`event.bind`, so
that b24q hears of uninstalls and updates) and the SMS providers (`messageservice.sender.add` jobs). Both go
the way every call to a portal goes: through the dispatcher's lanes, or as jobs."""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Any

from tasks.jobs import SENDER_ADD
from tasks.producer import enqueue_many
from workers.errors import JobRefused, RestError, TransportError
from workers.portals.record import Portal
from workers.runtime import Runtime

log = logging.getLogger("edges.lifecycle")  # one logger for the package: operators filter on it (README)

#: Events b24q binds at install so that it hears of uninstalls and updates (§7.2: `event.bind`).
BOUND_EVENTS = ("ONAPPUNINSTALL", "ONAPPUPDATE")
#: How the event handler's URL is built from `B24Q_HTTP_PUBLIC_URL`.
EVENTS_PATH = "/b24/events"


def bind_events(rt: Runtime, portal: Portal) -> None:
    """Ask the portal to send uninstall and update events here (`event.bind`, app context)."""
    base = rt.settings.http_public_url.rstrip("/")
    if not base:
        return
    for event in BOUND_EVENTS:
        try:
            rt.dispatcher.run(portal.key, "event.bind", {"event": event, "handler": base + EVENTS_PATH}, wait=30.0)
        except RestError as exc:
            if "already binded" not in exc.description.lower():  # Src api/event.php (§7.2)
                log.warning("portal %s: event.bind %s failed: %s", portal.key, event, exc.code)
        except TransportError as exc:
            log.warning("portal %s: event.bind %s failed: %s", portal.key, event, exc.code)


class Binder:
    """Binds the app's events on portals in the background (`bind_events`), a few portals at a time.

    An update reaches a portal that is busy, often: its bucket booked ahead by the lanes sending its backlog, so
    each `event.bind` waits for a slot of its own, seconds in all. Bitrix24 does not wait that long for the app's
    answer to the event (the emulator gives up after 5 s), so the update is answered at once and its handlers
    are bound here. The threads end when there is nothing left to bind."""

    THREADS = 4
    IDLE_EXIT = 5.0

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._queue: queue.SimpleQueue[Portal] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = 0

    def submit(self, portal: Portal) -> None:
        self._queue.put(portal)
        with self._lock:
            if self._running < self.THREADS:
                self._running += 1
                threading.Thread(target=self._run, name="b24q-bind", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                portal = self._queue.get(timeout=self.IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # (a portal submitted meanwhile found this thread still counted)
                        self._running -= 1
                        return
                continue
            try:
                bind_events(self._rt, portal)
            except Exception:  # Redis trouble: the portal's next update binds them again
                log.exception("portal %s: events not bound", portal.key)


_binders: weakref.WeakKeyDictionary[Runtime, Binder] = weakref.WeakKeyDictionary()
_binders_lock = threading.Lock()


def bind_events_soon(rt: Runtime, portal: Portal) -> None:
    """`bind_events`, in the background (`Binder`)."""
    with _binders_lock:
        binder = _binders.get(rt)
        if binder is None:
            binder = _binders[rt] = Binder(rt)
    binder.submit(portal)


def providers_for(rt: Runtime, portal: Portal) -> list[dict[str, Any]]:
    """The SMS providers the portal should have: its own list, else `B24Q_PROVIDERS`."""
    return portal.provider_list(rt.settings)


def register_providers(rt: Runtime, portal: Portal) -> int:
    """Enqueue `messageservice.sender.add` for each provider (through the limiter and batch path like
    any job); the portal's status jobs wait until every one is back (`Portal.providers_pending`)."""
    providers = providers_for(rt, portal)
    if not providers:
        return 0
    codes = [str(p.get("code", "")) for p in providers]
    rt.registry.providers_pending(portal.key, codes)
    rt.portals.forget(portal.key)
    try:
        enqueue_many([(SENDER_ADD.name, {**p, "portal": portal.key}) for p in providers], rt)
    except JobRefused as exc:  # a provider the settings describe wrongly: the install itself stands
        rt.registry.providers_pending(portal.key, [])
        log.error(
            "portal %s: SMS providers not registered, fix B24Q_PROVIDERS or the portal's list: %s", portal.key, exc
        )
        return 0
    return len(providers)
