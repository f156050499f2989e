"""The Bitrix24 application's own routes: its install handler and its event handler (bitrix24-facts.md §7).

Open without an API key, as Bitrix24 calls them; each request proves itself instead (`tasks.lifecycle`:
an install by one `app.info` call with its token, every other event by its `application_token`). Bodies
are PHP-bracket forms (`auth[member_id]=…`), as Bitrix24 posts them; JSON is accepted too.

    POST /b24/install   the app's install URL (API-only app: bound as ONAPPINSTALL; app with UI: the
                        installer page's POST, DOMAIN and PROTOCOL in the query string)
    POST /b24/events    the handler bound for ONAPPUNINSTALL and ONAPPUPDATE (and any other event)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tasks.http.body import parse_json, read_body
from tasks.http.problems import problem
from tasks.lifecycle import Lifecycle
from workers.bitrix import querystring
from workers.runtime import Runtime


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

    async def _handle(request: Request) -> Response:
        rt: Runtime = runtime()
        body = await read_body(request, rt.settings.http_max_body)
        form = _parse(request.headers.get("content-type", ""), body)
        if form is None:
            return problem(400, "the body is not a form (application/x-www-form-urlencoded) or JSON object")
        outcome = await run_in_threadpool(Lifecycle(rt).handle, form, dict(request.query_params))
        if outcome.result == "refused":
            return problem(outcome.status, outcome.detail)
        return JSONResponse(outcome.as_dict())

    @api.post("/b24/install", summary="The application's install handler (ONAPPINSTALL or the installer page)")
    async def install(request: Request) -> Response:
        return await _handle(request)

    @api.post("/b24/events", summary="The application's event handler (ONAPPUNINSTALL, ONAPPUPDATE, ...)")
    async def event(request: Request) -> Response:
        return await _handle(request)

    return api
