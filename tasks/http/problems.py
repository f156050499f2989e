"""Errors as RFC 9457 problem details (`application/problem+json`): one shape for every refusal, never
carrying a secret (the detail texts are b24q's own, not echoes of the request).

Validation refusals add `errors`: one `{"index"?, "field", "message"}` per bad field, `field` a dotted path
into the job (`messages.0.im.chat_id`), `index` the job's place in an array."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
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
