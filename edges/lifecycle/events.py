"""What each application event does to a portal: install, update, uninstall, and any other event's auth block
(the trust rules: `edges.lifecycle`). `Lifecycle.handle` takes an event as Bitrix24 posts it and says what it
led to (`Outcome`); a token an unproven event carries is verified first (`verification`)."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edges.lifecycle.providers import bind_events, bind_events_soon, providers_for, register_providers
from edges.lifecycle.verification import EventVerification, Later, Unverified
from tasks.jobs import KINDS_BY_TASK
from tasks.producer import resume_parked
from workers.errors import ConfigError, EndpointRefused
from workers.events import events
from workers.portals.endpoints import domain_of
from workers.portals.record import Portal
from workers.portals.state import PortalEvent, PortalState, applies
from workers.records.outcomes import JobRef
from workers.retries import UNINSTALLED
from workers.runtime import Runtime

log = logging.getLogger("edges.lifecycle")  # one logger for the package: operators filter on it (README)


@dataclass(frozen=True)
class Outcome:
    """What an event led to: `applied`, `ignored` (nothing to do), `deferred` (handled again once its token
    can be verified, 202) or `refused` (unproven: `status` says how the HTTP answer refuses it)."""

    result: str
    portal: str = ""
    detail: str = ""
    status: int = 200
    retry_after: float = 0.0

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


def _auth_block(form: Mapping[str, Any]) -> dict[str, Any]:
    auth = form.get("auth")
    return dict(auth) if isinstance(auth, Mapping) else {}


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

    def __init__(self, rt: Runtime, deferrals: int = 0) -> None:
        self.rt = rt
        #: how many times this event was put off to a slot booked for its verification (`Later`)
        self.deferrals = deferrals
        self.verifier = EventVerification(rt.verification, rt.dispatcher.once, deferrals)

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
        except Later as later:
            again = Lifecycle(self.rt, self.deferrals + 1)
            timer = threading.Timer(later.wait, again.handle, args=(form, query))
            timer.daemon = True
            timer.start()
            detail = f"verifying the event's token in {later.wait:.1f} s, at its slot in the portal's bucket"
            outcome = Outcome("deferred", detail=detail, status=202)
        except Unverified as exc:
            outcome = Outcome(
                "refused",
                detail=f"the portal could not confirm the event's token now ({exc})",
                status=exc.status,
                retry_after=exc.retry_after,
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

    # -- the events ----------------------------------------------------------------------------------------

    def _install_refusal(
        self, existing: Portal | None, member_id: str, endpoint: str, auth: Mapping[str, Any]
    ) -> Outcome | None:
        """Why an install may not (re)register `existing` (or a new portal) at `endpoint`, if it may not."""
        current = existing.endpoint if existing is not None else ""
        try:  # the host (a cloud zone, or the portal's own), then its addresses
            self.rt.registry.endpoints.check(endpoint, "client_endpoint", current)
        except ConfigError as exc:
            return Outcome("refused", detail=str(exc), status=403)
        if existing is None:
            return None
        if existing.member_id and existing.member_id != member_id:
            return Outcome("refused", detail="the domain belongs to another registered portal", status=409)
        if (
            existing.application_token
            and urlsplit(current).hostname != urlsplit(endpoint).hostname
            and not _same(str(auth.get("application_token") or ""), existing.application_token)
        ):
            # the portal answering the token need not be the one member_id names: moving a registered
            # portal to another host takes its application_token (or removing it by hand first)
            return Outcome("refused", detail="a registered portal moved to another host without its token", status=409)
        return None

    def install(self, form: Mapping[str, Any], query: Mapping[str, str]) -> Outcome:
        auth = install_auth(form, query)
        member_id = str(auth.get("member_id") or "")
        endpoint = str(auth.get("client_endpoint") or "")
        access = str(auth.get("access_token") or "")
        if not member_id or not endpoint or not access or not auth.get("refresh_token"):
            return Outcome("refused", detail="an install needs member_id, client_endpoint and a token pair", status=400)
        try:
            endpoint = self.rt.registry.endpoints.shape(endpoint)  # local: scheme, authority, port
        except EndpointRefused as exc:
            return Outcome("refused", detail=str(exc), status=403)
        except ConfigError as exc:
            return Outcome("refused", detail=str(exc), status=400)
        # by its names, a few reads (a portal added by hand has its member_id and domain as aliases too):
        # never a scan of the registry, whatever an install claims
        existing = self._portal_of(auth) or self._portal_of({"domain": domain_of(endpoint)})
        if (refusal := self._install_refusal(existing, member_id, endpoint, auth)) is not None:
            return refusal
        info = self.verifier.verify(endpoint, access, existing)
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
        bind_events(self.rt, portal)
        providers = self.register_providers(portal)
        resumed = resume_parked(key, self.rt)
        return Outcome(
            "applied",
            key,
            f"plan {portal.plan} ({portal.plan_from}), {providers} provider(s) to register, {resumed} job(s) resumed",
        )

    def uninstall(self, form: Mapping[str, Any]) -> Outcome:
        auth = _auth_block(form)
        token = str(auth.get("application_token") or "")
        if not token:  # §7.2: the application_token is the only proof an uninstall has
            return Outcome("refused", detail="an uninstall carries its application_token", status=401)
        portal = self._portal_of(auth)
        if portal is None:
            return Outcome("ignored", detail="no such portal")
        if portal.state == PortalState.UNINSTALLED:
            return Outcome("ignored", portal.key, "already uninstalled")
        if not _same(token, portal.application_token):
            return Outcome("refused", portal.key, "application_token does not match", status=401)
        self.rt.registry.mark_uninstalled(portal.key)
        self.rt.portals.forget(portal.key)
        ended = self.end_parked(portal.key)
        return Outcome("applied", portal.key, f"uninstalled; {ended} parked job(s) dead-lettered")

    def update(self, form: Mapping[str, Any]) -> Outcome:
        auth = _auth_block(form)
        token = str(auth.get("application_token") or "")
        if not token and not auth.get("access_token"):
            return Outcome("refused", detail="an update carries its application_token and tokens", status=401)
        portal = self._portal_of(auth)
        if portal is None:
            return Outcome("ignored", detail="no such portal")
        if not applies(portal.state, PortalEvent.TOKENS_ROTATED):  # uninstalled: only an install brings it back
            return Outcome("refused", portal.key, "the application is uninstalled from this portal", status=409)
        access = str(auth.get("access_token") or "")
        if not _same(token, portal.application_token) and (
            not access or self.verifier.verify(portal.endpoint, access, portal) is None
        ):
            return Outcome("refused", portal.key, "application_token does not match and the token was refused", 401)
        data = form.get("data") if isinstance(form.get("data"), Mapping) else {}
        version = str((data or {}).get("VERSION") or portal.app_version)
        if token:
            self.rt.registry.set_application_token(portal.key, token, version)
        self.rt.registry.offer_auth(portal.key, auth)
        self.rt.portals.forget(portal.key)
        fresh = self.rt.registry.get(portal.key) or portal
        # an update may remove the app's handlers too (§7.2, event-bind.md); bound again without keeping the
        # portal waiting for the answer (`Binder`)
        bind_events_soon(self.rt, fresh)
        providers = self.register_providers(fresh)
        return Outcome("applied", portal.key, f"version {version}; {providers} provider(s) to register again")

    def other(self, event: str, form: Mapping[str, Any]) -> Outcome:
        """Any other event: proven by its application_token, its `auth` block may carry newer tokens."""
        auth = _auth_block(form)
        if not auth:
            return Outcome("ignored", detail="no auth block")  # §5.2: auth may be missing
        token = str(auth.get("application_token") or "")
        if not token:
            return Outcome("refused", detail="application_token missing", status=401)
        portal = self._portal_of(auth)
        if portal is None:
            return Outcome("ignored", detail="no such portal")
        if not _same(token, portal.application_token):
            return Outcome("refused", portal.key, "application_token does not match", status=401)
        if not self.rt.registry.offer_auth(portal.key, auth):
            return Outcome("ignored", portal.key, "no newer tokens")
        self.rt.portals.forget(portal.key)
        resumed = resume_parked(portal.key, self.rt) if portal.state == PortalState.REAUTH else 0
        return Outcome("applied", portal.key, f"newer tokens stored; {resumed} job(s) resumed")

    # -- what an event sets in motion -------------------------------------------------------------------------

    def end_parked(self, key: str) -> int:
        """Parked jobs of an uninstalled portal become dead letters `APP_UNINSTALLED` (replayable)."""
        count = 0
        for envelope in self.rt.parking.parked(key):
            kind = KINDS_BY_TASK.get(envelope["task"])
            name = kind.name if kind is not None else envelope["task"]
            job = JobRef(envelope["id"], name, envelope["task"], key)
            self.rt.outcomes.dead_while_parked(job, envelope["kwargs"], UNINSTALLED)
            count += 1
        return count

    def providers_for(self, portal: Portal) -> list[dict[str, Any]]:
        """The SMS providers the portal should have: its own list, else `B24Q_PROVIDERS`."""
        return providers_for(self.rt, portal)

    def register_providers(self, portal: Portal) -> int:
        """Enqueue `messageservice.sender.add` for each provider; the portal's status jobs wait for them."""
        return register_providers(self.rt, portal)
