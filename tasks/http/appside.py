"""The Bitrix24 application's own routes: its install handler and its event handler (bitrix24-facts.md §7).

Open without an API key, as Bitrix24 calls them; each request proves itself instead (`tasks.lifecycle`:
an install by one `app.info` call with its token, every other event by its `application_token`). Bodies
are PHP-bracket forms (`auth[member_id]=…`), as Bitrix24 posts them; JSON is accepted too.

    POST /b24/install   the app's install URL (API-only app: bound as ONAPPINSTALL; app with UI: the
                        installer page's POST, DOMAIN and PROTOCOL in the query string)
    POST /b24/events    the handler bound for ONAPPUNINSTALL and ONAPPUPDATE (and any other event)

Anyone can post here, so what a request may cost is bounded before it costs it: bodies of at most
`MAX_BODY`; its own threads (`B24Q_HTTP_EVENT_CONCURRENCY`, with at most `QUEUE_FACTOR` times as many
requests waiting for one, then 503), so that the /v1 routes, /healthz and /metrics never queue behind
events; and the portal calls an unproven event may cause, in `tasks.lifecycle` (docs/security.md).
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tasks.http.body import parse_json, read_body
from tasks.http.problems import problem
from tasks.lifecycle import Lifecycle
from workers.bitrix import querystring
from workers.runtime import Runtime

#: Largest event body read: Bitrix24's install and event POSTs are a few KB.
MAX_BODY = 64 * 1024
#: Requests that may wait for an event thread, per thread; more are refused 503 at once.
QUEUE_FACTOR = 8


def _parse(content_type: str, body: bytes) -> dict[str, Any] | None:
    try:
        if content_type.startswith("application/json"):
            value = parse_json(body)
            return value if isinstance(value, dict) else None
        return querystring.decode(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def router(runtime: Any) -> APIRouter:
    """The routes, given a callable that returns the process's `Runtime`."""
    api = APIRouter(tags=["Bitrix24 application"])
    threads: list[anyio.CapacityLimiter] = []  # made on first use, inside the server's event loop
    waiting = 0

    async def _handle(request: Request) -> Response:
        nonlocal waiting
        rt: Runtime = runtime()
        body = await read_body(request, min(MAX_BODY, rt.settings.http_max_body))
        form = _parse(request.headers.get("content-type", ""), body)
        if form is None:
            return problem(400, "the body is not a form (application/x-www-form-urlencoded) or JSON object")
        if not threads:
            threads.append(anyio.CapacityLimiter(rt.settings.http_event_concurrency))
        if waiting >= threads[0].total_tokens * (QUEUE_FACTOR + 1):
            return problem(503, "too many events at once; try again", {"Retry-After": "1"})
        waiting += 1
        try:
            outcome = await anyio.to_thread.run_sync(
                Lifecycle(rt).handle, form, dict(request.query_params), limiter=threads[0]
            )
        finally:
            waiting -= 1
        if outcome.result == "refused":
            headers = {"Retry-After": str(max(1, math.ceil(outcome.retry_after)))} if outcome.retry_after else None
            return problem(outcome.status, outcome.detail, headers)
        return JSONResponse(outcome.as_dict(), status_code=outcome.status)

    @api.post("/b24/install", summary="The application's install handler (ONAPPINSTALL or the installer page)")
    async def install(request: Request) -> Response:
        return await _handle(request)

    @api.post("/b24/events", summary="The application's event handler (ONAPPUNINSTALL, ONAPPUPDATE, ...)")
    async def event(request: Request) -> Response:
        return await _handle(request)

    return api
