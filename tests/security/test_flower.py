"""Flower as the README starts it: its documented command, run as written against the test's own Redis,
listens on 127.0.0.1 only, asks for the login it is given, and is connected to that Redis. Every other
place that prints or runs a Flower command (docs, deploy/, the demo) binds loopback too."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from workers.localdev.redisserver import RedisServer

ROOT = Path(__file__).parent.parent.parent
README = (ROOT / "README.md").read_text()
DOCUMENTED_PORT = "--port=5555"


def documented_command() -> str:
    """The one command of the README's Flower block (the paragraph that starts "Flower, for a running pool")."""
    section = README.split("Flower, for a running pool")[1]
    block = section.split("```sh")[1].split("```")[0]
    [command] = [line.split("#")[0].strip() for line in block.splitlines() if "celery" in line]
    return command


def flower_commands() -> list[tuple[str, str]]:
    """(where, line) for every line that starts Flower in the docs, deploy/ and the demo."""
    files = [ROOT / "README.md", ROOT / "docs" / "operations.md", ROOT / "edges" / "demo.py"]
    files += [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
    return [
        (f"{path.relative_to(ROOT)}:{n}", line)
        for path in files
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if re.search(r"celery -A workers\b.*\bflower\b", line)
    ]


class Flower:
    """The documented command run by `sh` on a free port; its output in a file; `stop` ends it."""

    def __init__(self, command: str, redis_url: str, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        # never on the documented port itself: another Flower may be there
        assert DOCUMENTED_PORT in command, f"the README's Flower command names no {DOCUMENTED_PORT}: {command}"
        self.command = command.replace(DOCUMENTED_PORT, f"--port={self.port}")
        self.output = workdir / "flower.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("B24Q_", "FLOWER_"))}
        # the venv's `celery` first; the repository importable as it is for a deployment's working directory
        env.update(B24Q_REDIS_URL=redis_url, PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                ["sh", "-c", self.command],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Flower runs as the shell's child: `stop` ends the whole group
            )
        deadline = time.monotonic() + 60
        while not self._listening():
            assert self.process.poll() is None, f"Flower exited: {self.log()}"
            assert time.monotonic() < deadline, f"Flower did not listen: {self.log()}"
            time.sleep(0.1)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        group = self.process.pid  # its own session: the shell and Flower, nothing else
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=15)
        deadline = time.monotonic() + 15
        while self._listening():  # the shell may end before Flower does
            assert time.monotonic() < deadline, "Flower did not stop"
            time.sleep(0.1)


@pytest.fixture
def flower(redis_server: RedisServer, tmp_path: Path) -> Iterator[Flower]:
    started = Flower(documented_command(), redis_server.url, tmp_path)
    yield started
    started.stop()


def test_the_documented_flower_command_listens_on_loopback_with_a_login_on_our_redis(
    flower: Flower, redis_server: RedisServer
) -> None:
    login = re.search(r"(?:FLOWER_BASIC_AUTH=|--basic[_-]auth=)([^\s:]+):(\S+)", flower.command)
    assert login, f"the README's Flower command sets no login: {flower.command}"
    user, password = login.groups()
    # bound to 127.0.0.1, not to every interface: another loopback address (Linux routes all of 127/8 to this
    # host) is refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", flower.port), timeout=5).close()
    base = f"http://127.0.0.1:{flower.port}"
    assert httpx.get(f"{base}/", timeout=10).status_code == 401
    assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{base}/", auth=(user, "wrong"), timeout=10).status_code == 401
    broker = httpx.get(f"{base}/broker", auth=(user, password), timeout=30)
    assert broker.status_code == 200
    port = redis_server.url.rsplit(":", 1)[1].split("/")[0]
    assert f"127.0.0.1:{port}/" in broker.text, broker.text  # the test's Redis, not redis://127.0.0.1:6379
    assert re.search(rf"Connected to redis://\S*127\.0\.0\.1:{port}/", flower.log()), flower.log()


def test_every_flower_command_shown_binds_loopback_and_passes_celerys_options_before_flower() -> None:
    commands = flower_commands()
    assert len(commands) >= 5, commands  # README (2), docs/operations.md, the demo, deploy/
    for where, line in commands:
        after = re.search(r"celery -A workers\b.*?\bflower\b(.*)", line)
        assert after and "--address=127.0.0.1" in after.group(1), f"{where}: Flower on every interface: {line}"
        assert "--broker" not in after.group(1), f"{where}: --broker after `flower` is ignored: {line}"
