"""Reading a request body: with a size limit (a declared length above it is refused before one byte is
read, and a body that turns out longer, chunked or lying, is cut off as soon as it passes the limit), and
as strict JSON (RFC 8259: UTF-8, no NaN or Infinity), the one parser of every JSON body the app reads."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from fastapi import Request


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class NotJson(ValueError):
    """The body is not strict UTF-8 JSON; the message says why (the answer's detail)."""


def _no_constant(name: str) -> NoReturn:
    raise NotJson(f"{name} is not a JSON number")


def parse_json(body: bytes) -> Any:
    """The JSON value of `body`, or `NotJson`. Stricter than `json.loads`, which guesses UTF-16 and UTF-32
    from the bytes and reads `NaN`, `Infinity` and `-Infinity`: none of them is JSON, and a value parsed
    from them would reach the queue as something the published schema never allowed."""
    try:
        text = body.decode("utf-8")  # strict: a UTF-16/32 body, or any byte that is not UTF-8, is refused
    except UnicodeDecodeError:
        raise NotJson("the body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except NotJson:
        raise
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise NotJson("the body is not JSON") from None
