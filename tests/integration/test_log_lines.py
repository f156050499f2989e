"""One logging setup for `b24q serve` and the workers: every line on stderr carries its time, level and logger,
b24q's own lines are there (the install applied, a worker's metrics directory), `B24Q_LOG_FORMAT=json` gives
one JSON object per line, and no secret shows in either."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from workers.localdev.localstack import LocalStack
from workers.localdev.processes import CLIENT_ID, CLIENT_SECRET

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack() as started:
        yield started


class Process:
    """A command with the stack's environment; its stderr (the log) in a file of its own."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            assert self.process.poll() is None, f"exited: {self.text()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in: {self.text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(stack: LocalStack, tmp_path: Path, fmt: str) -> tuple[str, str, list[str]]:
    """`b24q serve` as the emulator app's install handler and one worker, in `fmt`; a portal installs the app
    and a URL with a token is requested. Their stderr, and the secrets that went by."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**stack.env, "B24Q_LOG_FORMAT": fmt, "B24Q_HTTP_PUBLIC_URL": url, "B24Q_METRICS_DIR": str(tmp_path)}
    bin_dir = Path(sys.executable).parent
    serve = Process([str(bin_dir / "b24q"), "serve", "--port", str(port)], env, tmp_path / "serve.log")
    worker = Process(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO", "--concurrency=4"],
        env,
        tmp_path / "worker.log",
    )
    try:
        serve.wait_for("Application startup complete")
        worker.wait_for(r" ready\.")
        stack.emulator.admin("POST", "apps", {"client_id": CLIENT_ID, "install_handler": f"{url}/b24/install"})
        domain = f"logs-{fmt}.bitrix24.test"
        info = stack.emulator.add_portal(domain)
        answer = stack.emulator.admin("POST", f"portals/{domain}/install", {})
        assert answer["handler_status"] == 200, answer
        httpx.get(f"{url}/healthz?access_token=leaked-in-a-url-7d2f", timeout=10)
        serve.wait_for("leaked-in-a-url|healthz")
        secrets = [
            info["access_token"],
            info["refresh_token"],
            answer["access_token"],
            answer["refresh_token"],
            answer["application_token"],
            CLIENT_SECRET,
            "leaked-in-a-url-7d2f",
        ]
    finally:
        serve.stop()
        worker.stop()
    return serve.text(), worker.text(), secrets


def _records(log: str, fmt: str) -> list[dict[str, str]]:
    """Each record of a log as {time, level, logger, message}; fails on a line that is no record."""
    records: list[dict[str, str]] = []
    for line in log.splitlines():
        if fmt == "json":
            record = json.loads(line)  # one object per line, nothing else
            assert {"time", "level", "logger", "message"} <= record.keys(), line
            records.append(record)
        elif TEXT_LINE.match(line):
            time_, level, rest = line[:23], line[24:].split(" ", 1)[0], line[24:].split(" ", 1)[1]
            logger, message = rest.split(": ", 1)
            records.append({"time": time_, "level": level, "logger": logger, "message": message})
        else:  # a continuation of the record above (a traceback, a multi-line warning)
            assert records, f"a line before any record: {line!r}"
            records[-1]["message"] += "\n" + line
    return records


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_serve_and_worker_write_timed_levelled_lines_with_b24qs_own_and_no_secret(
    stack: LocalStack, tmp_path: Path, fmt: str
) -> None:
    serve, worker, secrets = _run(stack, tmp_path, fmt)
    served = _records(serve, fmt)
    worked = _records(worker, fmt)
    for log in (serve, worker):
        for secret in secrets:
            assert secret not in log, f"{secret[:6]}… in the log:\n{log}"
    # b24q's own lines, beside uvicorn's and Celery's
    assert any(r["logger"] == "edges.cli" and "b24q serve: http://" in r["message"] for r in served), serve
    assert any(
        r["logger"] == "edges.lifecycle" and r["level"] == "INFO" and "event ONAPPINSTALL" in r["message"]
        for r in served
    ), serve
    assert any(r["logger"] == "uvicorn.access" and "access_token=***" in r["message"] for r in served), serve
    assert any(r["logger"] == "workers.observe.metrics" and "recording to" in r["message"] for r in worked), worker
    assert any(r["logger"].startswith("celery") and "ready." in r["message"] for r in worked), worker
