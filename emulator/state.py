"""Everything the emulator remembers: portals, installed apps, tokens, senders, messages, connectors, and the
records of what clients applied (so tests can assert "each status applied exactly once").

One :class:`Portal` per domain, each with its own lock: requests to different portals never contend, and the
work done under a lock is a few dict operations.  The :class:`Registry` maps tokens to portals and owns the
apps (one app, i.e. one client_id/secret, may be installed on many portals).
"""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .bucket import LeakyBucket
from .faults import Faults
from .operating import OperatingMeter

Clock = Callable[[], float]

PLANS: dict[str, tuple[float, int]] = {"standard": (2.0, 50), "enterprise": (5.0, 250)}
DEFAULT_SCOPE = "im,imconnector,imopenlines,messageservice"
MAX_TIMES = 1_000_000  # per list: bounds memory in long benchmarks (the counters stay exact)


@dataclass
class PortalOptions:
    """Per-portal behaviour.  ``rate``/``burst`` default from ``plan`` (standard 2/50, enterprise 5/250)."""

    plan: str = "standard"
    rate: float | None = 2.0
    burst: int = 50
    op_cost: float = 0.0
    op_costs: dict[str, float] = field(default_factory=dict)
    operating_limit: float | None = 480.0
    operating_window: float = 600.0
    token_ttl: float = 3600.0
    auto_messages: bool = False
    auto_connectors: bool = False
    time_block: bool = True
    admin: bool = True
    user_id: int = 1
    scope: str = DEFAULT_SCOPE

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
        return opts

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
    revoked: bool = False  # invalidated by a refresh of its chain


@dataclass
class RefreshToken:
    token: str
    domain: str
    client_id: str
    user_id: int
    access_token: str  # the access token issued together with it (invalidated when this one is used)
    used: bool = False


@dataclass
class Installation:
    """An app installed on a portal.  ``oauth_error`` is what the OAuth server says after an uninstall."""

    client_id: str
    installed: bool = True
    oauth_error: str = "NOT_INSTALLED"


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
        }


def member_id_for(domain: str) -> str:
    """A stable md5-looking member_id, so logs and fixtures are reproducible across runs."""
    return hashlib.md5(domain.encode(), usedforsecurity=False).hexdigest()


def new_token() -> str:
    return secrets.token_hex(24)


class Portal:
    """One Bitrix24 account.  Every field is guarded by ``lock``."""

    def __init__(self, domain: str, options: PortalOptions, clock: Clock, seed: Any) -> None:
        self.domain = domain
        self.member_id = member_id_for(domain)
        self.options = options
        self.faults = Faults()
        self.seed = seed
        self.rng = random.Random(f"{seed}:{domain}")
        self.lock = threading.Lock()
        self._clock = clock
        self.buckets: dict[str, LeakyBucket] = {}
        self.operating = OperatingMeter(options.operating_limit, clock, options.operating_window)
        self.installations: dict[str, Installation] = {}
        self.webhooks: dict[tuple[int, str], Webhook] = {}
        self.senders: dict[tuple[str, str], Sender] = {}
        self.messages: dict[tuple[str, str, str], Message] = {}
        self.connectors: dict[str, set[Any]] = {}
        self.deliveries: dict[tuple[str, Any, Any, Any], Delivery] = {}
        self.sender_updates: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.unread: dict[tuple[int, str], list[int]] = {}
        self.counters = Counters()
        self.accepted_times: deque[float] = deque(maxlen=MAX_TIMES)
        self.refused_times: deque[float] = deque(maxlen=MAX_TIMES)

    # --- limits ---------------------------------------------------------------------------------------------

    def bucket_for(self, ip: str) -> LeakyBucket:
        bucket = self.buckets.get(ip)
        if bucket is None:
            bucket = LeakyBucket(self.options.rate, self.options.burst, self._clock)
            self.buckets[ip] = bucket
        return bucket

    def apply_options(self, options: PortalOptions) -> None:
        self.options = options
        for bucket in self.buckets.values():
            bucket.configure(options.rate, options.burst)
        self.operating.limit = options.operating_limit
        self.operating.window = options.operating_window

    # --- records ---------------------------------------------------------------------------------------------

    def clear_records(self) -> None:
        """Forget what was applied and counted; keep the portal's configuration, apps, tokens and senders."""
        for msg in self.messages.values():
            msg.statuses.clear()
        self.deliveries.clear()
        self.sender_updates.clear()
        self.unread.clear()
        self.counters = Counters()
        self.accepted_times = deque(maxlen=MAX_TIMES)
        self.refused_times = deque(maxlen=MAX_TIMES)
        self.buckets.clear()
        self.operating.clear()
        self.faults = Faults()
        self.rng = random.Random(f"{self.seed}:{self.domain}")

    def count_error(self, code: str) -> None:
        self.counters.by_error_code[code] += 1

    def snapshot(self) -> dict[str, Any]:
        """The JSON-ready state of this portal (see the package docstring for the shape)."""
        with self.lock:
            return {
                "domain": self.domain,
                "member_id": self.member_id,
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
                "operating": {f"{subject} {method}": total for (subject, method), total in self._op_totals()},
                "counters": self.counters.to_dict(),
                "accepted_times": list(self.accepted_times),
                "refused_times": list(self.refused_times),
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
        self.apps: dict[str, str] = {}  # client_id -> client_secret
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.oauth = OAuthCounters()

    def portal(self, domain: str) -> Portal | None:
        return self.portals.get(domain.lower())

    def require(self, domain: str) -> Portal:
        portal = self.portal(domain)
        if portal is None:
            raise KeyError(f"no such portal: {domain}")
        return portal

    def register_app(self, client_id: str, client_secret: str) -> None:
        with self.lock:
            known = self.apps.get(client_id)
            if known is not None and known != client_secret:
                raise ValueError(f"app {client_id!r} is already registered with another secret")
            self.apps[client_id] = client_secret

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

    def expire_access_tokens(self, domain: str) -> int:
        now = self.clock()
        n = 0
        with self.lock:
            for tok in self.access_tokens.values():
                if tok.domain == domain and tok.expires_at > now:
                    tok.expires_at = now
                    n += 1
        return n

    def drop_portals(self) -> None:
        with self.lock:
            self.portals.clear()
            self.access_tokens.clear()
            self.refresh_tokens.clear()
            self.oauth = OAuthCounters()
