"""One REST request, start to finish, independent of the HTTP server (so it is testable without sockets).

Order of checks, from the outside in (each a reason a real request can fail before the method runs):

1. the portal exists (an emulator-only 404 ``PORTAL_NOT_FOUND`` otherwise: there is no DNS to fail);
2. ``portal_deleted`` / ``overload`` blocks, then a drop-before-processing fault;
3. the leaky bucket per (portal, source IP): 503 ``QUERY_LIMIT_EXCEEDED``.  Checked *before* auth, and a batch
   is one request.  A refused request adds to the counter too unless the portal's ``refused_fill_bucket`` is
   off (see :mod:`emulator.bucket` for the two readings).  Every accepted and refused request's clock time is
   recorded;
4. injected 500 / 502-HTML faults;
5. parameters (bad JSON → 400), then auth (401 ``NO_AUTH_FOUND`` / ``invalid_token`` for a token a refresh
   superseded / ``APPLICATION_NOT_FOUND`` / ``expired_token``; see :mod:`emulator.auth`);
6. method lookup (404 ``ERROR_METHOD_NOT_FOUND``), the operating check (429), the method itself;
7. faults that strike after the change was applied: truncated JSON, slow answer, dropped answer; then latency.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote_plus

from . import errors
from .auth import CallContext, authenticate_token, authenticate_webhook, find_token
from .batch import ErrorHook, normalize_method, run_batch
from .faults import GARBAGE_HTML, NO_FAULT, Decision, draw
from .methods import METHODS
from .querystring import parse_query
from .state import Portal, Registry
from .timing import time_block

JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class Reply:
    """What to send back.  ``drop`` closes the connection without an answer; ``delay`` is slept first."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    drop: bool = False
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: Any) -> Reply:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Reply(status=status, body=body)


@dataclass(frozen=True)
class RestRequest:
    domain: str
    method: str
    http_method: str = "POST"
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client_ip: str = "127.0.0.1"
    webhook: tuple[int, str] | None = None


def parse_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """JSON (by content type, or sniffed when there is none) or PHP form encoding."""
    if not body:
        return {}
    ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    is_json = ctype == "application/json" or ctype.endswith("+json")
    if not ctype:
        is_json = body.lstrip()[:1] in (b"{", b"[")
    if is_json:
        try:
            data = json.loads(body)
        except ValueError:
            raise errors.bad_json() from None
        if not isinstance(data, dict):
            raise errors.bad_json()
        return data
    if ctype in ("", "application/x-www-form-urlencoded", "text/plain"):
        return parse_query(body.decode("utf-8", "replace"))
    return {}


class RestDispatcher:
    """Runs REST requests against the registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # --- the pieces ------------------------------------------------------------------------------------------

    def _error(self, portal: Portal, exc: errors.RestError, decision: Decision = NO_FAULT) -> Reply:
        with portal.lock:
            portal.count_error(exc.code)
        reply = json_reply(exc.status, exc.body())
        reply.delay = decision.latency
        return reply

    def _count_error(self, portal: Portal) -> ErrorHook:
        def hook(exc: errors.RestError) -> None:
            with portal.lock:
                portal.count_error(exc.code)

        return hook

    def call(self, ctx: CallContext, method: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """Run one method (direct or inside a batch): operating check, method, accounting, ``time`` object."""
        fn = METHODS.get(method)
        if fn is None:
            raise errors.method_not_found()
        portal = ctx.portal
        key = (ctx.subject, method)
        wall, clock = self.registry.wall_clock, self.registry.clock
        start_wall, start = wall(), clock()
        with portal.lock:
            if portal.operating.blocked(key):
                raise errors.operation_time_limit()
            try:
                result = fn(ctx, params)
            finally:
                portal.operating.add(key, portal.options.cost(method), started=start, started_wall=start_wall)
                portal.counters.method_calls[method] += 1
            if not portal.options.time_block:
                return result, None
            snap = portal.operating.snapshot(key)
        finish, now = wall(), clock()
        return result, time_block(start_wall, finish, now - start, snap.operating, snap.reset_wall)

    def _outer_time(self, ctx: CallContext, start_wall: float, start: float) -> dict[str, Any] | None:
        portal = ctx.portal
        with portal.lock:
            if not portal.options.time_block:
                return None
            snap = portal.operating.snapshot((ctx.subject, "batch"))
        finish, now = self.registry.wall_clock(), self.registry.clock()
        return time_block(start_wall, finish, now - start, snap.operating, snap.reset_wall)

    def _carries_client_secret(self, req: RestRequest) -> bool:
        """Whether a REST request carries any app's client_secret anywhere (it must only go to the OAuth
        server): counted per portal as ``client_secret_seen`` so security tests can assert it stays 0."""
        secrets = self.registry.secrets()
        if not secrets:
            return False
        query = unquote_plus(req.query)
        headers = " ".join(req.headers.values())
        for secret in secrets:
            raw = secret.encode()
            if raw in req.body or quote(secret, safe="").encode() in req.body:
                return True
            if secret in query or secret in headers or secret in req.method:
                return True
        return False

    # --- the request -----------------------------------------------------------------------------------------

    def handle(self, req: RestRequest) -> Reply:
        start_wall, start = self.registry.wall_clock(), self.registry.clock()
        portal = self.registry.portal(req.domain)
        if portal is None:
            return json_reply(
                404,
                {
                    "error": "PORTAL_NOT_FOUND",
                    "error_description": f"No portal {req.domain!r} in the emulator",
                },
            )

        secret_seen = self._carries_client_secret(req)
        with portal.lock:
            portal.counters.requests += 1
            portal.counters.client_secret_seen += secret_seen
            faults = portal.faults
            decision = draw(faults, portal.rng)
            deleted, overload = faults.portal_deleted, faults.overload
        if deleted:
            return self._error(portal, errors.portal_deleted(), decision)
        if overload:
            return self._error(portal, errors.overload_limit(), decision)
        if decision.drop_before:
            with portal.lock:
                portal.counters.faults["drop"] += 1
            return Reply(status=0, drop=True)

        with portal.lock:
            accepted = portal.bucket_for(req.client_ip).try_acquire()
            now = self.registry.clock()
            if accepted:
                portal.counters.accepted += 1
                portal.accepted_times.append(now)
            else:
                portal.counters.refused_503 += 1
                portal.refused_times.append(now)
        if not accepted:
            return self._error(portal, errors.query_limit_exceeded(), decision)

        if decision.error_500:
            with portal.lock:
                portal.counters.faults["error_500"] += 1
            return self._error(portal, errors.internal_server_error(), decision)
        if decision.garbage_html:
            with portal.lock:
                portal.counters.faults["garbage_html"] += 1
            return Reply(status=502, body=GARBAGE_HTML, content_type="text/html", delay=decision.latency)

        try:
            query = parse_query(req.query)
            body = parse_body(req.headers, req.body)
            if req.webhook is not None:
                ctx = authenticate_webhook(portal, *req.webhook)
            else:
                ctx = authenticate_token(self.registry, portal, find_token(req.headers, query, body))
            params = {**query, **body}
            for name in ("auth", "access_token"):
                params.pop(name, None)
            method = normalize_method(req.method)
        except errors.RestError as exc:
            return self._error(portal, exc, decision)

        try:
            if method == "batch":
                result: Any = run_batch(ctx, params, self.call, self._count_error(portal))
                timing = self._outer_time(ctx, start_wall, start)
            else:
                result, timing = self.call(ctx, method, params)
            payload: dict[str, Any] = {"result": result}
            if timing is not None:
                payload["time"] = timing
            reply = json_reply(200, payload)
        except errors.RestError as exc:
            reply = self._error(portal, exc)
        return self._after(portal, reply, decision)

    def _after(self, portal: Portal, reply: Reply, decision: Decision) -> Reply:
        """Faults that strike once the call has been applied."""
        if decision.drop_after:
            with portal.lock:
                portal.counters.faults["drop_after"] += 1
            return Reply(status=0, drop=True)
        if decision.garbage_truncated:
            with portal.lock:
                portal.counters.faults["garbage_truncated"] += 1
            reply = Reply(status=200, body=reply.body[: max(1, len(reply.body) // 2)])
        if decision.slow:
            with portal.lock:
                portal.counters.faults["slow"] += 1
        reply.delay = decision.slow + decision.latency
        return reply
