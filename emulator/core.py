"""The :class:`Emulator`: many Bitrix24 portals, their OAuth server and an admin API behind one loopback server.

URL layout (a portal is a path prefix, since there is no DNS here)::

    {base}/{domain}/rest/{method}[.json]                  OAuth REST (client_endpoint = {base}/{domain}/rest/)
    {base}/{domain}/rest/{user_id}/{code}/{method}[.json] incoming webhook (not application context)
    {base}/oauth/token/                                   OAuth server (refresh_token grant)
    {base}/_emulator/...                                  admin / inspection API (see emulator.admin)

Everything the admin API does is also a Python method here, so in-process tests need no HTTP for setup.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .admin import handle_admin
from .oauth import OAuthServer
from .rest import Reply, RestDispatcher, RestRequest, json_reply
from .server import EmulatorHTTPServer
from .state import Installation, Portal, PortalOptions, Registry, Sender, Webhook
from .state import Message as MessageRecord

Clock = Callable[[], float]

DEFAULT_CLIENT_ID = "local.b24q.emulator"
DEFAULT_CLIENT_SECRET = "emulator-secret"
DEFAULT_HANDLER = "https://handler.b24q.test/sms"


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


def _check_domain(domain: str) -> str:
    name = domain.strip().lower()
    if not name or "/" in name or "?" in name or name.startswith("_") or name in ("oauth", "rest"):
        raise ValueError(f"invalid portal domain {domain!r}")
    return name


class Emulator:
    """Bitrix24 cloud portals on loopback.

    ``clock`` (monotonic seconds) drives the leaky bucket, the operating limit and token expiry, so tests can
    inject a fake one; ``wall_clock`` (unix seconds) only feeds reported times (``expires``, ``time``).
    ``portal_defaults`` are :class:`~emulator.state.PortalOptions` fields applied to every new portal (e.g.
    ``rate=0`` for an unlimited emulator, ``auto_messages=True``).  The socket is bound at construction so
    :attr:`url` is known before :meth:`start`.
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
        **portal_defaults: Any,
    ) -> None:
        PortalOptions.resolve(portal_defaults)  # fail fast on a typo
        self.portal_defaults = dict(portal_defaults)
        self.client_id = client_id
        self.client_secret = client_secret
        self.seed = seed
        self.registry = Registry(clock, wall_clock)
        self.registry.register_app(client_id, client_secret)
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

    # --- portals ---------------------------------------------------------------------------------------------

    def _portal(self, domain: str) -> Portal:
        return self.registry.require(domain)

    def _info(self, portal: Portal, client_id: str, client_secret: str, user_id: int) -> PortalInfo:
        access, refresh = self.registry.issue_pair(portal, client_id, user_id)
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

        ``options`` are :class:`~emulator.state.PortalOptions` fields (plan, rate, burst, op_cost, op_costs,
        operating_limit, token_ttl, auto_messages, auto_connectors, time_block, admin, user_id, scope).
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
            portal = Portal(name, opts, self.registry.clock, self.seed if seed is None else seed)
            hook = Webhook(user_id=opts.user_id, code=secrets.token_hex(8))
            portal.webhooks[(hook.user_id, hook.code)] = hook
            portal.installations[cid] = Installation(client_id=cid)
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
        secret = client_secret or self.registry.apps.get(cid)
        if secret is None:
            raise ValueError("client_secret is required for an unknown client_id")
        self.registry.register_app(cid, secret)
        with portal.lock:
            portal.installations[cid] = Installation(client_id=cid)
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

    def uninstall(self, domain: str, *, client_id: str | None = None, oauth_error: str = "NOT_INSTALLED") -> None:
        """Mark the app uninstalled: REST calls with its tokens fail, and refreshes get ``oauth_error``."""
        if oauth_error not in ("NOT_INSTALLED", "invalid_client"):
            raise ValueError("oauth_error must be 'NOT_INSTALLED' or 'invalid_client'")
        portal = self._portal(domain)
        cid = client_id or self.client_id
        with portal.lock:
            portal.installations[cid] = Installation(client_id=cid, installed=False, oauth_error=oauth_error)

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
