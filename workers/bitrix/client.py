"""The Bitrix24 REST client: one request builder and one answer parser for every method and `batch`.

It takes an `httpx` transport, so unit tests answer with `httpx.MockTransport` and integration tests
talk to the emulator over real sockets through the same code path. It never retries and never
sleeps: deciding what an error means for a job is the pipeline's business (`workers.errors`).
Secrets (access tokens, webhook codes) never appear in the text of the errors it raises.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.request import getproxies

import httpcore
import httpx

from workers.bitrix import querystring
from workers.bitrix.transport import pooled_transport
from workers.errors import PortalMoved, RestError, ServerError, TransportError, rest_error

BATCH_LIMIT = 50
_HEADERS = {"User-Agent": "b24q/0.1", "Accept": "application/json", "Accept-Encoding": "gzip, deflate"}
_POST_HEADERS = [(k.encode(), v.encode()) for k, v in {**_HEADERS, "Content-Type": "application/json"}.items()]
_httpx_log = logging.getLogger("httpx")
#: URLs httpcore sends as they are, as httpx would have sent them: a host name or IPv4 address (no IDNA, no
#: IPv6 brackets), a port, path segments of unreserved characters (nothing to percent-encode, no dot segment);
#: any other URL goes through httpx's own request model
_PLAIN_URL = re.compile(
    r"https?://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?\Z"
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: what httpcore raises for a request that got no answer (httpx raises its own `HTTPError`s)
_UNANSWERED = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, httpcore.ProxyError)


@dataclass(frozen=True)
class _Answer:
    status: int
    location: str | None
    content: bytes


@dataclass(frozen=True)
class Credentials:
    """Where and as whom to call a portal.

    `endpoint` is the OAuth `client_endpoint` (`https://x.bitrix24.com/rest/`) with an `access_token`,
    or an incoming-webhook URL (`https://x.bitrix24.com/rest/1/code/`) with none.
    """

    endpoint: str
    access_token: str | None = field(default=None)

    @property
    def is_webhook(self) -> bool:
        return self.access_token is None

    def moved(self, location: str, method: str) -> Credentials:
        """The same credentials at the address a redirect of a call to `method` named.

        The redirect repeats the request's path (`{endpoint}{method}`) under the new domain
        (bitrix24-facts.md §7.5): the new endpoint is the location without the method; a location
        that does not end in it keeps the old endpoint's path on the new host (what PHPSDK does).
        """
        new = urlsplit(location)
        for suffix in (f"/{method}", f"/{method}.json"):
            if new.path.endswith(suffix):
                return replace(
                    self, endpoint=urlunsplit((new.scheme, new.netloc, new.path[: -len(suffix) + 1], "", ""))
                )
        return replace(self, endpoint=urlunsplit((new.scheme, new.netloc, urlsplit(self.endpoint).path, "", "")))

    def __repr__(self) -> str:  # keep tokens and webhook codes out of logs and tracebacks
        return f"Credentials(endpoint=<{'webhook' if self.is_webhook else 'oauth'}>, access_token=<masked>)"


@dataclass(frozen=True)
class CallResult:
    """A successful call: its `result` and the `time` block (None on portals that omit it)."""

    result: Any
    time: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class BatchResult:
    """One `batch` answer: per command key, its `CallResult` or the `RestError` it got."""

    results: dict[str, CallResult | RestError]
    time: Mapping[str, Any] | None = None


class RestClient:
    """Synchronous, thread-safe client (one per worker process; httpx pools connections).

    Parameters:
        transport: an httpx transport; `None` for real sockets.
        connect_timeout / read_timeout: seconds; every call has both.
        public_only: real sockets connect only to public addresses (`workers.bitrix.transport`), whatever
            a portal's name resolves to at the time of the call; not with an https proxy in the environment.

    Examples:
        >>> def handler(request):
        ...     return httpx.Response(200, json={"result": True})
        >>> client = RestClient(transport=httpx.MockTransport(handler))
        >>> client.call(Credentials("https://x/rest/", "t"), "im.dialog.unread", {}).result
        True
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_connections: int = 200,
        public_only: bool = False,
    ) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        proxies = getproxies()
        #: the connection pool requests go out on directly, unless a proxy is in the way or a transport is given:
        #: httpx's own layers (its client's send, its request and URL models) cost more CPU than the rest of
        #: a request (docs/benchmarks.md, `bench.run http`)
        self._pool: httpcore.ConnectionPool | None = None
        if transport is None and public_only and not (proxies.get("https") or proxies.get("all")):
            transport, self._pool = pooled_transport(limits, public_only=True)  # (through a proxy, it picks)
        elif transport is None and not set(proxies) - {"no"}:
            transport, self._pool = pooled_transport(limits, public_only=False)
        self._http = httpx.Client(
            transport=transport,  # None: a proxy in the environment, httpx's client picks it
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=limits,
            headers=_HEADERS,
            follow_redirects=False,
        )
        self._transport = transport
        self._timeout = self._http.timeout.as_dict()

    def close(self) -> None:
        self._http.close()

    def call(self, creds: Credentials, method: str, params: Mapping[str, Any]) -> CallResult:
        """Call one method; raise the typed error of the answer."""
        body = self._post(creds, method, params)
        return CallResult(body.get("result"), body.get("time"))

    def batch(
        self, creds: Credentials, commands: Mapping[str, tuple[str, Mapping[str, Any]]], halt: bool = False
    ) -> BatchResult:
        """Run up to 50 commands in one request (one unit of the portal's bucket).

        A whole-request error (expired token, 503, network) is raised; per-command errors are returned.
        """
        if len(commands) > BATCH_LIMIT:
            raise ValueError(f"a batch carries at most {BATCH_LIMIT} commands, got {len(commands)}")
        cmd = {key: f"{method}?{querystring.encode(params)}" for key, (method, params) in commands.items()}
        body = self._post(creds, "batch", {"halt": 1 if halt else 0, "cmd": cmd})
        inner = body.get("result")
        if not isinstance(inner, Mapping):
            raise TransportError("BAD_RESPONSE", "batch answer without a result object")
        results = _as_dict(inner.get("result"))
        errors = _as_dict(inner.get("result_error"))
        times = _as_dict(inner.get("result_time"))
        out: dict[str, CallResult | RestError] = {}
        for key in commands:
            if key in errors:
                err = errors[key] if isinstance(errors[key], Mapping) else {}
                out[key] = rest_error(str(err.get("error", "UNKNOWN")), str(err.get("error_description", "")))
            elif key in results:
                out[key] = CallResult(results[key], times.get(key))
            else:  # with halt=0 every command runs; a missing key means the answer was cut short
                out[key] = ServerError("BATCH_RESULT_MISSING", f"no result for command {key}")
        return BatchResult(out, body.get("time"))

    def _post(self, creds: Credentials, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        payload = dict(params)
        if creds.access_token is not None:
            payload["auth"] = creds.access_token
        url = creds.endpoint.rstrip("/") + "/" + method
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        try:
            answer = self._exchange(url, body)
        except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
            raise TransportError("TIMEOUT", f"{method}: {type(exc).__name__}") from None
        except (httpx.HTTPError, *_UNANSWERED) as exc:
            raise TransportError("NETWORK", f"{method}: {type(exc).__name__}") from None
        if answer.status in _REDIRECTS and answer.location is not None:
            # never followed here: following turns the POST into a GET and drops the parameters (§7.5)
            raise PortalMoved(urljoin(url, answer.location), answer.status, method)
        return parse_answer(method, answer.status, answer.content)

    def _exchange(self, url: str, body: bytes) -> _Answer:
        """POST a JSON `body` and read the whole answer (decoded, if the server compressed it)."""
        if self._pool is not None and _PLAIN_URL.match(url):
            sent = self._pool.request(
                "POST", url, headers=_POST_HEADERS, content=body, extensions={"timeout": self._timeout}
            )
            location = coding = None
            for name, value in sent.headers:
                if name.lower() == b"location":
                    location = _header_text(value)
                elif name.lower() == b"content-encoding":
                    coding = value.strip().lower()
            content = sent.content
            if coding not in (None, b"identity"):  # httpx's decoders, as its client would have applied them
                content = httpx.Response(sent.status, headers=sent.headers, stream=httpx.ByteStream(content)).read()
            if _httpx_log.isEnabledFor(logging.INFO):  # the line httpx's client writes, for who turned them on
                version, reason = (
                    sent.extensions.get(k, b"").decode("ascii", "ignore") for k in ("http_version", "reason_phrase")
                )
                _httpx_log.info('HTTP Request: POST %s "%s %d %s"', url, version, sent.status, reason)
            return _Answer(sent.status, location, content)
        request = httpx.Request("POST", url, headers=_HEADERS, content=body, extensions={"timeout": self._timeout})
        request.headers["Content-Type"] = "application/json"
        if self._transport is None:
            response = self._http.send(request)
        else:
            response = self._transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        return _Answer(response.status_code, response.headers.get("location"), response.content)


def _header_text(value: bytes) -> str:
    """A header's value as httpx reads one: UTF-8 (ASCII included), else Latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def parse_answer(method: str, status: int, content: bytes) -> dict[str, Any]:
    """Turn an answer into its JSON body, or raise the typed error it carries."""
    try:
        body = json.loads(content)
    except ValueError:
        raise TransportError(
            "BAD_RESPONSE", f"{method}: HTTP {status}, body is not JSON ({len(content)} bytes)"
        ) from None
    if not isinstance(body, dict):
        raise TransportError("BAD_RESPONSE", f"{method}: HTTP {status}, JSON body is not an object")
    if "error" in body:
        extra = {k: v for k, v in body.items() if k not in ("error", "error_description")}
        raise rest_error(str(body["error"]), str(body.get("error_description", "")), status, **extra)
    if status >= 500:
        raise ServerError(f"HTTP_{status}", f"{method}: no error code in the answer", status)
    if status >= 400:
        raise rest_error(f"HTTP_{status}", f"{method}: no error code in the answer", status)
    if "result" not in body:
        raise TransportError("BAD_RESPONSE", f"{method}: HTTP {status}, answer has no result")
    return body


def _as_dict(value: Any) -> dict[str, Any]:
    """Bitrix24 sends empty collections as `[]`, not `{}`."""
    return dict(value) if isinstance(value, Mapping) else {}
