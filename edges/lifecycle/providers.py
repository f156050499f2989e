"""What an install or an update sets up on its portal: the application's event handlers (`event.bind`, so
that b24q hears of uninstalls and updates) and the SMS providers (`messageservice.sender.add` jobs). Both go
the way every call to a portal goes: through the dispatcher's lanes, or as jobs."""

from __future__ import annotations

import logging
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
