"""Issue 5 end to end: a known workload through two real worker processes, watched by Flower (its HTTP
API), by the `b24q metrics` endpoint (exact counts, cross-checked with the emulator's own counters),
and by `b24q status` / `b24q job show`.

One stack and one workload for the module: Flower must be listening before the jobs run (events are
not stored), and the counters must start from zero for the counts to be exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasks import producer
from tests.integration.conftest import make_stack, wait_for
from workers.localdev.localstack import LocalStack
from workers.localdev.redisserver import free_port
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration

A, P, R, B = (f"obs-{x}.bitrix24.test" for x in "aprb")
DELIVERED = {
    "im": {"chat_id": 1807, "message_id": 86497},
    "message": {"id": ["ext-1"], "date": 1738065600},
    "chat": {"id": "channel-123"},
}
CLI = [sys.executable, "-m", "edges.cli"]


@dataclass
class Observed:
    stack: LocalStack
    flower: httpx.Client
    metrics_url: str
    metrics_dir: Path
    applied: dict[str, list[str]] = field(default_factory=dict)
    dead: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    retried: str = ""
    failures: int = 0
    warmups: list[str] = field(default_factory=list)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _until_up(client: httpx.Client, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not up in 30 s; see {log}")


def flower_tasks(
    flower: httpx.Client, ids: list[str], ok: Callable[[dict[str, Any]], bool] = lambda t: True, timeout: float = 30
) -> dict[str, dict[str, Any]]:
    """Flower's view of `ids`, once it has them all and `ok` holds for each (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = flower.get("/api/tasks").json()
        seen = {i: tasks[i] for i in ids if i in tasks}
        if (len(seen) == len(ids) and all(ok(t) for t in seen.values())) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, []) if all(lbl.get(k) == x for k, x in labels.items()))


def setup_portal(stack: LocalStack, domain: str, messages: list[str]) -> None:
    stack.add_portal(domain)
    stack.emulator.admin("POST", f"portals/{domain}/senders", {"code": "smsgw", "name": "SMS"})
    stack.emulator.admin("POST", f"portals/{domain}/messages", {"code": "smsgw", "message_ids": messages})
    stack.emulator.admin("POST", f"portals/{domain}/connectors", {"connector": "myconnector", "line": 107})


def unread(domain: str, message_id: int) -> str:
    return producer.enqueue_mark_unread(portal=domain, dialog_id=f"chat{message_id}", message_id=message_id)


def run_workload(o: Observed) -> None:
    stack, rt = o.stack, get_runtime()
    setup_portal(stack, A, [f"m{i}" for i in range(20)])
    # Flower sees only events sent while it listens: warm up until it has seen a job
    while True:
        job = unread(A, len(o.warmups) + 1)
        o.warmups.append(job)
        assert wait_for([job]) == {job: "applied"}
        if flower_tasks(o.flower, [job], timeout=3):
            break

    # A: every kind applied, after one token refresh for the pool; three dead letters
    stack.emulator.expire(A)
    o.applied["status-update"] = producer.enqueue_many(
        [
            ("status-update", {"portal": A, "code": "smsgw", "message_id": f"m{i}", "status": "delivered"})
            for i in range(20)
        ]
    )
    o.applied["delivery-confirmation"] = [
        producer.enqueue_delivery_confirmation(portal=A, connector="myconnector", line=107, messages=[DELIVERED])
    ]
    o.applied["sender-update"] = [
        producer.enqueue_sender_update(portal=A, code="smsgw", handler="https://sms.example.com/h?key=SECRETKEY")
    ]
    o.dead = [
        producer.enqueue_status_update(portal=A, code="smsgw", message_id=f"unknown-{i}", status="sent")
        for i in range(3)
    ]
    # P: credentials lost (the stored refresh token is stale): one refused refresh, four parked jobs
    info = stack.emulator.add_portal(P)
    rt.registry.add_oauth(P, info["client_endpoint"], info["access_token"], "stale-refresh-token", info["expires"])
    stack.emulator.expire(P)
    o.parked = [unread(P, i + 1) for i in range(4)]
    # R: a 500 until the job has failed once, then a retry applies it
    stack.add_portal(R)
    stack.emulator.set_faults(R, error_500_rate=1.0)
    o.retried = unread(R, 1)
    deadline = time.monotonic() + 20
    while int((producer.job_state(o.retried) or {}).get("failures") or 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    stack.emulator.set_faults(R, error_500_rate=0.0)
    # B: the portal's real bucket is smaller than the plan b24q knows (burst 2): some 503s
    info = stack.emulator.add_portal(B, rate=2.0, burst=2)
    rt.registry.add_oauth(B, info["client_endpoint"], info["access_token"], info["refresh_token"], info["expires"])
    o.applied["mark-unread"] = [*o.warmups, o.retried]
    for i in range(6):
        o.applied["mark-unread"].append(unread(B, i + 1))
        time.sleep(0.05)

    everything = [i for ids in o.applied.values() for i in ids]
    assert set(wait_for(everything, timeout=60).values()) == {"applied"}
    assert set(wait_for(o.dead).values()) == {"dead"}
    assert set(wait_for(o.parked).values()) == {"parked"}
    o.failures = int(producer.job_state(o.retried)["failures"])  # type: ignore[index]
    assert o.failures >= 1


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    metrics_dir = tmp_path_factory.mktemp("metrics")
    # task events on from the start (B24Q_TASK_EVENTS): this test checks that Flower sees *every* job; by
    # default workers send events only once Flower has turned them on (within 5 s of its start)
    stack = make_stack(workers=2, concurrency=16, metrics_dir=str(metrics_dir), task_events=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        flower_port, metrics_port = free_port(), free_port()
        env = {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
        flower_log = stack.dir / "flower.log"
        processes.append(
            _spawn(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers",
                    f"--broker={stack.settings.redis_url}",  # Celery's option: before `flower`, or it is ignored
                    "flower",
                    f"--port={flower_port}",
                    "--address=127.0.0.1",
                ],
                env,
                flower_log,
            )
        )
        flower = httpx.Client(base_url=f"http://127.0.0.1:{flower_port}", timeout=10)
        _until_up(flower, "/healthcheck", processes[-1], flower_log)
        metrics_log = stack.dir / "metrics.log"
        processes.append(
            _spawn([*CLI, "metrics", "--port", str(metrics_port), "--address", "127.0.0.1"], stack.env, metrics_log)
        )
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        _until_up(httpx.Client(), metrics_url, processes[-1], metrics_log)
        o = Observed(stack, flower, metrics_url, metrics_dir)
        run_workload(o)
        yield o
        flower.close()
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        stack.__exit__(None, None, None)


def test_flower_shows_every_job_with_its_name_state_and_masked_arguments(observed: Observed) -> None:
    o = observed
    applied = [i for ids in o.applied.values() for i in ids]
    ids = applied + o.dead + o.parked
    tasks = flower_tasks(o.flower, ids, ok=lambda t: t["state"] in ("SUCCESS", "FAILURE"))
    assert set(tasks) == set(ids), f"Flower has not seen {set(ids) - set(tasks)}"
    names = {kind: f"b24q.{kind.replace('-', '_')}" for kind in o.applied}
    for kind, ids in o.applied.items():
        for job in ids:
            assert tasks[job]["name"] == names[kind] and tasks[job]["state"] == "SUCCESS", tasks.get(job)
    for job in o.dead:
        assert tasks[job]["state"] == "FAILURE" and "ERROR_MESSAGE_NOT_FOUND" in tasks[job]["exception"], tasks[job]
    for job in o.parked:  # parked is an outcome, not a failure: the job is kept and acknowledged
        assert tasks[job]["state"] == "SUCCESS" and "parked" in tasks[job]["result"], tasks[job]

    flower_tasks(o.flower, [o.retried], ok=lambda t: t["state"] == "SUCCESS")
    retried = o.flower.get(f"/api/task/info/{o.retried}").json()
    assert retried["state"] == "SUCCESS" and retried["retried"] is not None and retried["retries"] >= 1, retried
    assert retried["uuid"] == o.retried  # retries are the same task id

    confirmation = o.flower.get(f"/api/task/info/{o.applied['delivery-confirmation'][0]}").json()
    assert confirmation["args"] == "()"
    assert "'messages': '<1 message>'" in confirmation["kwargs"] and "86497" not in confirmation["kwargs"]
    sender = o.flower.get(f"/api/task/info/{o.applied['sender-update'][0]}").json()
    assert "https://sms.example.com/…" in sender["kwargs"] and "SECRETKEY" not in sender["kwargs"]
    status = tasks[o.applied["status-update"][0]]
    assert f"'portal': '{A}'" in status["kwargs"] and "'status': 'delivered'" in status["kwargs"]
    # no secret anywhere in what Flower holds (arguments, results, exceptions, tracebacks)
    everything = json.dumps(o.flower.get("/api/tasks").json())
    secrets = ["SECRETKEY"]
    for key in (A, P, R, B):
        portal = get_runtime().registry.get(key)
        assert portal is not None
        secrets += [portal.access_token, portal.refresh_token]
    assert not [x for x in secrets if x and x in everything]


def test_the_metrics_endpoint_counts_the_workload_exactly(observed: Observed) -> None:
    o = observed
    m = scrape(o.metrics_url)
    jobs = "b24q_jobs_total"
    assert total(m, jobs, kind="status-update", outcome="applied") == 20
    assert total(m, jobs, kind="status-update", outcome="dead") == 3
    assert total(m, jobs, kind="delivery-confirmation", outcome="applied") == 1
    assert total(m, jobs, kind="sender-update", outcome="applied") == 1
    assert total(m, jobs, kind="mark-unread", outcome="applied") == len(o.applied["mark-unread"])
    assert total(m, jobs, kind="mark-unread", outcome="parked") == 4
    assert total(m, jobs) == sum(map(len, o.applied.values())) + 3 + 4
    assert total(m, "b24q_job_latency_seconds_count", kind="status-update") == 20
    assert total(m, "b24q_job_latency_seconds_count") == sum(map(len, o.applied.values()))
    assert total(m, "b24q_dead_lettered_total", kind="status-update", reason="ERROR_MESSAGE_NOT_FOUND") == 3
    assert total(m, "b24q_dead_letters", reason="ERROR_MESSAGE_NOT_FOUND") == 3
    assert total(m, "b24q_job_retries_total", kind="mark-unread", reason="transient") == o.failures
    assert total(m, "b24q_job_retries_total", reason="transient", code="INTERNAL_SERVER_ERROR") == o.failures
    # tokens: one refresh for the pool on A, one refused on P (then parked, never a stampede)
    assert total(m, "b24q_token_refreshes_total", portal=A, outcome="refreshed") == 1
    assert total(m, "b24q_token_refreshes_total", portal=P, outcome="refused") == 1
    assert total(m, "b24q_token_refreshes_total") == 2
    assert total(m, "b24q_parked_total", portal=P) == 4
    assert total(m, "b24q_portal_parked_jobs", portal=P) == 4
    assert total(m, "b24q_portal_reauth", portal=P) == 1 and total(m, "b24q_portals", state="reauth") == 1
    # every HTTP request b24q made is one the portals saw, with the same outcome
    portals = {d: o.stack.emulator.state(d)["counters"] for d in (A, P, R, B)}
    assert total(m, "b24q_rest_requests_total") == sum(c["requests"] for c in portals.values())
    assert total(m, "b24q_rest_requests_total", code="QUERY_LIMIT_EXCEEDED") == portals[B]["refused_503"] > 0
    assert total(m, "b24q_query_limit_exceeded_total", portal=B) == portals[B]["refused_503"]
    assert total(m, "b24q_rest_requests_total", code="expired_token") == sum(
        c["by_error_code"].get("expired_token", 0) for c in portals.values()
    )
    assert total(m, "b24q_rest_requests_total", code="INTERNAL_SERVER_ERROR") == portals[R]["faults"]["error_500"]
    assert total(m, "b24q_rest_request_duration_seconds_count") == total(m, "b24q_rest_requests_total")
    assert total(m, "b24q_limiter_waits_total", portal=B) >= 1
    # the queue is drained; the portals' backlogs are empty except the parked jobs'
    assert total(m, "b24q_queue_depth") == 0 and total(m, "b24q_queue_unacked") == 0
    assert {lbl["priority"] for lbl, _ in m["b24q_queue_depth"]} == {"0", "3", "6", "9"}
    assert total(m, "b24q_portal_backlog_jobs", portal=A) == 0
    assert total(m, "b24q_redis_up") == 1
    # both worker processes wrote their own files; the endpoint summed them
    assert len(list(o.metrics_dir.glob("counter_*.db"))) >= 2


def test_status_shows_the_pool_on_one_screen_and_as_json(observed: Observed) -> None:
    env = observed.stack.env
    started = time.monotonic()
    text = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "workers: 2 answered" in out and "w1@" in out and "w2@" in out
    assert "dead letters: 3 (ERROR_MESSAGE_NOT_FOUND 3)" in out
    line_p = next(line for line in out.splitlines() if line.startswith(P))
    assert "reauth" in line_p and "invalid_grant" in line_p
    assert "access_token" not in out and "B24Q" not in out
    assert elapsed < 10, elapsed

    raw = subprocess.run([*CLI, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert raw.returncode == 0, raw.stderr
    data = json.loads(raw.stdout)
    assert sorted(w["name"].split("@")[0] for w in data["workers"]["answered"]) == ["w1", "w2"]
    assert all(w["concurrency"] == 16 for w in data["workers"]["answered"])
    assert data["queues"][0]["depth"] == 0
    portals = {p["key"]: p for p in data["portals"]}
    assert portals[P]["state"] == "reauth" and portals[P]["parked"] == 4 and portals[P]["backlog"] == 0
    assert portals[A]["token_refreshed"] == 1 and portals[A]["token_expires"] > time.time()
    assert portals[A]["backlog"] == 0
    assert data["dead_letters"] == {"total": 3, "by_reason": {"ERROR_MESSAGE_NOT_FOUND": 3}}
    only = json.loads(
        subprocess.run(
            [*CLI, "status", "--json", "--portal", B, "--timeout", "0.2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )
    assert [p["key"] for p in only["portals"]] == [B]


def test_job_show_tells_the_whole_story(observed: Observed) -> None:
    o, env = observed, observed.stack.env
    retried = subprocess.run([*CLI, "job", "show", o.retried], env=env, capture_output=True, text=True).stdout
    lines = retried.splitlines()
    assert any("retrying" in line and "INTERNAL_SERVER_ERROR" in line for line in lines), retried
    assert lines[-1].split()[3] == "applied", retried
    dead = subprocess.run([*CLI, "job", "show", o.dead[0]], env=env, capture_output=True, text=True).stdout
    assert "dead letter: ERROR_MESSAGE_NOT_FOUND" in dead and '"message_id": "unknown-0"' in dead
    parked = subprocess.run([*CLI, "job", "show", o.parked[0]], env=env, capture_output=True, text=True).stdout
    assert "parked: until portal" in parked and f'"portal": "{P}"' in parked
    as_json = json.loads(
        subprocess.run([*CLI, "job", "show", o.dead[0], "--json"], env=env, capture_output=True, text=True).stdout
    )
    assert as_json["dead_letter"]["code"] == "ERROR_MESSAGE_NOT_FOUND" and as_json["state"] == "dead"
    assert [e["state"] for e in as_json["events"]] == ["queued", "running", "dead"]


def test_dead_replay_shows_progress(observed: Observed) -> None:
    """Last: it changes the dead letters the other tests count."""
    replay = subprocess.run(
        [*CLI, "dead", "replay", "--code", "ERROR_MESSAGE_NOT_FOUND"],
        env=observed.stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "replayed: 3/3" in replay.stderr and "replayed 3" in replay.stdout
    assert set(wait_for(observed.dead).values()) == {"dead"}  # the messages are still unknown
    # each went back to the queue once, said why, and ran again (its history shows the second run)
    for job_id in observed.dead:
        record = get_runtime().ledger.get(job_id)
        assert record is not None
        states = [e["state"] for e in record["events"]]
        marks = [i for i, e in enumerate(record["events"]) if "replayed from dead letter" in str(e.get("why", ""))]
        assert len(marks) == 1 and states[marks[0]] == "queued", record["events"]
        assert "running" in states[marks[0] :] and states[-1] == "dead", record["events"]
