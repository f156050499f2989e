"""Errors as RFC 9457 problem details (`application/problem+json`): one shape for every refusal, never
carrying a secret (the detail texts are b24q's own, not echoes of the request).

Validation refusals add `errors`: one `{"index"?, "field", "message"}` per bad field, `field` a dotted path
into the job (`messages.0.im.chat_id`), `index` the job's place in an array.

`answer_refusals` makes the app answer so wherever a refusal comes from: a `Problem` raised anywhere,
Starlette's 404 and 405, and Redis or the broker not answering (503, whichever route met it first)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def field_error(field: str, message: str, index: int | None = None) -> dict[str, Any]:
    """One entry of a problem's `errors`."""
    return (
        {"field": field, "message": message} if index is None else {"index": index, "field": field, "message": message}
    )


class Problem(Exception):
    """A refusal raised anywhere in a route (its dependencies, its thread-pool work) and answered as a problem."""

    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.errors = status, detail, headers, errors

    def response(self) -> JSONResponse:
        extra = {"errors": self.errors} if self.errors is not None else {}
        return problem(self.status, self.detail, self.headers, **extra)


# --- the app's answers -----------------------------------------------------------------------------------

#: What Redis or the broker not answering raises: a lost connection or a timeout (redis-py), a replica that
#: refuses writes during a failover, kombu's wrapped connection errors, and a socket's own. Not redis-py's
#: other errors (a wrong type, a script error): those are b24q's bugs, and stay 500.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    kombu.exceptions.OperationalError,
    OSError,
)
#: Seconds a client is told to wait before retrying a 503.
RETRY_UNAVAILABLE = 1


#: The methods a 405's `Allow` may name.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed(request: Request) -> str:
    """Every method some route takes on the request's path (Starlette names only the first route's), found
    by asking the routes as they would be asked for that method: nested routers included."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    )


def answer_refusals(app: FastAPI) -> None:
    """Answer every refusal of `app` as problem+json: a `Problem` raised in a route, an unknown path (404) or
    method (405, `Allow` naming every method of the path), and Redis or the broker not answering (503 with
    `Retry-After`, on any route: one place, not a try in each)."""

    async def refused(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response()

    async def starlette(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return problem(404, "no such route: /docs lists them")
        if exc.status_code == 405:
            return problem(405, f"{request.method} is not a method of this path", {"Allow": _allowed(request)})
        return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: Redis or the broker does not answer: %r", request.method, request.url.path, exc)
        headers = {"Retry-After": str(RETRY_UNAVAILABLE)}
        return problem(503, "Redis or the broker does not answer; try again", headers)

    app.add_exception_handler(Problem, refused)
    app.add_exception_handler(HTTPException, starlette)
    for error in UNAVAILABLE:
        app.add_exception_handler(error, unavailable)


# --- the shape, for OpenAPI documents -------------------------------------------------------------------


class FieldError(BaseModel):
    index: int | None = None
    field: str
    message: str


class ProblemDocument(BaseModel):
    """RFC 9457 problem details as b24q answers them."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


#: Where the OpenAPI document keeps `ProblemDocument` (`edges.http.intake.document` puts it there).
PROBLEM_REF = "#/components/schemas/Problem"
_SECONDS = {"schema": {"type": "integer", "minimum": 1}}


def responses(why: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for refusals: each status with its reason, as problem+json; 429 and 503 with the
    `Retry-After` they carry, 401 with its challenge, 405 with `Allow`."""
    content = {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}
    headers = {
        401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
        405: {"Allow": {"description": "The path's methods.", "schema": {"type": "string"}}},
        429: {"Retry-After": {"description": "Seconds until the key's next request is allowed.", **_SECONDS}},
        503: {"Retry-After": {"description": "Seconds to wait before trying again.", **_SECONDS}},
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status, description in why.items():
        out[status] = {"description": description, "content": content}
        if status in headers:
            out[status]["headers"] = headers[status]
    return out
