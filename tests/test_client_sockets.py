"""The REST client over real sockets (the connection pool it sends on directly): what a portal's server says
reaches the client as httpx's own client would have read it: the JSON body, decompressed if the server
compressed it; a redirect, not followed; no answer in time, or none at all, as a transient error."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workers.bitrix.client import CallResult, Credentials, RestClient
from workers.errors import PortalMoved, TransportError

ANSWER: dict[str, Any] = {"result": {"ok": "✓ ünï"}, "time": {"operating": 0}}


class PortalServer(BaseHTTPRequestHandler):
    """Answers by the method named in the path; keeps what it was sent."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []
    release = threading.Event()  # a slow answer is held until the test is done

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        method = self.path.rsplit("/", 1)[-1]
        self.seen.append({"method": method, "path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        payload = json.dumps(ANSWER).encode()
        extra: dict[str, str] = {}
        status = 200
        if method == "gzip.method":
            payload, extra = gzip.compress(payload), {"Content-Encoding": "gzip"}
        elif method == "deflate.method":
            payload, extra = zlib.compress(payload), {"Content-Encoding": "deflate"}
        elif method == "moved.method":
            status, extra = 301, {"Location": "https://new.bitrix24.com/rest/moved.method"}
        elif method == "slow.method":
            self.release.wait(10)
        reason = "\xc9t\xe9" if method == "latin1.method" else None  # a reason phrase in Latin-1
        self.send_response(status, reason)
        for name, value in {"Content-Type": "application/json", **extra}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    """Says nothing of a client that hung up first: the slow answer's has timed out when the test releases it, and
    the traceback socketserver prints for it would land in the suite's output, outside any test."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ServerV6(Server):
    address_family = socket.AF_INET6


@contextlib.contextmanager
def serving(v6: bool = False) -> Iterator[str]:
    """A portal's server on loopback; its address as an endpoint's authority."""
    PortalServer.seen = []
    PortalServer.release = threading.Event()
    server = ServerV6(("::1", 0), PortalServer) if v6 else Server(("127.0.0.1", 0), PortalServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"[::1]:{server.server_address[1]}" if v6 else f"127.0.0.1:{server.server_address[1]}"
    finally:
        PortalServer.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # no proxy: the client sends on its own pool


@pytest.fixture
def portal() -> Iterator[Credentials]:
    with serving() as authority:
        yield Credentials(f"http://{authority}/rest/", "ACCESS-SECRET-123")


@pytest.fixture
def client() -> Iterator[RestClient]:
    c = RestClient(read_timeout=0.3)
    yield c
    c.close()


def test_a_call_sends_json_with_its_token_and_reads_the_answer(portal: Credentials, client: RestClient) -> None:
    out = client.call(portal, "im.dialog.unread", {"DIALOG_ID": "chat1", "TEXT": "привет"})
    assert out == CallResult(ANSWER["result"], ANSWER["time"])
    (sent,) = PortalServer.seen
    assert sent["body"] == {"DIALOG_ID": "chat1", "TEXT": "привет", "auth": "ACCESS-SECRET-123"}
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["Host"] == portal.endpoint.split("/")[2]


@pytest.mark.parametrize("method", ["gzip.method", "deflate.method"])
def test_a_compressed_answer_is_read_decompressed(portal: Credentials, client: RestClient, method: str) -> None:
    assert client.call(portal, method, {}).result == ANSWER["result"]
    assert "gzip" in PortalServer.seen[0]["headers"]["Accept-Encoding"]


def test_a_redirect_is_not_followed(portal: Credentials, client: RestClient) -> None:
    with pytest.raises(PortalMoved) as moved:
        client.call(portal, "moved.method", {})
    assert moved.value.location == "https://new.bitrix24.com/rest/moved.method"
    assert len(PortalServer.seen) == 1


def test_no_answer_in_time_is_a_timeout(portal: Credentials, client: RestClient) -> None:
    with pytest.raises(TransportError) as err:
        client.call(portal, "slow.method", {})
    assert err.value.code == "TIMEOUT"
    assert "ACCESS-SECRET" not in str(err.value)


def test_no_server_at_all_is_a_network_error(client: RestClient) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError) as err:
        client.call(Credentials(f"http://127.0.0.1:{port}/rest/", "ACCESS-SECRET-123"), "im.dialog.unread", {})
    assert err.value.code == "NETWORK"


def test_with_httpx_lines_turned_on_each_request_is_logged_as_httpx_logs_it(
    portal: Credentials, client: RestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A user who turns httpx's logger on to watch the traffic (tests/integration/loud_worker.py) still sees
    every request; the redaction filter on the worker's handlers masks what they carry."""
    with caplog.at_level(logging.INFO, logger="httpx"):
        client.call(portal, "im.dialog.unread", {})
    assert [r.getMessage() for r in caplog.records if r.name == "httpx"] == [
        f'HTTP Request: POST {portal.endpoint}im.dialog.unread "HTTP/1.1 200 OK"'
    ]


@pytest.mark.parametrize(
    ("v6", "path"), [(True, "/rest/"), (False, "/rest/1/a b/")], ids=["IPv6 literal", "a space in the path"]
)
def test_an_endpoint_httpcore_cannot_take_as_it_is_goes_as_httpx_sends_it(
    client: RestClient, v6: bool, path: str
) -> None:
    """An IPv6 literal keeps its brackets in the Host header; a path character is percent-encoded."""
    with serving(v6) as authority:
        assert client.call(Credentials(f"http://{authority}{path}", "T"), "im.dialog.unread", {}).result
        (sent,) = PortalServer.seen
    assert sent["headers"]["Host"] == authority
    assert sent["path"] == path.replace(" ", "%20") + "im.dialog.unread"


def test_a_reason_phrase_in_latin1_is_logged_without_failing_the_call(
    portal: Credentials, client: RestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="httpx"):
        assert client.call(portal, "latin1.method", {}).result == ANSWER["result"]
    assert [r.getMessage() for r in caplog.records if r.name == "httpx"] == [
        f'HTTP Request: POST {portal.endpoint}latin1.method "HTTP/1.1 200 t"'
    ]
