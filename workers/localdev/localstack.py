"""A whole b24q deployment on one machine, on loopback: Redis, the emulator portal, worker processes.

The demo (`b24q demo`), the integration tests and the benchmarks all run through this, so what they
exercise is what production runs: real `celery -A workers worker` processes talking to a real
redis-server and to a real HTTP server that behaves like Bitrix24.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from workers import rabbitmq
from workers.celery import configure
from workers.localdev.redisserver import RedisServer
from workers.portals.state import PortalState
from workers.runtime import Runtime, get_runtime, set_runtime
from workers.settings import Settings

#: The app credentials the emulator and the workers share in a local stack.
CLIENT_ID = "local.b24q.app"
CLIENT_SECRET = "local-client-secret-7f3a9c"


def _terminate(process: subprocess.Popen[Any], client: httpx.Client) -> None:
    """Close the client to a child server, then stop the child (SIGTERM, SIGKILL after 10 s)."""
    client.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Emulator:
    """The emulator as a child process, driven through its admin API."""

    def __init__(self, log_dir: Path, args: list[str] | None = None) -> None:
        self.log_path = log_dir / "emulator.log"
        cmd = [
            sys.executable,
            "-m",
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            *(args or []),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + 20
        self.url = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"emulator exited; see {self.log_path}")
            if line.startswith("READY "):
                self.url = line.split()[1].rstrip("/")
                break
        if not self.url:
            raise RuntimeError("emulator did not start")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def add_portal(self, domain: str, **options: Any) -> dict[str, Any]:
        return dict(self.admin("POST", "portals", {"domain": domain, **options}))

    def state(self, domain: str) -> dict[str, Any]:
        return dict(self.admin("GET", f"portals/{domain}/state"))

    def set_faults(self, domain: str, **faults: Any) -> None:
        self.admin("POST", f"portals/{domain}/faults", faults)

    def expire(self, domain: str) -> None:
        self.admin("POST", f"portals/{domain}/expire", {})

    def stop(self) -> None:
        _terminate(self.process, self.http)
        self._log.close()


class Worker:
    """One `celery -A workers worker` process (`app`: another module that exposes b24q's Celery app)."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_dir: Path,
        concurrency: int,
        extra: list[str],
        loglevel: str = "INFO",
        app: str = "workers",
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (a restarted worker of the same name appends)
        self._log_start = self._log.tell()
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            f"--loglevel={loglevel}",
            f"--hostname={name}@%h",
            f"--concurrency={concurrency}",
            *extra,
        ]
        self.process = subprocess.Popen(cmd, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited; see {self.log_path}")
            if b" ready." in self.log_path.read_bytes()[self._log_start :]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready in {timeout}s; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its exit code."""
        code = self.process.wait(timeout)
        self._log.flush()
        return code

    def stop(self, timeout: float = 30, signalled: bool = False) -> None:
        if self.process.poll() is None:
            if not signalled:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class HttpApp:
    """The HTTP app (`uvicorn edges.http.app:app`) as a child process, on a loopback socket bound here so that
    its URL is known before it starts (uvicorn `--fd`: no race for the port)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, port: int = 0) -> None:
        self.log_path = log_dir / "http.log"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(("127.0.0.1", port))
        except OSError:
            self._sock.close()
            raise
        self._sock.listen(128)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        fd = self._sock.fileno()
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "edges.http.app:app",
            "--fd",
            str(fd),
            "--log-level",
            "info",
            "--http",
            "edges.http.server:NoDelayH11Protocol",  # (edges.http.server.PROTOCOL: workers do not import tasks)
            "--h11-max-incomplete-event-size",
            "65536",
        ]
        full_env = {**env, "B24Q_HTTP_PUBLIC_URL": self.url}
        self.process = subprocess.Popen(cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(fd,))
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the HTTP app exited; see {self.log_path}")
            try:
                if self.http.get("/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the HTTP app did not answer in {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        _terminate(self.process, self.http)
        self._sock.close()
        self._log.close()


class Flower:
    """Flower (`celery -A workers flower`) on loopback with a login, for the stack's broker; `url` once it
    listens."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, port: int, login: str) -> None:
        self.log_path = log_dir / "flower.log"
        if port == 0:  # Flower would not say which port it took
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.login = login
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "celery", "-A", "workers", "flower", "--address=127.0.0.1", f"--port={port}"]
        # the broker from B24Q_REDIS_URL through the b24q app; the login from the environment, not from `ps`
        self.process = subprocess.Popen(
            cmd, env={**env, "FLOWER_BASIC_AUTH": login}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        host, port = self.url.removeprefix("http://").split(":")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Flower exited; see {self.log_path}")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Flower did not listen in {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


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
