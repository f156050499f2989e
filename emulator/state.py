"""Everything the emulator remembers: portals, installed apps, tokens, senders, messages, connectors, and the
records of what clients applied (so tests can assert "each status applied exactly once").

One :class:`Portal` per domain, each with its own lock: requests to different portals never contend, and the
work done under a lock is a few dict operations.  The :class:`Registry` maps tokens to portals and owns the
apps (one app, i.e. one client_id/secret, may be installed on many portals).
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

from .bucket import LeakyBucket
from .faults import Faults
from .operating import OperatingMeter

Clock = Callable[[], float]

PLANS: dict[str, tuple[float, int]] = {"standard": (2.0, 50), "enterprise": (5.0, 250)}
#: the license type app.info reports for each plan when no ``license`` option is set (facts §7.4: ``std``,
#: ``ent250`` are in the source's ``$licenseList``; the docs list ``de_std`` and ``de_ent250``)
PLAN_LICENSES: dict[str, str] = {"standard": "std", "enterprise": "ent250"}
_LICENSE = re.compile(r"^([a-z]{2,})_([a-z]+[0-9]*)$")
DEFAULT_SCOPE = "im,imconnector,imopenlines,messageservice"
MAX_TIMES = 1_000_000  # per list: bounds memory in long benchmarks (the counters stay exact)
#: what a request with an access token that a refresh superseded gets (see ``emulator.auth``; a guess)
SUPERSEDED_TOKEN_ERRORS = ("invalid_token", "NO_AUTH_FOUND", "expired_token")


@dataclass
class PortalOptions:
    """Per-portal behaviour.  ``rate``/``burst`` default from ``plan`` (standard 2/50, enterprise 5/250)."""

    plan: str = "standard"
    rate: float | None = 2.0
    burst: int = 50
    #: whether a request refused with 503 QUERY_LIMIT_EXCEEDED adds to the leaky bucket too.  True follows the
    #: docs' wording, "Each application request increases a virtual request counter" with no exception for
    #: blocked ones (facts §1.1, ``b24restdocs:limits.md``); False is the other reading, a guess with no source
    #: (see ``emulator.bucket``)
    refused_fill_bucket: bool = True
    op_cost: float = 0.0
    op_costs: dict[str, float] = field(default_factory=dict)
    operating_limit: float | None = 480.0
    operating_window: float = 600.0
    token_ttl: float = 3600.0
    #: the 401 a request gets with an access token that a refresh rotated away.  The facts say only that it
    #: "becomes invalid" (§2.1, old docs), not which error: ``invalid_token`` ("Unable to get application by
    #: token", PySDK) is a guess; ``NO_AUTH_FOUND`` and ``expired_token`` are the other candidates
    superseded_token_error: str = "invalid_token"
    auto_messages: bool = False
    auto_connectors: bool = False
    time_block: bool = True
    admin: bool = True
    user_id: int = 1
    scope: str = DEFAULT_SCOPE
    #: the portal's language (``LANGUAGE_ID`` in app.info and app events, the prefix of the license)
    language_id: str = "en"
    #: ``<lang>_<type>`` as app.info's LICENSE (e.g. ``de_ent10000``, ``en_demo``, ``en_selfhosted``); None
    #: derives it from ``plan`` and ``language_id``.  It only reports: the rate limit follows ``plan``.
    license: str | None = None
    #: LICENSE_PREVIOUS, reported only while the license type is ``demo``; None derives it from ``plan``
    license_previous: str | None = None

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any]) -> PortalOptions:
        """Merge option layers (later wins); rate/burst come from the plan unless given explicitly."""
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update({k: v for k, v in layer.items()})
        unknown = set(merged) - cls.names()
        if unknown:
            raise ValueError(f"unknown portal option(s): {sorted(unknown)}")
        plan = merged.get("plan", "standard")
        if plan not in PLANS:
            raise ValueError(f"unknown plan {plan!r}; expected one of {sorted(PLANS)}")
        rate, burst = PLANS[plan]
        merged.setdefault("rate", rate)
        merged.setdefault("burst", burst)
        opts = cls(**merged)
        opts.op_costs = {k.lower(): float(v) for k, v in dict(opts.op_costs).items()}
        if opts.superseded_token_error not in SUPERSEDED_TOKEN_ERRORS:
            raise ValueError(
                f"superseded_token_error must be one of {list(SUPERSEDED_TOKEN_ERRORS)}, "
                f"got {opts.superseded_token_error!r}"
            )
        if not isinstance(opts.refused_fill_bucket, bool):
            raise ValueError(f"refused_fill_bucket must be true or false, got {opts.refused_fill_bucket!r}")
        for name in ("license", "license_previous"):
            value = getattr(opts, name)
            if value is not None and not (isinstance(value, str) and _LICENSE.match(value)):
                raise ValueError(f"{name} must look like '<lang>_<type>' (e.g. 'en_ent250'), got {value!r}")
        return opts

    def license_name(self) -> str:
        return self.license or f"{self.language_id}_{PLAN_LICENSES[self.plan]}"

    def license_info(self) -> dict[str, str]:
        """app.info's LICENSE[, LICENSE_PREVIOUS], LICENSE_TYPE, LICENSE_FAMILY (facts §7.4; Src ``appInfo``).

        TYPE is the part after the language; FAMILY its leading letters (``ent250`` → ``ent``, ``company2`` →
        ``company``).  A self-hosted portal has neither.  LICENSE_PREVIOUS is sent only while the type is demo.
        """
        license = self.license_name()
        kind = license.split("_", 1)[1]
        out = {"LICENSE": license}
        if kind == "demo":
            out["LICENSE_PREVIOUS"] = self.license_previous or f"{self.language_id}_{PLAN_LICENSES[self.plan]}"
        if kind != "selfhosted":
            out["LICENSE_TYPE"] = kind
            out["LICENSE_FAMILY"] = re.sub(r"[0-9]+$", "", kind)
        return out

    def cost(self, method: str) -> float:
        return self.op_costs.get(method, self.op_cost)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AccessToken:
    token: str
    domain: str
    client_id: str
    user_id: int
    expires_at: float  # on the emulator's monotonic clock
    expires_wall: int  # unix time, as reported in ``expires``
    revoked: bool = False  # invalidated with its app's chains (an uninstall)
    superseded: bool = False  # invalidated by a refresh of its chain (answered per ``superseded_token_error``)


@dataclass
class RefreshToken:
    token: str
    domain: str
    client_id: str
    user_id: int
    access_token: str  # the access token issued together with it (invalidated when this one is used)
    used: bool = False


@dataclass
class App:
    """A registered application (client_id/secret at the OAuth server).

    ``install_handler``: an API-only app in callback mode has its install URL bound as the ONAPPINSTALL handler
    (facts §7.1b).  ``id`` is the app's row ID (app.info ``ID``, part of the application_token, §7.3); ``code``
    is app.info's CODE (a local app's code is its client_id).  ``status`` is the default status letter of its
    installations: ``L`` for a local app (client_id ``local.…``), else ``F`` (facts §7.6, D on-app-update.md).
    """

    client_id: str
    client_secret: str
    id: int
    install_handler: str | None = None
    status: str = "F"

    @property
    def code(self) -> str:
        return self.client_id

    def to_dict(self) -> dict[str, Any]:
        """Without the secret (it belongs to the OAuth server only)."""
        return {
            "client_id": self.client_id,
            "id": self.id,
            "code": self.code,
            "install_handler": self.install_handler,
            "status": self.status,
        }


APP_STATUSES = ("L", "F", "D", "T", "P", "S")


@dataclass
class Installation:
    """An app installed on a portal.  ``oauth_error`` is what the OAuth server says after an uninstall.

    ``version``, ``status``, ``payment_expired``, ``days`` and ``language_id`` are what app.info reports (§7.4);
    ``application_token`` is the portal+app token sent in every app event (§7.3).
    """

    client_id: str
    installed: bool = True
    oauth_error: str = "NOT_INSTALLED"
    app_id: int = 0
    code: str = ""
    version: int = 1
    status: str = "F"
    payment_expired: str = "N"
    days: int | None = None
    language_id: str = "en"
    application_token: str = ""


@dataclass
class EventHandler:
    """One ``event.bind`` row (Src ``EventTable``): unique per app, event, handler, user and connector.

    ``handler`` is empty for an offline binding; ``user_id`` 0 means "the user who triggered the event".
    """

    id: int
    client_id: str
    event: str
    handler: str
    user_id: int = 0
    connector_id: str = ""

    @property
    def offline(self) -> bool:
        return self.handler == ""


@dataclass
class Webhook:
    user_id: int
    code: str


@dataclass
class Sender:
    client_id: str
    code: str
    type: str
    handler: str
    name: Any
    description: Any
    author_id: int


@dataclass
class Message:
    client_id: str
    code: str
    message_id: str
    author_id: int
    seeded: bool
    statuses: list[str] = field(default_factory=list)


@dataclass
class Delivery:
    connector: str
    line: Any
    chat_id: Any
    message_id: Any
    count: int = 0
    last: Any = None


@dataclass
class Counters:
    requests: int = 0
    accepted: int = 0
    refused_503: int = 0
    by_error_code: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    invalid_grants: int = 0
    batches: int = 0
    batch_commands: int = 0
    method_calls: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    #: REST requests that carried an app's client_secret (it belongs to the OAuth server only)
    client_secret_seen: int = 0
    #: REST requests to a former domain of the portal, answered 302 (facts §7.5)
    redirects: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "refused_503": self.refused_503,
            "by_error_code": dict(self.by_error_code),
            "refreshes": self.refreshes,
            "invalid_grants": self.invalid_grants,
            "batches": self.batches,
            "batch_commands": self.batch_commands,
            "method_calls": dict(self.method_calls),
            "faults": dict(self.faults),
            "client_secret_seen": self.client_secret_seen,
            "redirects": self.redirects,
        }


def member_id_for(domain: str) -> str:
    """A stable md5-looking member_id, so logs and fixtures are reproducible across runs."""
    return hashlib.md5(domain.encode(), usedforsecurity=False).hexdigest()


def new_token() -> str:
    return secrets.token_hex(24)


def application_token_for(member_id: str, app: App, salt: str = "") -> str:
    """Src ``CRestUtil::getApplicationToken``: ``md5(member_id|app row ID|secret|SHARED_KEY)`` unless one is stored
    (facts §7.3), so it is specific to a portal and an app.  A non-empty ``salt`` makes a new one (an update)."""
    raw = f"{member_id}|{app.id}|{app.client_secret}" + (f"|{salt}" if salt else "")
    return hashlib.md5(raw.encode(), usedforsecurity=False).hexdigest()


class Portal:
    """One Bitrix24 account.  Every field is guarded by ``lock``."""

    def __init__(
        self, domain: str, options: PortalOptions, clock: Clock, seed: Any, wall_clock: Clock | None = None
    ) -> None:
        self.domain = domain
        #: the domain announced in refresh answers and events (lags ``domain`` only after a stale move, §7.5)
        self.endpoint_domain = domain
        self.moved_from: list[str] = []
        self.member_id = member_id_for(domain)
        self.options = options
        self.faults = Faults()
        self.seed = seed
        self.rng = random.Random(f"{seed}:{domain}")
        self.lock = threading.Lock()
        self._clock = clock
        self.buckets: dict[str, LeakyBucket] = {}
        self.operating = OperatingMeter(options.operating_limit, clock, options.operating_window, wall=wall_clock)
        self.installations: dict[str, Installation] = {}
        self.webhooks: dict[tuple[int, str], Webhook] = {}
        self.senders: dict[tuple[str, str], Sender] = {}
        self.messages: dict[tuple[str, str, str], Message] = {}
        self.connectors: dict[str, set[Any]] = {}
        self.deliveries: dict[tuple[str, Any, Any, Any], Delivery] = {}
        self.sender_updates: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.unread: dict[tuple[int, str], list[int]] = {}
        self.event_handlers: dict[int, EventHandler] = {}
        self._next_handler_id = 1
        self.events_sent: list[dict[str, Any]] = []
        self.counters = Counters()
        self.accepted_times: deque[float] = deque(maxlen=MAX_TIMES)
        self.refused_times: deque[float] = deque(maxlen=MAX_TIMES)
        #: (monotonic seconds, commands) of each batch request answered: how full the requests went, and when
        self.batch_log: deque[tuple[float, int]] = deque(maxlen=MAX_TIMES)

    # --- limits ---------------------------------------------------------------------------------------------

    def bucket_for(self, ip: str) -> LeakyBucket:
        bucket = self.buckets.get(ip)
        if bucket is None:
            bucket = LeakyBucket(
                self.options.rate, self.options.burst, self._clock, refused_fill=self.options.refused_fill_bucket
            )
            self.buckets[ip] = bucket
        return bucket

    def apply_options(self, options: PortalOptions) -> None:
        self.options = options
        for bucket in self.buckets.values():
            bucket.configure(options.rate, options.burst, options.refused_fill_bucket)
        self.operating.limit = options.operating_limit
        self.operating.window = options.operating_window

    # --- event handlers ----------------------------------------------------------------------------------------

    def add_handler(self, client_id: str, event: str, handler: str, user_id: int = 0) -> EventHandler | None:
        """Bind a handler; None if the same (app, event, handler, user) is bound already (Src ``checkUniq``)."""
        for h in self.event_handlers.values():
            if (h.client_id, h.event, h.handler, h.user_id) == (client_id, event, handler, user_id):
                return None
        row = EventHandler(id=self._next_handler_id, client_id=client_id, event=event, handler=handler, user_id=user_id)
        self._next_handler_id += 1
        self.event_handlers[row.id] = row
        return row

    def handlers_of(self, client_id: str, event: str | None = None) -> list[EventHandler]:
        return [
            h for h in self.event_handlers.values() if h.client_id == client_id and (event is None or h.event == event)
        ]

    def remove_handlers(self, rows: list[EventHandler]) -> int:
        for row in rows:
            self.event_handlers.pop(row.id, None)
        return len(rows)

    # --- records ---------------------------------------------------------------------------------------------

    def clear_records(self) -> None:
        """Forget what was applied and counted; keep the portal's configuration, apps, tokens and senders."""
        for msg in self.messages.values():
            msg.statuses.clear()
        self.deliveries.clear()
        self.sender_updates.clear()
        self.unread.clear()
        self.events_sent.clear()
        self.counters = Counters()
        self.accepted_times = deque(maxlen=MAX_TIMES)
        self.refused_times = deque(maxlen=MAX_TIMES)
        self.batch_log = deque(maxlen=MAX_TIMES)
        self.buckets.clear()
        self.operating.clear()
        self.faults = Faults()
        self.rng = random.Random(f"{self.seed}:{self.domain}")

    def log_batch(self, commands: int) -> None:
        """(Under the lock.) A batch request of `commands` commands was answered now."""
        self.counters.batches += 1
        self.counters.batch_commands += commands
        self.batch_log.append((self._clock(), commands))

    def count_error(self, code: str) -> None:
        self.counters.by_error_code[code] += 1

    def snapshot(self) -> dict[str, Any]:
        """The JSON-ready state of this portal (see the package docstring for the shape)."""
        with self.lock:
            return {
                "domain": self.domain,
                "member_id": self.member_id,
                "moved_from": list(self.moved_from),
                "endpoint_domain": self.endpoint_domain,
                "options": self.options.to_dict(),
                "faults": self.faults.to_dict(),
                "installations": [asdict(i) for i in self.installations.values()],
                "senders": [
                    {
                        "client_id": s.client_id,
                        "code": s.code,
                        "type": s.type,
                        "handler": s.handler,
                        "name": s.name,
                        "description": s.description,
                    }
                    for s in self.senders.values()
                ],
                "connectors": [
                    {"connector": c, "lines": sorted(lines, key=str)} for c, lines in self.connectors.items()
                ],
                "statuses": [
                    {
                        "client_id": m.client_id,
                        "code": m.code,
                        "message_id": m.message_id,
                        "seeded": m.seeded,
                        "statuses": list(m.statuses),
                        "count": len(m.statuses),
                    }
                    for m in self.messages.values()
                ],
                "deliveries": [
                    {
                        "connector": d.connector,
                        "line": d.line,
                        "chat_id": d.chat_id,
                        "message_id": d.message_id,
                        "count": d.count,
                    }
                    for d in self.deliveries.values()
                ],
                "sender_updates": [
                    {"client_id": cid, "code": code, "updates": list(ups), "count": len(ups)}
                    for (cid, code), ups in self.sender_updates.items()
                ],
                "unread": [
                    {"user_id": uid, "dialog_id": dialog, "message_ids": list(ids), "count": len(ids)}
                    for (uid, dialog), ids in self.unread.items()
                ],
                "event_handlers": [
                    {
                        "id": h.id,
                        "client_id": h.client_id,
                        "event": h.event,
                        "handler": h.handler,
                        "auth_type": h.user_id,
                        "offline": h.offline,
                    }
                    for h in self.event_handlers.values()
                ],
                "events_sent": [dict(e) for e in self.events_sent],
                "operating": {f"{subject} {method}": total for (subject, method), total in self._op_totals()},
                "counters": self.counters.to_dict(),
                "accepted_times": list(self.accepted_times),
                "refused_times": list(self.refused_times),
                "batch_log": [[t, n] for t, n in self.batch_log],
            }

    def _op_totals(self) -> list[tuple[tuple[str, str], float]]:
        out: list[tuple[tuple[str, str], float]] = []
        for key, total in self.operating.all_totals().items():
            if isinstance(key, tuple) and len(key) == 2:
                out.append(((str(key[0]), str(key[1])), total))
        return out


@dataclass
class OAuthCounters:
    """Requests to the OAuth server that could not be tied to a portal (unknown refresh token, bad client)."""

    requests: int = 0
    unknown_invalid_grants: int = 0
    invalid_client: int = 0
    wrong_client: int = 0
    invalid_request: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Registry:
    """Portals, apps and the token index.  ``lock`` guards the maps; a portal's own data uses its lock."""

    def __init__(self, clock: Clock, wall_clock: Clock) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self.lock = threading.RLock()
        self.portals: dict[str, Portal] = {}
        self.apps: dict[str, App] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        #: former domain -> current domain of a portal that moved (facts §7.5: calls there are redirected)
        self.moved: dict[str, str] = {}
        self.oauth = OAuthCounters()

    def portal(self, domain: str) -> Portal | None:
        return self.portals.get(domain.lower())

    def require(self, domain: str) -> Portal:
        portal = self.portal(domain)
        if portal is None:
            moved = self.moved.get(domain.lower())
            raise KeyError(f"no such portal: {domain}" + (f" (it moved to {moved})" if moved else ""))
        return portal

    # --- apps ------------------------------------------------------------------------------------------------

    def secret_of(self, client_id: str) -> str | None:
        app = self.apps.get(client_id)
        return app.client_secret if app else None

    def secrets(self) -> list[str]:
        with self.lock:
            return [a.client_secret for a in self.apps.values() if a.client_secret]

    def register_app(
        self,
        client_id: str,
        client_secret: str | None,
        *,
        install_handler: str | Literal[False] | None = False,
        status: str | None = None,
    ) -> App:
        """Register an app or update a known one.  ``install_handler=False`` leaves it as it is; None clears it.

        A known app keeps its secret (another one is an error) and its row ID.
        """
        if status is not None and status not in APP_STATUSES:
            raise ValueError(f"status must be one of {list(APP_STATUSES)}")
        if install_handler is not False and install_handler is not None:
            check_install_handler(install_handler)
        with self.lock:
            app = self.apps.get(client_id)
            if app is None:
                if not client_secret:
                    raise ValueError(f"client_secret is required to register the app {client_id!r}")
                default_status = "L" if client_id.startswith("local.") else "F"
                app = App(client_id, client_secret, id=len(self.apps) + 1, status=default_status)
                self.apps[client_id] = app
            elif client_secret is not None and app.client_secret != client_secret:
                raise ValueError(f"app {client_id!r} is already registered with another secret")
            if install_handler is not False:
                app.install_handler = install_handler if isinstance(install_handler, str) else None
            if status is not None:
                app.status = status
            return app

    def require_app(self, client_id: str) -> App:
        app = self.apps.get(client_id)
        if app is None:
            raise ValueError(f"unknown app {client_id!r}: register it first (client_id + client_secret)")
        return app

    def installation(self, portal: Portal, client_id: str) -> Installation:
        """The app's installation record on the portal, created (installed) if missing.  Hold ``portal.lock``."""
        found = portal.installations.get(client_id)
        if found is not None:
            return found
        app = self.require_app(client_id)
        inst = Installation(
            client_id=client_id,
            app_id=app.id,
            code=app.code,
            status=app.status,
            language_id=portal.options.language_id,
            application_token=application_token_for(portal.member_id, app),
        )
        portal.installations[client_id] = inst
        return inst

    # --- tokens ----------------------------------------------------------------------------------------------

    def issue_pair(self, portal: Portal, client_id: str, user_id: int) -> tuple[AccessToken, RefreshToken]:
        """A fresh access/refresh pair: the start of a chain, or the next link after a refresh."""
        ttl = portal.options.token_ttl
        access = AccessToken(
            token=new_token(),
            domain=portal.domain,
            client_id=client_id,
            user_id=user_id,
            expires_at=self.clock() + ttl,
            expires_wall=int(self.wall_clock() + ttl),
        )
        refresh = RefreshToken(
            token=new_token(),
            domain=portal.domain,
            client_id=client_id,
            user_id=user_id,
            access_token=access.token,
        )
        with self.lock:
            self.access_tokens[access.token] = access
            self.refresh_tokens[refresh.token] = refresh
        return access, refresh

    def revoke_chains(self, domain: str, client_id: str) -> None:
        """Kill every token of an app on a portal (a reinstall after an uninstall does not revive them)."""
        with self.lock:
            for tok in self.access_tokens.values():
                if tok.domain == domain and tok.client_id == client_id:
                    tok.revoked = True
            for ref in self.refresh_tokens.values():
                if ref.domain == domain and ref.client_id == client_id:
                    ref.used = True

    def expire_access_tokens(self, domain: str) -> int:
        now = self.clock()
        n = 0
        with self.lock:
            for tok in self.access_tokens.values():
                if tok.domain == domain and tok.expires_at > now:
                    tok.expires_at = now
                    n += 1
        return n

    # --- domains ---------------------------------------------------------------------------------------------

    def claim_domain(self, name: str) -> None:
        """A former domain becomes a live portal's name again: it stops redirecting.  Hold ``lock``."""
        self.moved.pop(name, None)

    def move(self, portal: Portal, new_domain: str) -> str:
        """Rename a portal; the old name redirects to the new one (member_id and tokens stay).  Hold
        ``portal.lock``.  Chains of moves redirect straight to the latest name."""
        with self.lock:
            old = portal.domain
            if new_domain == old:
                raise ValueError("new_domain is the portal's current domain")
            if new_domain in self.portals:
                raise ValueError(f"portal {new_domain!r} already exists")
            self.claim_domain(new_domain)
            del self.portals[old]
            self.portals[new_domain] = portal
            for former, current in list(self.moved.items()):
                if current == old:
                    self.moved[former] = new_domain
            self.moved[old] = new_domain
            for tok in self.access_tokens.values():
                if tok.domain == old:
                    tok.domain = new_domain
            for ref in self.refresh_tokens.values():
                if ref.domain == old:
                    ref.domain = new_domain
            portal.domain = new_domain
            portal.moved_from = [d for d in portal.moved_from if d != new_domain] + [old]
            return old

    def drop_portals(self) -> None:
        with self.lock:
            self.portals.clear()
            self.access_tokens.clear()
            self.refresh_tokens.clear()
            self.moved.clear()
            self.oauth = OAuthCounters()


def check_install_handler(url: str) -> str:
    """An app's install URL must be an absolute http(s) URL (the event sender POSTs to it)."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"install_handler must be an http(s) URL, got {url!r}")
    return url
