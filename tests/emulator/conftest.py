"""Fixtures for the emulator's own tests: a fake monotonic clock, a started Emulator, a portal, a client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from emulator import Emulator, PortalInfo, parse_query

DOMAIN = "test.bitrix24.test"
SENDER = "sms_provider"
CONNECTOR = "myconnector"


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[Emulator]:
    with Emulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
def portal(emu: Emulator) -> PortalInfo:
    return emu.add_portal(DOMAIN, senders=[SENDER], connectors=[CONNECTOR])


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def call(
    client: httpx.Client,
    info: PortalInfo,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    token: str | None = None,
) -> httpx.Response:
    """POST a JSON call with the token in the body, the way the docs' curl examples do."""
    body = dict(params or {})
    body["auth"] = token if token is not None else info.access_token
    return client.post(f"{info.client_endpoint}{method}", json=body)


def hook(client: httpx.Client, info: PortalInfo, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
    """POST a JSON call through the portal's incoming webhook."""
    return client.post(f"{info.webhook_url}{method}.json", json=params or {})


def error_of(resp: httpx.Response) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]


@dataclass(frozen=True)
class Received:
    """One request an event receiver got, exactly as it arrived."""

    path: str
    content_type: str
    body: bytes

    @property
    def form(self) -> dict[str, Any]:
        """The body parsed the way PHP would (``auth[member_id]`` → ``{"auth": {"member_id": ...}}``)."""
        return parse_query(self.body.decode())


class Receiver:
    """A tiny real HTTP server on a free loopback port that records every request (an app's event handler).

    ``status`` is what it answers; ``on_request`` runs before it answers (e.g. to call the portal back).
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 200
        self.on_request: Callable[[Received], None] | None = None
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got = Received(self.path, self.headers.get("Content-Type", ""), body)
                if receiver.on_request is not None:
                    receiver.on_request(got)
                with receiver._cond:
                    receiver.requests.append(got)
                    receiver._cond.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The first ``count`` requests, waiting until they have arrived."""
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self.requests) >= count, timeout)
            assert arrived, f"expected {count} request(s), got {len(self.requests)}"
            return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(timeout=5)
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()
