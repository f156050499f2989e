"""Fixtures for the emulator's own tests: a fake monotonic clock, a started Emulator, a portal, a client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emulator import Emulator, PortalInfo

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
