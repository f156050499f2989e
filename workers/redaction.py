"""Every way b24q keeps secrets out of what people read: logs, Flower, the CLI and status views.

- `redact(text)`: secret query and form parameters (`client_secret=`, `refresh_token=`, `auth[access_token]=`,
  `AUTH_ID=`, and API keys or tokens a client put in a URL: `api_key=`, `key=`, `token=`, ...), the same
  secrets as JSON or repr fields (`"access_token": "…"`, `"auth": "…"`, escaped JSON too), webhook codes in
  `/rest/{user}/{code}/` paths and URL passwords, masked in free text.
  `RedactSecrets` applies it to every log record that reaches a handler it is on (`install_redaction`: the
  worker's root and task-logger handlers, the HTTP app's uvicorn loggers; so third-party loggers' records
  and traceback text too), to the arguments in place (a formatter may read them: uvicorn's access line),
  and never drops or breaks a record. httpx
  logs every request's full URL at INFO, and the OAuth refresh (a GET, as Bitrix24 documents it) carries
  client_secret and refresh_token in its query: `workers.celery` turns httpx's request lines off (b24q's
  observer hooks report requests without URLs); a user who turns them on gets them masked.
- `argsrepr` / `kwargsrepr`: what Flower (and anything that reads task events) shows of a job's
  arguments, a short summary: values under a key that looks secret as `***`; URLs as
  `scheme://host/…`; strings cut at 80 characters, `MESSAGES` and any list longer than 3 items as a
  count; the whole repr capped at 400 characters. `workers.celery` puts them in the `argsrepr` /
  `kwargsrepr` headers of every `b24q.*` message this process publishes (first enqueues, replays,
  resumes and retries); messages of non-Python producers keep what they send.
- `redis_url(url)`: a Redis URL (or a `sentinel://…;sentinel://…` list) without its password.
- `webhook_url(url)`: an incoming webhook's URL without its secret code.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# --- free text (logs) ----------------------------------------------------------------------------

#: what a secret is called: OAuth fields, the install's form fields (`AUTH_ID`, `REFRESH_ID`), REST's `auth`
_NAMES = r"client_secret|refresh_token|access_token|application_token|auth_id|refresh_id|auth|password"
#: what else names a secret in a URL's query: API keys and tokens a client put there. b24q takes its API keys
#: only in headers, but the access log shows whatever URL was requested.
_QUERY_NAMES = (
    r"api[_-]?key|x-api-key|access[_-]?key|secret[_-]?key|private[_-]?key|key|auth[_-]?token|id_token|token"
    r"|secret|signature|sig|passwd|pwd"
)
#: a parameter name starts a word (`key=`, not `monkey=`; `code=`, not `error_code=`), or follows an encoded
#: `[`, `?` or `&` (`auth%5Baccess_token%5D=`, a URL inside a parameter)
_NAME_START = r"(?:(?<![\w-])|(?<=%5B)|(?<=%3F)|(?<=%26))"
#: query and form parameters (and an OAuth `code=`), PHP-bracket ones too (`auth[access_token]=…`,
#: `auth%5Baccess_token%5D=…`: the install and event POSTs Bitrix24 sends)
_SECRET_PARAM = re.compile(
    rf"({_NAME_START}(?:{_NAMES}|{_QUERY_NAMES}|code)(?:\]|%5D)?(?:=|%3D))[^&\s\"'<>]+", re.IGNORECASE
)
#: the same secrets as JSON or Python-repr fields: `"access_token": "…"`, `'refresh_token': '…'` (event payloads,
#: OAuth answers and auth blocks that end up in an exception's text), REST's `{"auth": "…"}`, and JSON inside a
#: JSON string (`\"access_token\": \"…\"`). (A `"code"` field is an SMS provider's name, not a secret.)
_SECRET_FIELD = re.compile(rf"""(\\?["'](?:{_NAMES})\\?["']\s*:\s*\\?["'])[^"'\\]*""", re.IGNORECASE)
_WEBHOOK_PATH = re.compile(r"(/rest/\d+/)[^/\s\"'<>?]+")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)


#: what each pattern above needs somewhere in a text to match at all (a parameter's `=` or `%3D`, a field's
#: name, a webhook's path, a URL): most log lines have none of it, and one search costs a fraction of the
#: four substitutions (two lines a job on every worker: docs/benchmarks.md)
_SUSPECT = re.compile(r"=|%3d|secret|token|auth|refresh_id|password|/rest/|://", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with secret query parameters and fields, webhook codes and URL passwords masked."""
    if _SUSPECT.search(text) is None:
        return text
    return _substituted(text)


def _substituted(text: str) -> str:
    text = _SECRET_PARAM.sub(rf"\g<1>{MASK}", text)
    text = _SECRET_FIELD.sub(rf"\g<1>{MASK}", text)
    text = _WEBHOOK_PATH.sub(rf"\g<1>{MASK}", text)
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)


def _is_clean(text: str) -> bool:
    return redact(text) == text


def _redacted(value: Any) -> Any:
    """A log argument with its secrets masked: a string redacted, an object whose text carries a secret (an
    `httpx.URL`) replaced by that text redacted, anything else (numbers, clean objects) as it is."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    clean = redact(text)
    return value if clean == text else clean


def _masked(value: Any) -> Any:
    """A log argument replaced by the mask unless it is a number: for a secret split across arguments."""
    return value if value is None or isinstance(value, bool | int | float) else MASK


def _map_args(args: Any, change: Callable[[Any], Any]) -> Any:
    if isinstance(args, tuple):
        return tuple(change(a) for a in args)
    if isinstance(args, Mapping):
        return {k: change(v) for k, v in args.items()}
    return change(args)


def _redact_message(record: logging.LogRecord) -> None:
    message = record.getMessage()
    if _is_clean(message):
        return
    if not record.args:
        record.msg = redact(message)
        return
    # the template and the arguments' shape stay: a formatter may read the arguments (uvicorn's access
    # formatter unpacks a 5-tuple), and a redacted template could lose its placeholders
    args = record.args
    for change in (_redacted, _masked):
        record.args = _map_args(args, change)
        if _is_clean(record.getMessage()):
            return
    record.msg, record.args = redact(message), None  # the secret is in the template itself


class RedactSecrets(logging.Filter):
    """A handler filter: the message (its arguments redacted in place) and any traceback text are redacted.

    It never drops a record nor raises: a filter that raises loses the line and prints a traceback instead
    (on uvicorn's access logger, one per request, for any client that puts `access_token=` in a URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):
            _redact_message(record)
        try:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
        except Exception as exc:  # set, so that the handler's formatter does not fail on it in turn
            record.exc_text = f"(the traceback could not be formatted: {type(exc).__name__})"
        with contextlib.suppress(Exception):
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add `RedactSecrets` to every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


# --- URLs ----------------------------------------------------------------------------------------


def redis_url(url: str) -> str:
    """A Redis URL without its password (each part of a `sentinel://…;sentinel://…` list)."""
    if ";" in url:
        return ";".join(redis_url(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def webhook_url(url: str) -> str:
    """An incoming webhook's URL with its user and secret code masked."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/rest/…/<masked>/"


# --- job arguments (Flower) ----------------------------------------------------------------------

SECRET_KEY = re.compile(r"token|secret|passw|auth|sign|api.?key|credential|cookie|session", re.IGNORECASE)
MAX_STRING = 80
MAX_ITEMS = 3
MAX_KEYS = 12
MAX_DEPTH = 3
MAX_REPR = 400


def _short_url(value: str) -> str | None:
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
        url = _short_url(value)
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


TASK_PREFIX = "b24q."


def mask_published_arguments(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    """Replace the argsrepr/kwargsrepr headers of a b24q message with masked summaries (Celery's
    `before_task_publish` handler; other tasks' messages are left alone)."""
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
