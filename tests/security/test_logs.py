"""What the HTTP app writes to its logs when anyone sends it secrets in URLs or goes away mid-body, against
`b24q serve` itself (a subprocess with uvicorn's own logging config, as in production): the access line of a
URL carrying `access_token=`, `AUTH_ID=`, `auth[access_token]=` or an API key is there, masked, with no
traceback; an API key in the query is refused; a client that disconnects mid-body is counted, not logged."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from uvicorn.logging import AccessFormatter

from edges.http import apikeys
from workers.localdev.redisserver import RedisServer
from workers.redaction import MASK, RedactSecrets, redact

T = TypeVar("T")
KEY, ENTRY = apikeys.new()
SECRETS = [f"s3cr3t-{n}-VALUE" for n in range(12)]
B24Q = Path(sys.executable).with_name("b24q")
JOB = {"kind": "status-update", "portal": "acme", "code": "smsgw", "message_id": "m1", "status": "delivered"}


def until(what: Callable[[], T], timeout: float = 30.0, why: str = "") -> T:
    """Wait for `what()` to be truthy; return it."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {why}")
        time.sleep(0.05)
    return value


class Served:
    """`b24q serve` on a loopback port, its stdout (uvicorn's access log) and stderr in files."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout, self.stderr = workdir / "stdout.log", workdir / "stderr.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("B24Q_")}
        env.update(B24Q_REDIS_URL=redis_url, B24Q_API_KEYS=ENTRY, B24Q_HTTP_RATE="0", PYTHONUNBUFFERED="1")
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [str(B24Q), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=workdir,  # no .env but the test's
                env=env,
                stdout=out,
                stderr=err,
            )
        until(self._answers, why=f"b24q serve to answer; stderr: {self.log()}")

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"b24q serve exited: {self.log()}"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        """Everything the process wrote: the access log (stdout) and uvicorn's own log (stderr)."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def settled(self) -> str:
        """The log once every earlier request's access line is written: a request made last, its line seen
        (one process logs in order)."""
        marker = f"/healthz?settled={time.monotonic_ns()}"
        assert httpx.get(self.url + marker).status_code == 200

        def written() -> str:
            text = self.log()
            return text if marker in text else ""

        return until(written, why=f"{marker} in the access log")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@pytest.fixture(scope="module")
def served(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module (each test waits for its own requests' lines)."""
    server = Served(redis_server.url, tmp_path_factory.mktemp("served"))
    yield server
    server.stop()


def access_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r'"[A-Z]+ \S+ HTTP/1\.1" \d{3}', line)]


def test_urls_carrying_secrets_leave_their_access_line_masked_and_no_traceback(served: Served) -> None:
    s = SECRETS
    paths = [
        f"/healthz?access_token={s[0]}",
        f"/b24/install?AUTH_ID={s[1]}&REFRESH_ID={s[2]}&member_id=abc",
        f"/b24/events?auth[access_token]={s[3]}&auth[domain]=acme.bitrix24.com",
        f"/b24/events?auth%5Bapplication_token%5D={s[4]}",
        f"/readyz?client_secret={s[5]}&code={s[6]}",
    ]
    for path in paths:
        httpx.post(served.url + path) if path.startswith("/b24") else httpx.get(served.url + path)
    log = served.settled()
    lines = access_lines(log)
    for path in paths:
        masked = redact(path)
        assert MASK in masked and any(masked in line for line in lines), f"no access line for {masked}:\n{log}"
    assert not any(secret in log for secret in s), log
    assert "Traceback" not in log and "Logging error" not in log, log


def test_an_api_key_in_the_query_is_refused_and_masked_in_the_access_log(served: Served) -> None:
    """Keys are taken from headers only: one in the query (here a valid one) is 401, and its access line
    shows it masked."""
    names = ["api_key", "key", "token", "apikey", "access_key", "api-key", "x-api-key", "API_KEY"]
    for name in names:
        answer = httpx.post(f"{served.url}/v1/jobs?{name}={KEY}", json=JOB)
        assert answer.status_code == 401, (name, answer.text)
    log = served.settled()
    for name in names:
        assert any(f"/v1/jobs?{name}={MASK}" in line for line in access_lines(log)), (name, log)
    assert KEY not in log and "Traceback" not in log, log


def test_clients_gone_mid_body_are_counted_quietly(served: Served) -> None:
    """A client that sends half a body and disconnects, on /v1/jobs and /b24/*: a counter in /metrics, no
    traceback."""
    heads = [
        f"POST /v1/jobs HTTP/1.1\r\nHost: b24q\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n",
        "POST /b24/events HTTP/1.1\r\nHost: b24q\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        "POST /b24/install HTTP/1.1\r\nHost: b24q\r\nContent-Type: application/x-www-form-urlencoded\r\n",
    ]
    for head in heads:
        with socket.create_connection(("127.0.0.1", served.port)) as conn:
            conn.sendall(f"{head}Content-Length: 1000\r\n\r\n[{{".encode())

    def disconnects() -> float:
        text = httpx.get(f"{served.url}/metrics").text
        found = re.search(r"^b24q_http_client_disconnects_total (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    until(lambda: disconnects() == len(heads), why="3 disconnects counted")
    log = served.settled()
    assert "Traceback" not in log and "ClientDisconnect" not in log and "Exception in ASGI" not in log, log


# --- the filter on its own --------------------------------------------------------------------------------------


def access_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it: a 5-tuple its formatter unpacks."""
    args = ("127.0.0.1:50000", "GET", path, "1.1", 200)
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


def test_the_filter_keeps_the_arguments_shape_and_types() -> None:
    record = access_record(f"/b24/events?auth[access_token]={SECRETS[0]}&x=1")
    assert RedactSecrets().filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5 and record.args[4] == 200
    line = AccessFormatter(fmt='%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line == f'127.0.0.1:50000 - "GET /b24/events?auth[access_token]={MASK}&x=1 HTTP/1.1" 200 OK'


@pytest.mark.parametrize(
    ("msg", "args", "shown"),
    [
        ("refresh_token=%s", (SECRETS[0],), f"refresh_token={MASK}"),  # the secret's name in the template
        ("%s=%s", ("access_token", SECRETS[0]), f"{MASK}={MASK}"),  # split across two arguments
        ("%(url)s took %(ms)d ms", {"url": f"/x?token={SECRETS[0]}", "ms": 5}, f"/x?token={MASK} took 5 ms"),
    ],
)
def test_a_secret_anywhere_in_a_record_is_masked_and_the_arguments_keep_their_shape(
    msg: str, args: Any, shown: str
) -> None:
    record = logging.LogRecord("any", logging.INFO, __file__, 1, msg, args, None)
    assert RedactSecrets().filter(record)
    assert record.getMessage() == shown
    assert type(record.args) is type(args) and len(record.args) == len(args)  # type: ignore[arg-type]


def test_a_record_the_filter_cannot_fully_read_is_still_emitted() -> None:
    """A record built by hand with `exc_info=True` (not the triple `logging` makes of it): the filter neither
    raises (which would lose the line and raise at the logging call) nor leaves the handler to fail on it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    record = logging.LogRecord(
        "b24q-security-test", logging.ERROR, __file__, 1, "failed: token=%s", (SECRETS[0],), None
    )
    record.exc_info = True  # type: ignore[assignment]
    logger = logging.getLogger("b24q-security-test")
    logger.addHandler(handler)
    logger.propagate = False  # only this handler: the test's capture would fail on the record
    try:
        logger.handle(record)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert f"failed: token={MASK}" in stream.getvalue() and SECRETS[0] not in stream.getvalue()


def test_ordinary_words_ending_like_a_secret_stay_readable() -> None:
    text = "monkey=3 error_code=QUERY_LIMIT_EXCEEDED barcode=5 oauth=ok keys=2 token_type=bearer"
    assert redact(text) == text
