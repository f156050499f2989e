"""The Bitrix24 application's own routes: its install handler and its event handler (bitrix24-facts.md §7).

Open without an API key, as Bitrix24 calls them; each request proves itself instead (`edges.lifecycle`:
an install by one `app.info` call with its token, every other event by its `application_token`). Bodies
are PHP-bracket forms (`auth[member_id]=…`), as Bitrix24 posts them; JSON is accepted too.

    POST /b24/install   the app's install URL (API-only app: bound as ONAPPINSTALL; app with UI: the
                        installer page's POST, DOMAIN and PROTOCOL in the query string)
    POST /b24/events    the handler bound for ONAPPUNINSTALL and ONAPPUPDATE (and any other event)

Anyone can post here, so what a request may cost is bounded before it costs it: bodies of at most
`MAX_BODY`; its own threads (`B24Q_HTTP_EVENT_CONCURRENCY`, with at most `QUEUE_FACTOR` times as many
requests waiting for one, then 503), so that the /v1 routes, /healthz and /metrics never queue behind
events; and the portal calls an unproven event may cause, in `edges.lifecycle` (docs/security.md).
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from edges.http.body import parse_json, read_body
from edges.http.problems import problem, responses
from edges.lifecycle import Lifecycle
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


# --- the contract, for the OpenAPI document ----------------------------------------------------------------


class EventAnswer(BaseModel):
    """What an event led to (`edges.lifecycle.Outcome`)."""

    result: str = Field(
        description="applied; ignored (nothing to do: an unknown portal, no newer tokens); or deferred (202: "
        "proven later, when the portal can be asked)"
    )
    portal: str = Field(description="The portal's key in the registry; empty when none was found.")
    detail: str


_REFUSALS = {
    400: "The body is not a form or a JSON object, or is empty; or an install lacks member_id, client_endpoint or "
    "a token pair, names a client_endpoint that is not an https URL, or was posted to /b24/install with another "
    "event; or a body posted to /b24/events names no event.",
    401: "The event's application_token does not match, or the portal did not accept its access token.",
    403: "An install's client_endpoint is not a host in B24Q_PORTAL_HOSTS.",
    409: "The portal's domain or member_id belongs to another registered portal, or its app is uninstalled.",
    413: "The body is larger than B24Q_HTTP_MAX_BODY.",
    429: "The portal's budget for verifying unproven tokens is spent for now (Retry-After).",
    503: "The portal could not confirm the token just now, too many events wait at once, or Redis does not answer.",
}
#: Answers that are not refusals: what the event led to (200), or that it will be proven later (202).
_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": EventAnswer, "description": "Deferred: the event is proven once the portal can be asked."},
    **responses(_REFUSALS),
}

_TEXT = {"type": "string", "minLength": 1}
#: An install as ONAPPINSTALL posts it (§7.1): what b24q needs to try the token, and nothing that would be
#: refused before the portal is asked (an endpoint that is not https). The installer page's POST (`AUTH_ID`,
#: `REFRESH_ID`, `member_id`; `DOMAIN` in the query string) is accepted too.
_INSTALL_AUTH = {
    "type": "object",
    "required": ["member_id", "access_token", "refresh_token", "client_endpoint"],
    "properties": {
        "member_id": _TEXT,
        "access_token": _TEXT,
        "refresh_token": _TEXT,
        "application_token": {"type": "string"},
        "domain": {"type": "string"},
        "client_endpoint": {"type": "string", "pattern": r"^https://[a-z0-9-]+(\.[a-z0-9-]+)+/rest/$"},
    },
}
_INSTALL = {"enum": ["ONAPPINSTALL"], "description": "ONAPPINSTALL, or none (the installer page's POST)."}


def _form(event: dict[str, Any], auth: dict[str, Any]) -> dict[str, Any]:
    """`auth`'s fields as the PHP-bracket form keys Bitrix24 posts (`auth[member_id]`)."""
    return {
        "type": "object",
        "required": [f"auth[{name}]" for name in auth.get("required", [])],
        "properties": {"event": event, **{f"auth[{k}]": v for k, v in auth.get("properties", {}).items()}},
    }


def _body(event: dict[str, Any], auth: dict[str, Any]) -> dict[str, Any]:
    json_schema = {"type": "object", "properties": {"event": event, "auth": auth}}
    if auth.get("required"):
        json_schema["required"] = ["auth"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": _form(event, auth)},
                "application/json": {"schema": json_schema},
            },
        }
    }


#: Any event: whatever its other fields hold, it is answered (an event it cannot prove or place is refused or
#: ignored by `edges.lifecycle`, never by its shape: Bitrix24 does not send an event twice, §7.1); it names itself.
_OBJECT = {
    "type": "object",
    "required": ["event"],
    "properties": {"event": {"type": "string", "pattern": r"\S"}},
    "description": "`event` (ONAPPUNINSTALL, ONAPPUPDATE, ...), `auth` (member_id, domain, application_token, "
    "tokens), `data`; as a PHP-bracket form (`auth[member_id]=...`) or JSON.",
}
#: A form's fields are texts (a field with no text would not be sent at all)
_FORM = {**_OBJECT, "additionalProperties": {"type": "string"}}
_ANY_EVENT = {
    "requestBody": {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": _FORM}, "application/json": {"schema": _OBJECT}},
    }
}


def router(runtime: Any) -> APIRouter:
    """The routes, given a callable that returns the process's `Runtime`."""
    api = APIRouter(tags=["Bitrix24 application"])
    threads: list[anyio.CapacityLimiter] = []  # made on first use, inside the server's event loop
    waiting = 0

    async def _handle(request: Request, install: bool = False) -> Response:
        nonlocal waiting
        rt: Runtime = runtime()
        body = await read_body(request, min(MAX_BODY, rt.settings.http_max_body))
        form = _parse(request.headers.get("content-type", ""), body)
        if not form:  # nothing to read (an empty body, `{}`): refused before anything is looked up
            return problem(400, "the body is not a form (application/x-www-form-urlencoded) or JSON object of fields")
        if install:
            # the install URL hears installs only (§7.1); with no event name it is the installer page's POST
            if str(form.get("event") or "ONAPPINSTALL").upper() != "ONAPPINSTALL":
                return problem(400, "the install handler takes installs (ONAPPINSTALL); events go to /b24/events")
            form = {**form, "event": "ONAPPINSTALL"}
        elif not isinstance(form.get("event"), str) or not form["event"].strip():
            # Bitrix24 names every event it posts (§7.1); only the installer page posts none, to the install URL
            return problem(400, "an event names itself (event); the installer page posts to /b24/install")
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

    @api.post(
        "/b24/install",
        summary="The application's install handler (ONAPPINSTALL or the installer page)",
        response_model=EventAnswer,
        responses=_ANSWERS,
        openapi_extra=_body(_INSTALL, _INSTALL_AUTH),
    )
    async def install(request: Request) -> Response:
        return await _handle(request, install=True)

    @api.post(
        "/b24/events",
        summary="The application's event handler (ONAPPUNINSTALL, ONAPPUPDATE, ...)",
        response_model=EventAnswer,
        responses=_ANSWERS,
        openapi_extra=_ANY_EVENT,
    )
    async def event(request: Request) -> Response:
        return await _handle(request)

    return api
