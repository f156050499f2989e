"""The Bitrix24 application's lifecycle: install, update and uninstall events, and the auth blocks of
other events (bitrix24-facts.md §7). The HTTP routes (`tasks.http`) only parse and answer; what an event
means for a portal is decided here, so a command or a test can drive it without HTTP.

Trust: an install names its portal and carries a fresh access token; it is believed once one `app.info`
call with that token, on the portal it names, succeeds (§7.3: the docs say to validate the install's
token against the API). Every later event must carry the `application_token` stored at install, compared
in constant time; an update carries a *new* one (§7.3), so an update whose token differs is believed
only if its access token works on the portal as registered. Nothing an unproven event says is acted on.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tasks.jobs import KINDS_BY_TASK, SENDER_ADD
from tasks.producer import enqueue_many, resume_parked
from workers.bitrix.client import Credentials
from workers.errors import (
    ConfigError,
    EndpointRefused,
    JobRefused,
    QueryLimitExceeded,
    RestError,
    ServerError,
    TransportError,
)
from workers.events import events
from workers.portals.registry import Portal
from workers.runtime import Runtime

log = logging.getLogger(__name__)

#: Events b24q binds at install so that it hears of uninstalls and updates (§7.2: `event.bind`).
BOUND_EVENTS = ("ONAPPUNINSTALL", "ONAPPUPDATE")
#: How the event handler's URL is built from `B24Q_HTTP_PUBLIC_URL`.
EVENTS_PATH = "/b24/events"


class Unverified(Exception):
    """The portal could not confirm or deny an event's token just now."""


@dataclass(frozen=True)
class Outcome:
    """What an event led to: `applied`, `ignored` (nothing to do) or `refused` (unproven: `status` says
    how the HTTP answer refuses it)."""

    result: str
    portal: str = ""
    detail: str = ""
    status: int = 200

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result, "portal": self.portal, "detail": self.detail}


def plan_of(app_info: Mapping[str, Any]) -> str | None:
    """The rate-limit plan a license implies (§7.4): family `ent` → enterprise (5/250), a self-hosted
    license → box (no cloud limit), any other → standard (2/50). The mapping is an inference from
    Bitrix24's own `isEnterprise` check; None when `app.info` names no license."""
    license_ = str(app_info.get("LICENSE") or "")
    if not license_:
        return None
    if license_.endswith("_selfhosted"):
        return "box"
    return "enterprise" if str(app_info.get("LICENSE_FAMILY") or "") == "ent" else "standard"


def _same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def install_auth(form: Mapping[str, Any], query: Mapping[str, str]) -> dict[str, Any]:
    """The `auth` block of an install, from either shape Bitrix24 sends (§7.1, §7.6): the ONAPPINSTALL
    event (`auth[...]`, lower case) or the installer page's POST (`AUTH_ID`, `REFRESH_ID`, `member_id`,
    `APPLICATION_TOKEN`, with `DOMAIN` and `PROTOCOL` in the query string)."""
    auth = form.get("auth")
    if isinstance(auth, Mapping):
        return dict(auth)
    domain = str(query.get("DOMAIN") or "")
    scheme = "https" if str(query.get("PROTOCOL", "1")) == "1" else "http"
    return {
        "access_token": form.get("AUTH_ID"),
        "refresh_token": form.get("REFRESH_ID"),
        "expires_in": form.get("AUTH_EXPIRES"),
        "member_id": form.get("member_id"),
        "application_token": form.get("APPLICATION_TOKEN"),
        "domain": domain,
        "client_endpoint": f"{scheme}://{domain}/rest/" if domain else "",
        "status": form.get("status"),
    }


class Lifecycle:
    """Applies application events to the registry, the parked jobs and the dead letters."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # -- dispatch ----------------------------------------------------------------------------------------

    def handle(self, form: Mapping[str, Any], query: Mapping[str, str] | None = None) -> Outcome:
        """An event or install POST as Bitrix24 sends it (PHP-bracket form, decoded)."""
        event = str(form.get("event") or "").upper()
        if not event and ("AUTH_ID" in form or "auth" in form):
            event = "ONAPPINSTALL"  # the installer page's POST carries no event name
        try:
            if event == "ONAPPINSTALL":
                outcome = self.install(form, query or {})
            elif event == "ONAPPUNINSTALL":
                outcome = self.uninstall(form)
            elif event == "ONAPPUPDATE":
                outcome = self.update(form)
            else:
                outcome = self.other(event, form)
        except Unverified as exc:
            outcome = Outcome(
                "refused", detail=f"the portal could not confirm the event's token now ({exc})", status=503
            )
        events.app_event(event or "(none)", outcome.result)
        if outcome.result == "refused":
            log.warning("event %s refused: %s", event or "(none)", outcome.detail)
        else:
            log.info("event %s for portal %s: %s %s", event, outcome.portal, outcome.result, outcome.detail)
        return outcome

    def _portal_of(self, auth: Mapping[str, Any]) -> Portal | None:
        for name in (auth.get("member_id"), auth.get("domain")):
            if name and (key := self.rt.registry.resolve(str(name))) is not None:
                return self.rt.registry.get(key)
        return None

    def _registered_by_hand(self, member_id: str, endpoint: str) -> Portal | None:
        """A portal added with `b24q portal add` before the app was installed (no aliases yet): the install
        takes it over rather than registering the same portal twice (two keys would be two buckets)."""
        for portal in self.rt.registry.list():
            if portal.kind == "oauth" and (portal.member_id == member_id or portal.endpoint == endpoint):
                return portal
        return None

    def _app_info(self, endpoint: str, access_token: str, portal: Portal | None = None) -> dict[str, Any] | None:
        """`app.info` with this token on this portal; None if the portal does not accept the token.

        Sent at once: Bitrix24 calls slow handlers less often and never repeats an event (§7.1), and one
        request fits the burst margin b24q's limiter leaves. Only if the portal answers 503 does it wait
        for a slot of the pool-wide limiter like any request. Raises `Unverified` when the portal could not
        say (over its limit even so, down, unreachable).
        """
        creds = Credentials(endpoint, access_token)
        for attempt in range(3):
            if attempt and portal is not None:
                limits = portal.limits(self.rt.settings)
                time.sleep(self.rt.limiter.reserve(portal.key, limits, max_wait=10.0).wait)
            try:
                result = self.rt.client.call(creds, "app.info", {}).result
            except QueryLimitExceeded:
                if portal is not None:
                    self.rt.limiter.set_full(portal.key, portal.limits(self.rt.settings))
                else:
                    time.sleep(0.5 * (attempt + 1))
                continue
            except (ServerError, TransportError) as exc:
                raise Unverified(exc.code) from None
            except RestError as exc:
                log.warning("app.info refused the event's token: %s", exc.code)
                return None
            return dict(result) if isinstance(result, Mapping) else {}
        raise Unverified("QUERY_LIMIT_EXCEEDED")

    # -- the events ----------------------------------------------------------------------------------------

    def install(self, form: Mapping[str, Any], query: Mapping[str, str]) -> Outcome:
        auth = install_auth(form, query)
        member_id = str(auth.get("member_id") or "")
        endpoint = str(auth.get("client_endpoint") or "")
        access = str(auth.get("access_token") or "")
        if not member_id or not endpoint or not access or not auth.get("refresh_token"):
            return Outcome("refused", detail="an install needs member_id, client_endpoint and a token pair", status=400)
        endpoints = self.rt.registry.endpoints
        try:
            endpoint = endpoints.shape(endpoint)  # local: scheme, authority, port
            existing = self._portal_of(auth) or self._registered_by_hand(member_id, endpoint)
            current = existing.endpoint if existing is not None else ""
            endpoint = endpoints.check(endpoint, "client_endpoint", current)  # then the host and its addresses
        except EndpointRefused as exc:
            return Outcome("refused", detail=str(exc), status=403)
        except ConfigError as exc:
            return Outcome("refused", detail=str(exc), status=400)
        if existing is not None and existing.member_id and existing.member_id != member_id:
            return Outcome("refused", detail="the domain belongs to another registered portal", status=409)
        if (
            existing is not None
            and existing.application_token
            and urlsplit(current).hostname != urlsplit(endpoint).hostname
            and not _same(str(auth.get("application_token") or ""), existing.application_token)
        ):
            # the portal answering the token need not be the one member_id names: moving a registered
            # portal to another host takes its application_token (or removing it by hand first)
            return Outcome("refused", detail="a registered portal moved to another host without its token", status=409)
        info = self._app_info(endpoint, access, existing)
        if info is None:
            return Outcome("refused", detail="the portal did not accept the install's token (app.info)", status=401)
        key = existing.key if existing is not None else member_id
        data = form.get("data") if isinstance(form.get("data"), Mapping) else {}
        version = str((data or {}).get("VERSION") or info.get("VERSION") or "")
        portal = self.rt.registry.install(
            key,
            {**auth, "client_endpoint": endpoint},
            str(auth.get("application_token") or ""),
            version,
            plan_of(info),
        )
        self._bind_events(portal)
        providers = self.register_providers(portal)
        resumed = resume_parked(key, self.rt)
        return Outcome(
            "applied",
            key,
            f"plan {portal.plan} ({portal.plan_from}), {providers} provider(s) to register, {resumed} job(s) resumed",
        )

    def uninstall(self, form: Mapping[str, Any]) -> Outcome:
        auth = form.get("auth") if isinstance(form.get("auth"), Mapping) else {}
        portal = self._portal_of(auth or {})
        if portal is None:
            return Outcome("ignored", detail="no such portal")
        if not _same(str((auth or {}).get("application_token") or ""), portal.application_token):
            return Outcome("refused", portal.key, "application_token does not match", status=401)
        self.rt.registry.mark_uninstalled(portal.key)
        self.rt.portals.forget(portal.key)
        ended = self.end_parked(portal.key)
        return Outcome("applied", portal.key, f"uninstalled; {ended} parked job(s) dead-lettered")

    def update(self, form: Mapping[str, Any]) -> Outcome:
        auth = form.get("auth") if isinstance(form.get("auth"), Mapping) else {}
        auth = dict(auth or {})
        portal = self._portal_of(auth)
        if portal is None:
            return Outcome("ignored", detail="no such portal")
        token = str(auth.get("application_token") or "")
        if not _same(token, portal.application_token) and (
            not auth.get("access_token") or self._app_info(portal.endpoint, str(auth["access_token"]), portal) is None
        ):
            return Outcome("refused", portal.key, "application_token does not match and the token was refused", 401)
        data = form.get("data") if isinstance(form.get("data"), Mapping) else {}
        version = str((data or {}).get("VERSION") or portal.app_version)
        if token:
            self.rt.registry.set_application_token(portal.key, token, version)
        self.rt.registry.offer_auth(portal.key, auth)
        self.rt.portals.forget(portal.key)
        fresh = self.rt.registry.get(portal.key) or portal
        self._bind_events(fresh)  # an update may remove the app's handlers too (§7.2, event-bind.md)
        providers = self.register_providers(fresh)
        return Outcome("applied", portal.key, f"version {version}; {providers} provider(s) to register again")

    def other(self, event: str, form: Mapping[str, Any]) -> Outcome:
        """Any other event: proven by its application_token, its `auth` block may carry newer tokens."""
        auth = form.get("auth") if isinstance(form.get("auth"), Mapping) else None
        if not auth:
            return Outcome("ignored", detail="no auth block")  # §5.2: auth may be missing
        portal = self._portal_of(auth)
        if portal is None:
            return Outcome("ignored", detail="no such portal")
        if not _same(str(auth.get("application_token") or ""), portal.application_token):
            return Outcome("refused", portal.key, "application_token does not match", status=401)
        if not self.rt.registry.offer_auth(portal.key, auth):
            return Outcome("ignored", portal.key, "no newer tokens")
        self.rt.portals.forget(portal.key)
        resumed = resume_parked(portal.key, self.rt) if portal.state == "reauth" else 0
        return Outcome("applied", portal.key, f"newer tokens stored; {resumed} job(s) resumed")

    # -- what an event sets in motion -------------------------------------------------------------------------

    def end_parked(self, key: str) -> int:
        """Parked jobs of an uninstalled portal become dead letters `APP_UNINSTALLED` (replayable)."""
        rt = self.rt
        count = 0
        for envelope in rt.parking.parked(key):
            kind = KINDS_BY_TASK.get(envelope["task"])
            name = kind.name if kind is not None else envelope["task"]
            rt.dead.add(
                envelope["id"],
                envelope["task"],
                name,
                key,
                envelope["kwargs"],
                "APP_UNINSTALLED",
                "the application was uninstalled from the portal; replay after a reinstall",
                0,
            )
            rt.ledger.finish(envelope["id"], key, "dead", "APP_UNINSTALLED")
            rt.parking.release(key, envelope["id"])
            events.dead_letter(name, key, "APP_UNINSTALLED")
            count += 1
        return count

    def _bind_events(self, portal: Portal) -> None:
        """Ask the portal to send uninstall and update events here (`event.bind`, app context)."""
        base = self.rt.settings.http_public_url.rstrip("/")
        if not base:
            return
        for event in BOUND_EVENTS:
            try:
                self.rt.dispatcher.run(
                    portal.key, "event.bind", {"event": event, "handler": base + EVENTS_PATH}, wait=30.0
                )
            except RestError as exc:
                if "already binded" not in exc.description.lower():  # Src api/event.php (§7.2)
                    log.warning("portal %s: event.bind %s failed: %s", portal.key, event, exc.code)
            except TransportError as exc:
                log.warning("portal %s: event.bind %s failed: %s", portal.key, event, exc.code)

    def providers_for(self, portal: Portal) -> list[dict[str, Any]]:
        """The SMS providers the portal should have: its own list, else `B24Q_PROVIDERS`."""
        return portal.provider_list(self.rt.settings)

    def register_providers(self, portal: Portal) -> int:
        """Enqueue `messageservice.sender.add` for each provider (through the limiter and batch path like
        any job); the portal's status jobs wait until every one is back (`Portal.providers_pending`)."""
        providers = self.providers_for(portal)
        if not providers:
            return 0
        codes = [str(p.get("code", "")) for p in providers]
        self.rt.registry.providers_pending(portal.key, codes)
        self.rt.portals.forget(portal.key)
        try:
            enqueue_many([(SENDER_ADD.name, {**p, "portal": portal.key}) for p in providers], self.rt)
        except JobRefused as exc:  # a provider the settings describe wrongly: the install itself stands
            self.rt.registry.providers_pending(portal.key, [])
            log.error(
                "portal %s: SMS providers not registered, fix B24Q_PROVIDERS or the portal's list: %s", portal.key, exc
            )
            return 0
        return len(providers)
