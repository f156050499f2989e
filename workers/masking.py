"""What Flower (and anything else that reads task events) shows of a job's arguments: a short, masked summary.

Celery (protocol 2) puts `argsrepr` and `kwargsrepr` in every message's headers, and a worker's
`task-received` event carries them; Flower shows nothing else of the arguments. b24q jobs carry a
portal key, never a token. Still, a payload can be long (a delivery confirmation's MESSAGES) or
hold a URL with credentials in it (a sender's handler), and a raw message from another producer
can hold anything. So a `before_task_publish` handler replaces both headers of every `b24q.*` task
this process publishes (first enqueues, replays, resumes and the workers' own retries) with:

- values under a key that looks secret (token, secret, password, auth, ...) as `***`;
- URLs as `scheme://host/…` (no userinfo, path or query);
- strings cut at 80 characters, `MESSAGES` and any list longer than 3 items as a count;
- the whole repr capped at 400 characters.

Messages published by non-Python producers keep whatever `argsrepr` they send (or Celery's own).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from celery.signals import before_task_publish

SECRET_KEY = re.compile(r"token|secret|passw|auth|sign|api.?key|credential|cookie|session", re.IGNORECASE)
MAX_STRING = 80
MAX_ITEMS = 3
MAX_KEYS = 12
MAX_DEPTH = 3
MAX_REPR = 400
MASK = "***"
TASK_PREFIX = "b24q."


def _url(value: str) -> str | None:
    if "://" not in value[:12]:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.hostname:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def summarise(value: Any, key: str = "", depth: int = 0) -> Any:
    """A JSON-like summary of `value` with secrets masked and long things shortened."""
    if key and SECRET_KEY.search(key):
        return MASK
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        url = _url(value)
        if url is not None:
            return url
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…"
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return f"<{len(value)} keys>"
        items = list(value.items())
        out: dict[str, Any] = {str(k): summarise(v, str(k), depth + 1) for k, v in items[:MAX_KEYS]}
        if len(items) > MAX_KEYS:
            out["…"] = f"{len(items) - MAX_KEYS} more keys"
        return out
    if isinstance(value, list | tuple):
        if key.lower() == "messages":
            return f"<{len(value)} message{'s' if len(value) != 1 else ''}>"
        if len(value) > MAX_ITEMS or depth >= MAX_DEPTH:
            return f"<{len(value)} items>"
        return [summarise(v, key, depth + 1) for v in value]
    return f"<{type(value).__name__}>"


def _cap(text: str) -> str:
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 1] + "…"


def argsrepr(args: Any) -> str:
    return _cap(repr(tuple(summarise(a, depth=1) for a in args) if isinstance(args, list | tuple) else MASK))


def kwargsrepr(kwargs: Any) -> str:
    return _cap(repr(summarise(kwargs) if isinstance(kwargs, dict) else MASK))


@before_task_publish.connect
def mask_published_arguments(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    """Replace the message's argsrepr/kwargsrepr headers with masked summaries (b24q tasks only)."""
    if not isinstance(headers, dict):
        return
    name = str(headers.get("task") or sender or "")
    if not name.startswith(TASK_PREFIX) or "argsrepr" not in headers:
        return  # not ours, or protocol 1 (no repr headers)
    if isinstance(body, list | tuple) and len(body) >= 2:
        headers["argsrepr"] = argsrepr(body[0])
        headers["kwargsrepr"] = kwargsrepr(body[1])
    else:
        headers["argsrepr"] = headers["kwargsrepr"] = MASK
