"""The child processes of a local stack, each started, awaited until it serves, and stopped: the emulator
(driven through its admin API), `celery -A workers worker` processes, the HTTP app and Flower.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

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
