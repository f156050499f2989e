"""The :class:`Emulator`: many Bitrix24 portals, their OAuth server and an admin API behind one loopback server.

URL layout (a portal is a path prefix, since there is no DNS here)::

    {base}/{domain}/rest/{method}[.json]                  OAuth REST (client_endpoint = {base}/{domain}/rest/)
    {base}/{domain}/rest/{user_id}/{code}/{method}[.json] incoming webhook (not application context)
    {base}/{former_domain}/rest/...                       302 to the same path on the portal's new domain
    {base}/oauth/token/                                   OAuth server (refresh_token grant)
    {base}/_emulator/...                                  admin / inspection API (see emulator.admin)

Everything the admin API does is also a Python method here, so in-process tests need no HTTP for setup.

The application lifecycle (facts §7): :meth:`Emulator.install_app`, :meth:`Emulator.update_app` and
:meth:`Emulator.uninstall` change the installation and POST ONAPPINSTALL / ONAPPUPDATE / ONAPPUNINSTALL to the
app's handlers (see :mod:`emulator.events`); :meth:`Emulator.move_portal` changes a portal's domain.
Events are POSTed synchronously by the thread that made the change, with no portal lock held, so a handler may
call the portal back (e.g. ``app.info`` from its ONAPPINSTALL handler) before it answers.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from . import events
from .admin import handle_admin
from .events import Delivery, Outgoing
from .oauth import OAuthServer
from .rest import Reply, RestDispatcher, RestRequest, json_reply
from .server import EmulatorHTTPServer
from .state import (
    APP_STATUSES,
    AccessToken,
    Installation,
    Portal,
    PortalOptions,
    RefreshToken,
    Registry,
    Sender,
    Webhook,
    application_token_for,
)
from .state import Message as MessageRecord

Clock = Callable[[], float]

DEFAULT_CLIENT_ID = "local.b24q.emulator"
DEFAULT_CLIENT_SECRET = "emulator-secret"
DEFAULT_HANDLER = "https://handler.b24q.test/sms"
REDIRECT_HTML = (
    b"<html>\r\n<head><title>302 Found</title></head>\r\n<body>\r\n<center><h1>302 Found</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class PortalInfo:
    """What an app learns at install time, plus the portal's webhook and OAuth URLs."""

    domain: str
    member_id: str
    client_endpoint: str
    server_endpoint: str
    access_token: str
    refresh_token: str
    expires: int
    expires_in: int
    scope: str
    user_id: int
    client_id: str
    client_secret: str
    webhook_url: str
    oauth_url: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InstallResult:
    """What :meth:`Emulator.install_app` did: the new token chain (PortalInfo), the portal+app
    ``application_token``, and how the install handler answered (``delivery`` None: the app has none)."""

    info: PortalInfo
    application_token: str
    version: int
    delivery: Delivery | None

    def to_dict(self) -> dict[str, Any]:
        out = self.info.to_dict()
        out["application_token"] = self.application_token
        out["version"] = self.version
        out["handler"] = self.delivery.handler if self.delivery else None
        out["handler_status"] = self.delivery.status if self.delivery else None
        if self.delivery is not None and self.delivery.error is not None:
            out["error"] = self.delivery.error
        return out


@dataclass(frozen=True)
class UpdateResult:
    """What :meth:`Emulator.update_app` did: a new token chain, the new ``application_token`` and version, the
    app's senders it removed, and one delivery per ONAPPUPDATE handler."""

    info: PortalInfo
    application_token: str
    version: int
    previous_version: int
    senders_removed: list[str] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    handlers_removed: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = self.info.to_dict()
        out.update(
            application_token=self.application_token,
            version=self.version,
            previous_version=self.previous_version,
            senders_removed=list(self.senders_removed),
            handlers_removed=self.handlers_removed,
            events=[d.to_dict() for d in self.deliveries],
        )
        return out


@dataclass(frozen=True)
class UninstallResult:
    """What :meth:`Emulator.uninstall` did (CleanApp): one delivery per ONAPPUNINSTALL handler, and what it removed."""

    deliveries: list[Delivery] = field(default_factory=list)
    handlers_removed: int = 0
    senders_removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "events": [d.to_dict() for d in self.deliveries],
            "handlers_removed": self.handlers_removed,
            "senders_removed": list(self.senders_removed),
        }


def _check_version(version: Any) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    return version


def _check_user(user_id: Any) -> None:
    if user_id is not None and (not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 1):
        raise ValueError(f"user_id must be a positive integer, got {user_id!r}")


def _check_domain(domain: str) -> str:
    name = domain.strip().lower()
    if not name or "/" in name or "?" in name or name.startswith("_") or name in ("oauth", "rest"):
        raise ValueError(f"invalid portal domain {domain!r}")
    return name


class Emulator:
    """Bitrix24 cloud portals on loopback.

    ``clock`` (monotonic seconds) drives the leaky bucket, the operating limit and token expiry, so tests can
    inject a fake one; ``wall_clock`` (unix seconds) only feeds reported times (``expires``, ``time``) and says
    where a whole unix second begins (an operating bucket starts at its first call's, facts §1.3).
    ``portal_defaults`` are :class:`~emulator.state.PortalOptions` fields applied to every new portal (e.g.
    ``rate=0`` for an unlimited emulator, ``auto_messages=True``).  The socket is bound at construction so
    :attr:`url` is known before :meth:`start`.  ``app_handler`` is the default app's install URL (an API-only
    app in callback mode, facts §7.1b); ``event_timeout`` bounds each event POST.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        seed: Any = 0,
        app_handler: str | None = None,
        event_timeout: float = 5.0,
        **portal_defaults: Any,
    ) -> None:
        PortalOptions.resolve(portal_defaults)  # fail fast on a typo
        self.portal_defaults = dict(portal_defaults)
        self.client_id = client_id
        self.client_secret = client_secret
        self.seed = seed
        self.event_timeout = event_timeout
        self.registry = Registry(clock, wall_clock)
        self.registry.register_app(client_id, client_secret, install_handler=app_handler)
        self._http = EmulatorHTTPServer((host, port), self.route)
        bound_host, bound_port = self._http.server_address[:2]
        self.host, self.port = str(bound_host), int(bound_port)
        self.rest = RestDispatcher(self.registry)
        self.oauth = OAuthServer(self.registry, self.url)
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def oauth_url(self) -> str:
        return f"{self.url}/oauth/token/"

    def start(self) -> Emulator:
        """Serve in a background daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="b24-emulator",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open keep-alive connections, release the port."""
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._http.close_connections()
        self._http.server_close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- routing ---------------------------------------------------------------------------------------------

    def route(
        self, http_method: str, path: str, query: str, headers: Mapping[str, str], body: bytes, client_ip: str
    ) -> Reply:
        if path == "/_emulator" or path.startswith("/_emulator/"):
            return handle_admin(self, http_method, path, query, body)
        if path.rstrip("/") == "/oauth/token":
            return self.oauth.handle(http_method, query, headers, body)
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[1] == "rest":
            if self.registry.portal(parts[0]) is None and parts[0].lower() in self.registry.moved:
                return self._redirect(parts[0], path, query)
            tail = parts[2:]
            webhook: tuple[int, str] | None = None
            if len(tail) == 1:
                method = tail[0]
            elif len(tail) in (2, 3) and tail[0].isdigit():
                webhook = (int(tail[0]), tail[1])
                method = tail[2] if len(tail) == 3 else ""
            else:
                method = "/".join(tail)
            return self.rest.handle(
                RestRequest(
                    domain=parts[0],
                    method=method,
                    http_method=http_method,
                    query=query,
                    headers=headers,
                    body=body,
                    client_ip=client_ip,
                    webhook=webhook,
                )
            )
        return json_reply(404, {"error": "NOT_FOUND", "error_description": f"No route for {path}"})

    def _redirect(self, old: str, path: str, query: str) -> Reply:
        """A REST call to a former domain: 302 to the same path and query on the current one, as the real
        portal does (facts §7.5; following it turns a POST into a GET without parameters, so clients re-POST)."""
        new = self.registry.moved.get(old.lower())
        portal = self.registry.portal(new) if new else None
        if new is None or portal is None:
            return json_reply(404, {"error": "PORTAL_NOT_FOUND", "error_description": f"No portal {old!r}"})
        with portal.lock:
            portal.counters.redirects += 1
        rest = path[path.index(old) + len(old) :]
        location = f"{self.url}/{new}{rest}" + (f"?{query}" if query else "")
        return Reply(status=302, body=REDIRECT_HTML, content_type="text/html", headers={"Location": location})

    # --- portals ---------------------------------------------------------------------------------------------

    def _portal(self, domain: str) -> Portal:
        return self.registry.require(domain)

    def _info(self, portal: Portal, client_id: str, client_secret: str, user_id: int) -> PortalInfo:
        access, refresh = self.registry.issue_pair(portal, client_id, user_id)
        return self._info_from(portal, client_id, client_secret, access, refresh)

    def _info_from(
        self, portal: Portal, client_id: str, client_secret: str, access: AccessToken, refresh: RefreshToken
    ) -> PortalInfo:
        user_id = access.user_id
        hook = next(iter(portal.webhooks.values()))
        return PortalInfo(
            domain=portal.domain,
            member_id=portal.member_id,
            client_endpoint=f"{self.url}/{portal.domain}/rest/",
            server_endpoint=f"{self.url}/oauth/rest/",
            access_token=access.token,
            refresh_token=refresh.token,
            expires=access.expires_wall,
            expires_in=int(portal.options.token_ttl),
            scope=portal.options.scope,
            user_id=user_id,
            client_id=client_id,
            client_secret=client_secret,
            webhook_url=f"{self.url}/{portal.domain}/rest/{hook.user_id}/{hook.code}/",
            oauth_url=self.oauth_url,
        )

    def add_portal(
        self,
        domain: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        senders: Iterable[str] = (),
        connectors: Iterable[str] = (),
        seed: Any = None,
        **options: Any,
    ) -> PortalInfo:
        """Create a portal with the app installed (first token chain issued) and an incoming webhook.

        ``options`` are :class:`~emulator.state.PortalOptions` fields (plan, rate, burst, refused_fill_bucket,
        op_cost, op_costs, operating_limit, operating_window, token_ttl, superseded_token_error, auto_messages,
        auto_connectors, time_block, admin, user_id, scope, ...).
        ``senders`` pre-registers sender CODEs for the app; ``connectors`` pre-registers connector ids.
        """
        name = _check_domain(domain)
        opts = PortalOptions.resolve(self.portal_defaults, options)
        cid = client_id or self.client_id
        secret = client_secret or (self.client_secret if cid == self.client_id else None)
        if secret is None:
            raise ValueError("client_secret is required for a client_id other than the emulator's default")
        self.registry.register_app(cid, secret)
        with self.registry.lock:
            if name in self.registry.portals:
                raise ValueError(f"portal {name!r} already exists")
            portal = Portal(
                name, opts, self.registry.clock, self.seed if seed is None else seed, self.registry.wall_clock
            )
            hook = Webhook(user_id=opts.user_id, code=secrets.token_hex(8))
            portal.webhooks[(hook.user_id, hook.code)] = hook
            self.registry.installation(portal, cid)
            self.registry.claim_domain(name)  # a former domain of a moved portal stops redirecting
            self.registry.portals[name] = portal
        for code in senders:
            self.add_sender(name, code, client_id=cid)
        for connector in connectors:
            self.add_connector(name, connector)
        return self._info(portal, cid, secret, opts.user_id)

    def issue_tokens(
        self,
        domain: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        user_id: int | None = None,
    ) -> PortalInfo:
        """Start another token chain (another user, or another app: installing it if needed)."""
        portal = self._portal(domain)
        cid = client_id or self.client_id
        secret = client_secret or self.registry.secret_of(cid)
        if secret is None:
            raise ValueError("client_secret is required for an unknown client_id")
        self.registry.register_app(cid, secret)
        with portal.lock:
            self.registry.installation(portal, cid).installed = True
            uid = portal.options.user_id if user_id is None else user_id
        return self._info(portal, cid, secret, uid)

    def portals(self) -> list[str]:
        return sorted(self.registry.portals)

    def set_options(self, domain: str, **options: Any) -> dict[str, Any]:
        """Change portal options at run time (e.g. burst, op_cost, operating_limit, time_block)."""
        portal = self._portal(domain)
        with portal.lock:
            current = portal.options.to_dict()
            if "plan" in options and "rate" not in options and "burst" not in options:
                current.pop("rate", None)
                current.pop("burst", None)
            portal.apply_options(PortalOptions.resolve(current, options))
            return portal.options.to_dict()

    def set_faults(self, domain: str, **faults: Any) -> dict[str, Any]:
        """Set fault knobs (see :mod:`emulator.faults`); ``seed=`` reseeds the portal's RNG."""
        portal = self._portal(domain)
        with portal.lock:
            portal.faults.update(**faults)
            if "seed" in faults:
                portal.seed = faults["seed"]
                portal.rng.seed(f"{faults['seed']}:{portal.domain}")
            return portal.faults.to_dict()

    def expire_tokens(self, domain: str) -> int:
        """Expire every current access token of the portal now (refresh tokens stay valid)."""
        return self.registry.expire_access_tokens(self._portal(domain).domain)

    def uninstall(
        self,
        domain: str,
        *,
        client_id: str | None = None,
        oauth_error: str = "NOT_INSTALLED",
        clean: bool | int = False,
    ) -> UninstallResult:
        """Uninstall the app: REST calls with its tokens fail, and refreshes get ``oauth_error``.

        Then as Src ``CRestUtil::CleanApp`` (facts §7.2): ONAPPUNINSTALL goes to each handler the app bound for
        it on this portal (``data[CLEAN]`` = ``clean``; auth without tokens), and all of the app's event handlers
        are deleted.  The app's SMS providers go too: messageservice's ``onRestAppDelete`` runs on the same
        OnRestAppDelete event.
        """
        if oauth_error not in ("NOT_INSTALLED", "invalid_client"):
            raise ValueError("oauth_error must be 'NOT_INSTALLED' or 'invalid_client'")
        portal = self._portal(domain)
        cid = client_id or self.client_id
        ts = self.registry.wall_clock()
        with portal.lock:
            inst = portal.installations.get(cid)
            if inst is None:
                inst = portal.installations[cid] = Installation(client_id=cid)
            inst.installed = False
            inst.oauth_error = oauth_error
            outgoing = [
                Outgoing(
                    event="ONAPPUNINSTALL",
                    handler=row.handler,
                    payload=events.payload(
                        "ONAPPUNINSTALL",
                        {"LANGUAGE_ID": inst.language_id, "CLEAN": 1 if clean else 0},
                        self._bare_auth(portal, inst),
                        ts,
                        event_handler_id=row.id,
                    ),
                    client_id=cid,
                    event_handler_id=row.id,
                )
                for row in portal.handlers_of(cid, "ONAPPUNINSTALL")
                if not row.offline  # offline handlers would queue it for event.offline.get (not emulated)
            ]
            removed = portal.remove_handlers(portal.handlers_of(cid))
            senders = self._remove_senders(portal, cid)
        return UninstallResult(
            deliveries=self._send(portal, outgoing), handlers_removed=removed, senders_removed=senders
        )

    # --- the application lifecycle (facts §7) -----------------------------------------------------------------

    def register_app(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        install_handler: str | Literal[False] | None = False,
        status: str | None = None,
    ) -> dict[str, Any]:
        """Register an app, or update a known one (``install_handler=None`` clears it; False leaves it)."""
        cid = client_id or self.client_id
        return self.registry.register_app(cid, client_secret, install_handler=install_handler, status=status).to_dict()

    def apps(self) -> list[dict[str, Any]]:
        with self.registry.lock:
            return [a.to_dict() for a in self.registry.apps.values()]

    def install_app(
        self,
        domain: str,
        *,
        client_id: str | None = None,
        version: int | None = None,
        user_id: int | None = None,
        language_id: str | None = None,
        status: str | None = None,
        new_application_token: bool = False,
    ) -> InstallResult:
        """(Re)install an app on a portal and POST ONAPPINSTALL to its install handler (facts §7.1b).

        Issues a new token chain for ``user_id`` (the installing admin), which is what the event carries.  The
        ``application_token`` is kept across reinstalls by default: whether a reinstall changes it is
        UNCONFIRMED (facts §7.3); ``new_application_token=True`` picks the other reading.  Tokens issued
        before an uninstall stay dead.  The app's ONAPPINSTALL bindings are replaced by its install URL, so
        ``event.get`` lists it: Src ``InstallApp`` binds the install URL as the handler (§7.1b) after
        ``EventTable::deleteAppInstaller``, matching the (⚠️ unconfirmed) §7.2 note that an install deletes the
        ONAPPINSTALL handler and recreates it only for callback-mode apps.  One attempt, no retry (§7.1).
        """
        portal = self._portal(domain)
        cid = client_id or self.client_id
        app = self.registry.require_app(cid)
        if version is not None:
            _check_version(version)
        _check_user(user_id)
        if status is not None and status not in APP_STATUSES:
            raise ValueError(f"status must be one of {list(APP_STATUSES)}")
        if language_id is not None and not (isinstance(language_id, str) and language_id.isalpha()):
            raise ValueError(f"language_id must be a language code such as 'en', got {language_id!r}")
        with portal.lock:
            previous = portal.installations.get(cid)
            if previous is not None and not previous.installed:
                self.registry.revoke_chains(portal.domain, cid)
            inst = self.registry.installation(portal, cid)
            inst.installed = True
            inst.version = version if version is not None else inst.version
            inst.language_id = language_id or inst.language_id
            inst.status = status or inst.status
            if new_application_token:
                inst.application_token = application_token_for(portal.member_id, app, secrets.token_hex(8))
            portal.remove_handlers(portal.handlers_of(cid, "ONAPPINSTALL"))
            if app.install_handler:
                portal.add_handler(cid, "ONAPPINSTALL", app.install_handler)
            uid = portal.options.user_id if user_id is None else user_id
            access, refresh = self.registry.issue_pair(portal, cid, uid)
            info = self._info_from(portal, cid, app.client_secret, access, refresh)
            outgoing = None
            if app.install_handler:
                data = {"VERSION": inst.version, "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": inst.language_id}
                body = events.payload("ONAPPINSTALL", data, self._full_auth(portal, inst, access, refresh), self._ts())
                outgoing = Outgoing("ONAPPINSTALL", app.install_handler, body, cid)
            token, installed_version = inst.application_token, inst.version
        sent = self._send(portal, [outgoing] if outgoing else [])
        return InstallResult(info, token, installed_version, sent[0] if sent else None)

    def update_app(
        self,
        domain: str,
        *,
        client_id: str | None = None,
        version: int | None = None,
        user_id: int | None = None,
        unbind_events: bool = False,
    ) -> UpdateResult:
        """Install a new version of an installed app and POST ONAPPUPDATE to its ONAPPUPDATE handlers (§7.2).

        VERSION goes up by one unless given; the ``application_token`` changes (D: ONAPPUPDATE carries "the
        updated application_token", §7.3); the app's SMS providers are deleted (messageservice
        ``onRestAppUpdate`` → ``onRestAppDelete``).  Each handler gets its own new token chain, for its
        ``auth_type`` user or else ``user_id``; the result carries one more chain for ``user_id``.  D's
        event-bind page says an update removes the app's "actions"; the source read for §7.2 removes only the
        senders, so handlers stay unless ``unbind_events=True`` (then they are deleted after the event is built).
        """
        portal = self._portal(domain)
        cid = client_id or self.client_id
        app = self.registry.require_app(cid)
        if version is not None:
            _check_version(version)
        _check_user(user_id)
        ts = self._ts()
        with portal.lock:
            inst = portal.installations.get(cid)
            if inst is None or not inst.installed:
                raise ValueError(f"app {cid!r} is not installed on {portal.domain}")
            previous = inst.version
            inst.version = previous + 1 if version is None else version
            inst.application_token = application_token_for(portal.member_id, app, secrets.token_hex(8))
            senders = self._remove_senders(portal, cid)
            uid = portal.options.user_id if user_id is None else user_id
            access, refresh = self.registry.issue_pair(portal, cid, uid)
            info = self._info_from(portal, cid, app.client_secret, access, refresh)
            data = {"VERSION": inst.version, "PREVIOUS_VERSION": previous, "LANGUAGE_ID": inst.language_id}
            outgoing = []
            for row in portal.handlers_of(cid, "ONAPPUPDATE"):
                if row.offline:
                    continue
                a, r = self.registry.issue_pair(portal, cid, row.user_id or uid)
                auth = self._full_auth(portal, inst, a, r)
                body = events.payload("ONAPPUPDATE", data, auth, ts, event_handler_id=row.id)
                outgoing.append(Outgoing("ONAPPUPDATE", row.handler, body, cid, event_handler_id=row.id))
            removed = portal.remove_handlers(portal.handlers_of(cid)) if unbind_events else 0
            token, new_version = inst.application_token, inst.version
        return UpdateResult(
            info=info,
            application_token=token,
            version=new_version,
            previous_version=previous,
            senders_removed=senders,
            deliveries=self._send(portal, outgoing),
            handlers_removed=removed,
        )

    def move_portal(self, domain: str, new_domain: str, *, stale_endpoints: bool = False) -> dict[str, Any]:
        """Change a portal's domain (facts §7.5): same member_id, same tokens, same webhook; REST calls to the old
        domain get a 302 to the new one.  ``state(old)`` is then a 404 (KeyError), ``state(new)`` works.

        Whether refresh answers and events name the new host right away is UNCONFIRMED (§7.5): by default they
        do; ``stale_endpoints=True`` keeps announcing the old ``client_endpoint`` / ``domain`` (which redirects).
        """
        portal = self._portal(domain)
        new = _check_domain(new_domain)
        with portal.lock:
            old = self.registry.move(portal, new)
            if not stale_endpoints:
                portal.endpoint_domain = new
            hook = next(iter(portal.webhooks.values()))
            return {
                "domain": new,
                "old_domain": old,
                "member_id": portal.member_id,
                "client_endpoint": f"{self.url}/{new}/rest/",
                "webhook_url": f"{self.url}/{new}/rest/{hook.user_id}/{hook.code}/",
                "announced_domain": portal.endpoint_domain,
            }

    # --- event plumbing ------------------------------------------------------------------------------------------

    def _ts(self) -> float:
        return self.registry.wall_clock()

    def _full_auth(
        self, portal: Portal, inst: Installation, access: AccessToken, refresh: RefreshToken
    ) -> dict[str, Any]:
        """The ``auth`` block of an event sent with tokens and a refresh token (facts §7.1b table, §7.6)."""
        return {
            "access_token": access.token,
            "expires": access.expires_wall,
            "expires_in": int(portal.options.token_ttl),
            "scope": portal.options.scope,
            "domain": portal.endpoint_domain,
            "server_endpoint": f"{self.url}/oauth/rest/",
            "status": inst.status,
            "client_endpoint": f"{self.url}/{portal.endpoint_domain}/rest/",
            "member_id": portal.member_id,
            "user_id": access.user_id,
            "refresh_token": refresh.token,
            "application_token": inst.application_token,
        }

    def _bare_auth(self, portal: Portal, inst: Installation) -> dict[str, Any]:
        """The ``auth`` block of an event declared ``sendAuth => false`` (ONAPPUNINSTALL, facts §7.2)."""
        return {
            "domain": portal.endpoint_domain,
            "server_endpoint": f"{self.url}/oauth/rest/",
            "client_endpoint": f"{self.url}/{portal.endpoint_domain}/rest/",
            "member_id": portal.member_id,
            "application_token": inst.application_token,
        }

    def _remove_senders(self, portal: Portal, client_id: str) -> list[str]:
        """messageservice ``onRestAppDelete``: all of the app's SMS providers on the portal.  Hold ``portal.lock``."""
        keys = [key for key in portal.senders if key[0] == client_id]
        return [portal.senders.pop(key).code for key in keys]

    def _send(self, portal: Portal, outgoing: list[Outgoing]) -> list[Delivery]:
        """POST each event once, in order, with no lock held; record every attempt in ``events_sent``."""
        sent: list[Delivery] = []
        for out in outgoing:
            delivery = events.post(out, self.event_timeout)
            with portal.lock:
                portal.events_sent.append(delivery.to_dict())
            sent.append(delivery)
        return sent

    def add_sender(
        self,
        domain: str,
        code: str,
        *,
        client_id: str | None = None,
        handler: str = DEFAULT_HANDLER,
        name: Any = None,
        type: str = "SMS",
    ) -> None:
        """Register a messageservice sender for an app directly (as if it had called sender.add)."""
        portal = self._portal(domain)
        cid = client_id or self.client_id
        with portal.lock:
            portal.senders[(cid, code.lower())] = Sender(
                client_id=cid,
                code=code,
                type=type,
                handler=handler,
                name=name if name is not None else code,
                description="",
                author_id=portal.options.user_id,
            )

    def seed_messages(
        self,
        domain: str,
        code: str,
        message_ids: Iterable[str | int],
        *,
        client_id: str | None = None,
        author_id: int | None = None,
    ) -> int:
        """Create messages that ``messageservice.message.status.update`` can then find (app + CODE scoped)."""
        portal = self._portal(domain)
        cid = client_id or self.client_id
        n = 0
        with portal.lock:
            author = portal.options.user_id if author_id is None else author_id
            for mid in message_ids:
                key = (cid, code.lower(), str(mid))
                if key not in portal.messages:
                    portal.messages[key] = MessageRecord(
                        client_id=cid, code=code, message_id=str(mid), author_id=author, seeded=True
                    )
                    n += 1
        return n

    def add_connector(self, domain: str, connector: str, line: Any = None) -> None:
        """Register an open-lines connector (``imconnector.register`` lower-cases the id)."""
        portal = self._portal(domain)
        with portal.lock:
            lines = portal.connectors.setdefault(connector.lower(), set())
            if line is not None:
                lines.add(line)

    # --- inspection ------------------------------------------------------------------------------------------

    def state(self, domain: str | None = None) -> dict[str, Any]:
        """One portal's state, or ``{"portals": {domain: state}, "oauth": {...}}`` for all."""
        if domain is not None:
            return self._portal(domain).snapshot()
        with self.registry.lock:
            portals = list(self.registry.portals.values())
            oauth = self.registry.oauth.to_dict()
        return {"url": self.url, "portals": {p.domain: p.snapshot() for p in portals}, "oauth": oauth}

    def reset(self, *, keep_portals: bool = False) -> None:
        """Forget everything; or, with ``keep_portals``, only applied records, counters, limits and faults."""
        if not keep_portals:
            self.registry.drop_portals()
            return
        for portal in list(self.registry.portals.values()):
            with portal.lock:
                portal.clear_records()
