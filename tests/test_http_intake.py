"""The HTTP intake (`edges/http/intake.py`) against a real uvicorn server on a loopback port, with a real
client: jobs posted are recorded and in the broker queue once; refusals (validation, scope, size, rate) leave
the queue and the ledger as they were; idempotent retries; reading jobs; replaying dead letters; the README's
curl command run as written. Requests generated from the OpenAPI document: tests/security/test_contract.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from edges import cli
from edges.http import apikeys, intake
from edges.http.app import create_app
from edges.http.server import NoDelayH11Protocol
from workers import keys
from workers.celery import configure
from workers.runtime import Runtime
from workers.settings import Settings, get_settings

ACME, GLOBEX = "acme", "globex.bitrix24.test"
KEY, ENTRY = apikeys.new()
SCOPED, SCOPED_ENTRY = apikeys.new([ACME])
README = (Path(__file__).parent.parent / "README.md").read_text()


class Server:
    """uvicorn serving `app` in a thread, on a socket bound before it starts (so requests made at once wait in
    the socket's backlog instead of failing); `stop` ends it."""

    def __init__(self, app: Any) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            h11_max_incomplete_event_size=intake.HEAD_LIMIT,
            http=NoDelayH11Protocol,  # as `b24q serve`: else each answer waits ~40 ms for the client's delayed ACK
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="uvicorn")
        self.thread.start()
        self.host, self.port = self.socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": f"{ENTRY}, {SCOPED_ENTRY}", "http_rate": 0.0})


@pytest.fixture
def rt(runtime: Runtime, settings: Settings) -> Iterator[Runtime]:
    """The test Runtime, the Celery producer pointed at its Redis, and two portals (one known by its domain)."""
    configure(settings)
    runtime.registry.add_oauth(ACME, "http://127.0.0.1:9/acme/rest/", "acc-token-1", "ref-token-1", 4102444800.0)
    runtime.registry.add_oauth("m-globex", "http://127.0.0.1:9/g/rest/", "acc-token-2", "ref-token-2", 4102444800.0)
    runtime.registry.set_aliases("m-globex", GLOBEX)
    yield runtime
    configure(get_settings())


@pytest.fixture
def serve() -> Iterator[Callable[[Runtime], Server]]:
    """Start a server for a Runtime; every server started is stopped at the end."""
    servers: list[Server] = []

    def start(runtime: Runtime) -> Server:
        servers.append(Server(create_app(lambda: runtime)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(serve: Callable[[Runtime], Server], rt: Runtime) -> Server:
    return serve(rt)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def queued(rt: Runtime) -> Counter[str]:
    """Job ids of the messages in the broker queue (every priority step), with how often each is there."""
    found: Counter[str] = Counter()
    for step in keys.PRIORITY_STEPS:
        for raw in rt.redis.lrange(keys.queue(rt.settings.queue, step), 0, -1):
            found[json.loads(raw)["headers"]["id"]] += 1
    return found


def untouched(rt: Runtime) -> bool:
    return not queued(rt) and rt.ledger.count() == 0


def status(portal: str = ACME, message: str = "m1", state: str = "delivered") -> dict[str, Any]:
    return {"kind": "status-update", "portal": portal, "code": "smsgw", "message_id": message, "status": state}


def unread(portal: str = ACME, message_id: Any = 12) -> dict[str, Any]:
    return {"kind": "mark-unread", "portal": portal, "dialog_id": "chat29", "message_id": message_id}


def is_problem(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == code and body["type"] == "about:blank" and body["detail"]
    return body


# --- posting --------------------------------------------------------------------------------------------


def test_jobs_posted_are_recorded_and_queued_once(client: httpx.Client, rt: Runtime) -> None:
    one = client.post("/v1/jobs", json=status())
    assert one.status_code == 202
    many = client.post("/v1/jobs", json=[status(message="m2"), unread(), status(GLOBEX, "m3")])
    assert many.status_code == 202
    ids = one.json()["ids"] + many.json()["ids"]
    assert len(ids) == len(set(ids)) == 4
    assert queued(rt) == Counter({job_id: 1 for job_id in ids})
    assert {job_id: state for job_id, [state] in rt.ledger.states(ids).items()} == dict.fromkeys(ids, "queued")
    record = rt.ledger.get(ids[-1])
    assert record is not None and record["portal"] == "m-globex"  # named by its domain, recorded by its key


def test_one_bad_job_refuses_the_array_naming_each_bad_field(client: httpx.Client, rt: Runtime) -> None:
    jobs = [status(), status(state="read"), unread(message_id=0), status("nowhere.bitrix24.test"), unread()]
    body = is_problem(client.post("/v1/jobs", json=jobs), 422)
    assert body["detail"] == "3 of 5 jobs refused; nothing was enqueued"
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "status"), (2, "message_id"), (3, "portal")]
    assert "unknown portal" in body["errors"][2]["message"]
    assert untouched(rt)


def test_not_jobs_are_refused_before_validation(client: httpx.Client, rt: Runtime) -> None:
    headers = {"Content-Type": "application/json"}
    assert is_problem(client.post("/v1/jobs", content=b'{"kind": ', headers=headers), 400)
    assert is_problem(client.post("/v1/jobs", content=b"[" * 100_000, headers=headers), 400)  # too deep to parse
    assert is_problem(
        client.post("/v1/jobs", content=b"kind=status-update", headers={"Content-Type": "text/plain"}), 415
    )
    assert is_problem(client.post("/v1/jobs", json=[]), 422)["errors"][0]["field"] == "(body)"
    assert "1001" in is_problem(client.post("/v1/jobs", json=[unread()] * 1001), 422)["detail"]
    assert is_problem(client.post("/v1/jobs", json="status-update"), 422)
    body = is_problem(client.post("/v1/jobs", json=[unread(), 7, {"portal": ACME}]), 422)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "(job)"), (2, "kind")]
    body = is_problem(client.post("/v1/jobs", json={**unread(), "kind": "no-such-kind"}), 422)
    assert body["errors"] == [{"field": "kind", "message": body["errors"][0]["message"]}]  # one job: no index
    assert untouched(rt)


def test_an_uninstalled_portal_is_409(client: httpx.Client, rt: Runtime) -> None:
    rt.registry.mark_uninstalled(ACME)
    body = is_problem(client.post("/v1/jobs", json=[unread(), status()]), 409)
    assert {(e["index"], e["field"]) for e in body["errors"]} == {(0, "portal"), (1, "portal")}
    assert untouched(rt)


# --- idempotency ----------------------------------------------------------------------------------------


def test_a_retried_post_gets_the_same_ids(client: httpx.Client, rt: Runtime) -> None:
    jobs = [status(), unread()]
    first = client.post("/v1/jobs", json=jobs, headers={"Idempotency-Key": "batch-1"})
    again = client.post("/v1/jobs", json=jobs, headers={"Idempotency-Key": "batch-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert queued(rt) == Counter(dict.fromkeys(first.json()["ids"], 1))
    # the same key with another body is a mistake, not a retry
    assert is_problem(client.post("/v1/jobs", json=[status()], headers={"Idempotency-Key": "batch-1"}), 422)
    # another API key has keys of its own
    other = client.post(
        "/v1/jobs", json=jobs, headers={"Idempotency-Key": "batch-1", "Authorization": f"Bearer {SCOPED}"}
    )
    assert other.status_code == 202 and set(other.json()["ids"]).isdisjoint(first.json()["ids"])
    # a refused request frees its key for the corrected retry
    assert is_problem(client.post("/v1/jobs", json=[status(state="read")], headers={"Idempotency-Key": "batch-2"}), 422)
    fixed = client.post("/v1/jobs", json=[status()], headers={"Idempotency-Key": "batch-2"})
    assert fixed.status_code == 202 and "idempotent-replayed" not in fixed.headers
    assert sum(queued(rt).values()) == 5


def test_concurrent_posts_with_one_key_enqueue_once(client: httpx.Client, rt: Runtime) -> None:
    jobs = [status(message=f"m{i}") for i in range(200)]
    start = threading.Barrier(4)

    def post(_: int) -> httpx.Response:
        start.wait()
        return client.post("/v1/jobs", json=jobs, headers={"Idempotency-Key": "together"})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(4)))
    accepted = [a.json()["ids"] for a in answers if a.status_code == 202]
    assert {a.status_code for a in answers} <= {202, 409} and accepted
    assert all(ids == accepted[0] for ids in accepted)
    assert queued(rt) == Counter(dict.fromkeys(accepted[0], 1))


def test_a_key_still_held_by_a_running_request_is_409(
    client: httpx.Client, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "PENDING_WAIT", 0.2)
    key = apikeys.identify(apikeys.parse(rt.settings.api_keys), KEY)
    assert key is not None and rt.idempotency.claim(key.id, "held", "another-request") is None
    answer = client.post("/v1/jobs", json=[status()], headers={"Idempotency-Key": "held"})
    assert is_problem(answer, 409) and answer.headers["retry-after"] == "1"
    assert untouched(rt)


# --- keys and scopes ------------------------------------------------------------------------------------


def test_a_key_is_required_and_checked(server: Server, rt: Runtime) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": KEY[:-1]}, {"Authorization": KEY}):
            answer = anonymous.post("/v1/jobs", json=status(), headers=headers)
            assert is_problem(answer, 401) and answer.headers["www-authenticate"] == "Bearer"
            assert is_problem(anonymous.get("/v1/jobs/x", headers=headers), 401)
        assert anonymous.post("/v1/jobs", json=status(), headers={"X-API-Key": KEY}).status_code == 202
        assert anonymous.post("/v1/jobs", json=status(), headers={"Authorization": f"Bearer {KEY}"}).status_code == 202


def test_a_scoped_key_touches_only_its_portals(server: Server, rt: Runtime) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": SCOPED}, timeout=30) as scoped:
        body = is_problem(scoped.post("/v1/jobs", json=[status(), status(GLOBEX), status("nowhere")]), 403)
        assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "portal"), (2, "portal")]
        assert untouched(rt)
        [own] = scoped.post("/v1/jobs", json=status()).json()["ids"]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=30) as full:
        [other] = full.post("/v1/jobs", json=status(GLOBEX)).json()["ids"]
        assert full.get(f"/v1/jobs/{own}").status_code == 200
    with httpx.Client(base_url=server.url, headers={"X-API-Key": SCOPED}, timeout=30) as scoped:
        assert scoped.get(f"/v1/jobs/{own}").status_code == 200
        assert is_problem(scoped.get(f"/v1/jobs/{other}"), 404)
        assert scoped.get("/v1/jobs", params={"ids": f"{own},{other}"}).json()["unknown"] == [other]


def test_without_keys_configured_v1_is_closed_and_the_rest_open(
    serve: Callable[[Runtime], Server], rt: Runtime, settings: Settings
) -> None:
    closed = serve(Runtime(settings.model_copy(update={"api_keys": ""}), rt.redis))
    with httpx.Client(base_url=closed.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        assert "B24Q_API_KEYS" in is_problem(c.post("/v1/jobs", json=status()), 401)["detail"]
        assert is_problem(c.get("/v1/jobs/x"), 401)
        assert is_problem(c.get("/v1/jobs", params={"ids": "x"}), 401)
        assert is_problem(c.post("/v1/dead/x/replay"), 401)
        assert c.get("/healthz").status_code == c.get("/readyz").status_code == c.get("/metrics").status_code == 200
    assert untouched(rt)


def test_b24q_apikey_new_prints_a_key_and_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["apikey", "new", "--portals", "acme, m-globex"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"b24q_\S+", out)
    entry = re.search(r"\b[0-9a-f]{64}\S*", out)
    assert key is not None and entry is not None
    assert entry.group(0).endswith(":acme|m-globex") and key.group(0) not in entry.group(0)
    found = apikeys.identify(apikeys.parse(entry.group(0)), key.group(0))
    assert found is not None and found.portals == {"acme", "m-globex"}
    assert Settings(api_keys=entry.group(0)).api_keys  # the setting takes it as printed
    assert cli.main(["apikey", "new", "--portals", "acme/../x"]) == 2


# --- limits ---------------------------------------------------------------------------------------------


def head(server: Server, extra: str) -> bytes:
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {server.host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def answer_status(sock: socket.socket) -> int:
    """The status of the answer on `sock` (a timeout here would mean the server waits for the body)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_declared_10_mb_body_is_refused_before_it_is_sent(server: Server, rt: Runtime) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head(server, f"Content-Length: {10 * 1024 * 1024}\r\n"))  # and not one byte of it
        assert answer_status(sock) == 413
    assert untouched(rt)


def test_a_chunked_body_is_cut_off_where_it_passes_the_limit(server: Server, rt: Runtime) -> None:
    piece = 64 * 1024
    data = b"[" + b" " * (piece - 1)  # valid JSON so far, and it would go on for 10 MB
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head(server, "Transfer-Encoding: chunked\r\n"))
        for _ in range(rt.settings.http_max_body // piece + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            data = b" " * piece
        assert answer_status(sock) == 413  # answered with the body unfinished: no last chunk was sent
    assert untouched(rt)


def test_a_key_over_its_rate_gets_429_with_retry_after(
    serve: Callable[[Runtime], Server], rt: Runtime, settings: Settings
) -> None:
    slow = serve(Runtime(settings.model_copy(update={"http_rate": 0.01, "http_burst": 2}), rt.redis))
    with httpx.Client(base_url=slow.url, headers={"X-API-Key": KEY}, timeout=30) as c:
        assert [c.get("/v1/jobs/x").status_code for _ in range(2)] == [404, 404]
        answer = c.post("/v1/jobs", json=status())
        assert is_problem(answer, 429) and int(answer.headers["retry-after"]) >= 1
        # another key has its own bucket
        assert c.post("/v1/jobs", json=status(), headers={"X-API-Key": SCOPED}).status_code == 202
    assert sum(queued(rt).values()) == 1


# --- reading and replaying ------------------------------------------------------------------------------


def test_jobs_are_read_one_or_many_without_secrets(client: httpx.Client, rt: Runtime) -> None:
    ids = client.post("/v1/jobs", json=[unread(message_id=i) for i in range(1, 1001)]).json()["ids"]
    assert len(ids) == 1000
    rt.ledger.note(ids[0], "retrying", error="HTTP_503: https://acme.bitrix24.com/rest/?auth=s3cr3t-token")
    job = client.get(f"/v1/jobs/{ids[0]}").json()
    assert set(job) == {
        "id",
        "kind",
        "portal",
        "state",
        "attempts",
        "failures",
        "last_error",
        "created",
        "updated",
        "history",
    }
    assert (job["id"], job["kind"], job["portal"], job["state"], job["attempts"]) == (
        ids[0],
        "mark-unread",
        ACME,
        "retrying",
        0,
    )
    assert [e["state"] for e in job["history"]] == ["queued", "retrying"]
    assert "s3cr3t-token" not in json.dumps(job) and "auth=***" in job["last_error"]
    many = client.get("/v1/jobs", params={"ids": ",".join([*ids[1:], "no-such-job"])})  # 1,000 ids: a 37 KB URL
    assert many.status_code == 200
    assert [j["id"] for j in many.json()["jobs"]] == ids[1:] and many.json()["unknown"] == ["no-such-job"]
    assert is_problem(client.get("/v1/jobs", params={"ids": ",".join([*ids, "one-more"])}), 422)
    assert is_problem(client.get("/v1/jobs", params={"ids": " , "}), 422)
    assert is_problem(client.get("/v1/jobs/no-such-job"), 404)


def test_a_dead_letter_is_replayed_under_its_id(client: httpx.Client, rt: Runtime) -> None:
    good = {"portal": ACME, "dialog_id": "chat29", "message_id": 12}
    rt.dead.add("dead-1", "b24q.mark_unread", "mark-unread", ACME, good, "ACCESS_DENIED", "denied", 1)
    rt.dead.add("dead-2", "b24q.mark_unread", "mark-unread", ACME, {**good, "message_id": 0}, "INVALID_PAYLOAD", "", 1)
    answer = client.post("/v1/dead/dead-1/replay")
    assert answer.status_code == 202 and answer.json() == {"ids": ["dead-1"]}
    assert rt.dead.get("dead-1") is None and queued(rt) == Counter({"dead-1": 1})
    assert rt.ledger.states(["dead-1"]) == {"dead-1": ["queued"]}
    assert is_problem(client.post("/v1/dead/dead-1/replay"), 404)  # replayed already
    body = is_problem(client.post("/v1/dead/dead-2/replay"), 422)
    assert body["errors"][0]["field"] == "message_id" and rt.dead.get("dead-2") is not None
    assert queued(rt) == Counter({"dead-1": 1})


# --- the README, run as written -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_readme_curl_example_works_as_written(server: Server, rt: Runtime) -> None:
    section = README.split("## Producing over HTTP")[1]
    [command] = [block for block in section.split("```sh")[1:] if block.lstrip().startswith("curl")]
    command = command.split("```")[0].replace("http://127.0.0.1:8024", server.url)
    done = subprocess.run(
        ["bash", "-c", command], env={**os.environ, "B24Q_API_KEY": KEY}, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout)["ids"]
    assert len(ids) == 2 and queued(rt) == Counter(dict.fromkeys(ids, 1))
