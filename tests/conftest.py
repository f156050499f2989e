"""Shared fixtures: a private redis-server for the session (never the machine's own), settings and
a Runtime wired to it. Integration fixtures (emulator, worker processes) are in tests/integration."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from workers.delivery.callpool import CallPool
from workers.localdev.redisserver import RedisServer
from workers.runtime import Runtime, set_runtime
from workers.settings import Settings


@pytest.fixture(autouse=True)
def _close_what_the_test_opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every Runtime and CallPool a test builds is closed when the test ends: their threads (the call
    pool's listener and heartbeat) must not outlive the test, nor run against its closed Redis."""
    opened: list[Any] = []
    for cls in (Runtime, CallPool):
        original = cls.__init__

        def init(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            __original(self, *args, **kwargs)
            opened.append(self)

        monkeypatch.setattr(cls, "__init__", init)
    yield
    for thing in reversed(opened):
        thing.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(appendonly=False) as server:
        yield server


@pytest.fixture
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        client_id="app.test",
        client_secret="s3cr3t-client",  # type: ignore[arg-type]
        oauth_url="http://127.0.0.1:9/oauth/token/",
        allow_private_portals=True,  # portals are the emulator's, on loopback; and no DNS in tests
        gather_ms=20,
        permit_wait=5.0,
        backoff_base=0.2,
        backoff_max=2.0,
    )


@pytest.fixture
def runtime(settings: Settings, rclient: redis.Redis) -> Iterator[Runtime]:
    rt = Runtime(settings, rclient)
    set_runtime(rt)
    yield rt
    set_runtime(None)


#: The tests `make test` runs together in one process of its two (pytest-xdist): each builds a whole stack and
#: kills parts of it, and their bounds were written for one such stack at a time.
ONE_AT_A_TIME = "tests/faults/"


@pytest.hookimpl(optionalhook=True)  # (a hook of pytest-xdist: absent without it)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For `-n 2` (`--dist load`, `make test`): pytest-xdist's scope scheduling with the fault tests one scope (one
    process runs them one after another; the largest scopes go first) and every other module a scope of its own
    (its module-scoped stacks are built once). (`--dist loadgroup` does not group on pytest 9.2, whose node ids
    pytest-xdist 3.8 can no longer suffix.) Any other `--dist` is pytest-xdist's own."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FaultsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return ONE_AT_A_TIME if nodeid.startswith(ONE_AT_A_TIME) else nodeid.split("::", 1)[0]

    return FaultsTogether(config, log)
