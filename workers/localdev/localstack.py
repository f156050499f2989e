"""A whole b24q deployment on one machine, on loopback: Redis, the emulator portal, worker processes.

The demo (`b24q demo`), the integration tests and the benchmarks all run through this, so what they
exercise is what production runs: real `celery -A workers worker` processes talking to a real
redis-server and to a real HTTP server that behaves like Bitrix24. `LocalStack` composes them; each child
process (the emulator, a worker, the HTTP app, Flower) is in `workers.localdev.processes`.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers import rabbitmq
from workers.celery import configure
from workers.localdev.processes import CLIENT_ID, CLIENT_SECRET, Emulator, Flower, HttpApp, Worker
from workers.localdev.redisserver import RedisServer
from workers.portals.state import PortalState
from workers.runtime import Runtime, get_runtime, set_runtime
from workers.settings import Settings


class LocalStack:
    """Redis (embedded unless `redis_url` is given), the emulator, and worker processes.

    Parameters:
        redis_url: use this Redis instead of starting one.
        settings: extra `Settings` fields for workers and producer (e.g. {"gather_ms": 10}); with a
            `broker_url` (RabbitMQ) and an embedded Redis, the stack deletes its queues when it stops.
        emulator_args: extra `python -m emulator` arguments.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        settings: Mapping[str, Any] | None = None,
        emulator_args: list[str] | None = None,
        log_dir: str | None = None,
        redis_appendonly: bool = True,
    ) -> None:
        self._tmp = None if log_dir else tempfile.TemporaryDirectory(prefix="b24q-stack-")
        self.dir = Path(log_dir or self._tmp.name)  # type: ignore[union-attr]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis: RedisServer | None = None
        if redis_url is None:
            self.redis = RedisServer(directory=str(self.dir / "redis"), appendonly=redis_appendonly).start()
            redis_url = self.redis.url
        self.emulator = Emulator(self.dir, emulator_args)
        overrides = {
            "redis_url": redis_url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "oauth_url": f"{self.emulator.url}/oauth/token/",
            "portal_hosts": "127.0.0.1,localhost",  # the emulator's portals are paths on loopback
            "allow_private_portals": True,  # and loopback is no public address
            **(settings or {}),
        }
        self.settings = Settings(**overrides)
        self.env = {**os.environ, **{f"B24Q_{k.upper()}": str(v) for k, v in overrides.items()}}
        self.env.pop("REDIS_URL", None)
        self.workers: list[Worker] = []
        self.http: HttpApp | None = None
        self.flower: Flower | None = None

    def start_http(self, port: int = 0) -> HttpApp:
        """Serve the HTTP app (on `port` of 127.0.0.1; 0: any free one; OSError if it is taken), and make it
        the emulator's install handler for the stack's application."""
        if self.http is None:
            self.http = HttpApp(self.env, self.dir, port)
            self.http.wait_ready()
            self.emulator.admin(
                "POST", "apps", {"client_id": CLIENT_ID, "install_handler": f"{self.http.url}/b24/install"}
            )
        return self.http

    def install_portal(self, domain: str, timeout: float = 60.0, **options: Any) -> dict[str, Any]:
        """Create a portal on the emulator and install the application on it, as Bitrix24 does: the
        emulator posts ONAPPINSTALL to the HTTP app, which registers the portal by its member_id. Returns
        the emulator's answer once the portal is registered and its SMS providers are back (its `key` added).
        A portal the emulator has already (a reinstall) keeps its options."""
        self.start_http()
        if domain not in self.emulator.admin("GET", "portals"):
            self.emulator.add_portal(domain, **options)
        answer = dict(self.emulator.admin("POST", f"portals/{domain}/install", {}))
        registry = get_runtime().registry
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            key = registry.resolve(domain)
            portal = registry.get(key) if key is not None else None
            if portal is not None and portal.state == PortalState.ACTIVE and not portal.providers_pending:
                return {**answer, "key": portal.key}
            time.sleep(0.05)
        raise RuntimeError(
            f"{domain} was not registered in {timeout}s (handler answered {answer.get('handler_status')})"
        )

    def start_workers(
        self,
        count: int,
        concurrency: int = 32,
        extra: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        loglevel: str = "INFO",
        wait: bool = True,
        app: str = "workers",
    ) -> list[Worker]:
        """Start `count` more worker processes (`env` adds variables for these ones only; `app`: the module
        `celery -A` loads, as a deployment that wraps b24q's app in its own module does)."""
        start = len(self.workers)
        worker_env = {**self.env, **(env or {})}
        new = [
            Worker(f"w{start + i + 1}", worker_env, self.dir, concurrency, extra or [], loglevel, app)
            for i in range(count)
        ]
        self.workers.extend(new)  # before waiting, so that stop() ends them even if one never gets ready
        if wait:
            for worker in new:
                worker.wait_ready()
        return new

    def start_flower(self, port: int, login: str) -> Flower:
        """Flower on 127.0.0.1:`port` (0: a free one) for this stack's Redis, asking for `login` (`user:password`)."""
        if self.flower is None:
            self.flower = Flower(self.env, self.dir, port, login)
            self.flower.wait_ready()
        return self.flower

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    def restart_redis(self, down: float = 0.0, sig: int = signal.SIGKILL) -> float:
        """Crash (SIGKILL, by default) the stack's redis-server, keep it down `down` seconds, start it again
        on the same port with the same append-only file. Returns the seconds until it answered again."""
        if self.redis is None:
            raise RuntimeError("this stack does not own its Redis")
        started = time.monotonic()
        if sig == signal.SIGKILL:
            self.redis.kill()
        else:
            self.redis.stop()
        time.sleep(down)
        self.redis.start()
        return time.monotonic() - started

    def add_portal(self, key: str, **options: Any) -> dict[str, Any]:
        """Create a portal on the emulator and register it (OAuth) under `key`."""
        info = self.emulator.add_portal(key, **options)
        get_runtime().registry.add_oauth(
            key,
            info["client_endpoint"],
            info["access_token"],
            info["refresh_token"],
            float(info["expires"]),
            info.get("member_id", ""),
            key,
            options.get("plan"),
            options.get("rate", 0.0),
            options.get("burst", 0),
        )
        return info

    def add_webhook_portal(self, key: str, **options: Any) -> dict[str, Any]:
        info = self.emulator.add_portal(key, **options)
        get_runtime().registry.add_webhook(
            key, info["webhook_url"], options.get("plan"), options.get("rate", 0.0), options.get("burst", 0)
        )
        return info

    def stop(self) -> None:
        for worker in self.workers:  # all at once: each may take its soft-shutdown timeout
            worker.kill(signal.SIGTERM)
        for worker in self.workers:
            worker.stop(signalled=True)
        if self.flower is not None:
            self.flower.stop()
        if self.http is not None:
            self.http.stop()
        self.emulator.stop()
        if self.redis is not None:
            self.redis.close()
            if self.settings.on_rabbitmq:  # throwaway state: its queues go with it
                rabbitmq.delete(self.settings.broker_url, self.settings.queue)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalStack:
        configure(self.settings)
        self.runtime = Runtime(self.settings)
        set_runtime(self.runtime)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.runtime.close()
        set_runtime(None)


def dump(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
