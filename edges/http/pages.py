"""How the operator's console answers: its pages, rendered on the server from `templates/` (Jinja2, escaping
on) with the headers every page carries (a strict CSP, never framed, never cached), and a request refused as a
page (`Refused`, answered by the console's route class, `ConsoleRoute`, as is Redis not answering)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import redis
from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape

from edges import jobreport

_HEADERS = {
    # scripts and styles only from here (no inline script, no CDN); never framed (clickjacking)
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}

_templates = Environment(
    loader=PackageLoader("edges.http", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    auto_reload=False,  # the templates are package data: no stat() of each file at every page
)
_templates.filters["when"] = jobreport.when
_templates.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def refusal(status: int, message: str) -> HTMLResponse:
    return render("error.html", status, message=message, session=None)


class Refused(Exception):
    """A console request answered otherwise than its page or action: `response` (the sign-in form, a refusal)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class ConsoleRoute(APIRoute):
    """A console page whose Redis does not answer is a plain 503 page, not a traceback; a `Refused` request
    gets its answer."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Refused as refused:
                return refused.response
            except redis.RedisError:
                return refusal(503, "Redis does not answer: the console shows nothing until it does.")

        return answer
