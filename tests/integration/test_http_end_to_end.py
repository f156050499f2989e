"""The HTTP intake end to end: producers post jobs to the HTTP app (uvicorn, a child process of the stack) and
real Celery workers apply them at emulator portals that the same app installed, as Bitrix24 installs them.
What is checked is the portal's state (the emulator's), not only b24q's ledger: jobs posted singly and in an
array, by member_id and by domain, are applied once; an idempotent retry adds nothing; refused keys leave the
queue as it was; a dead letter is replayed over HTTP once its cause is fixed; the README's Node client works
as written."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edges.http import apikeys
from workers import keys
from workers.localdev.localstack import LocalStack
from workers.portals.record import Portal
from workers.runtime import get_runtime

from .conftest import make_stack, wait_for

pytestmark = pytest.mark.integration

#: The README's examples use provider code `smsgw` and portal `acme`; the stack registers that provider at
#: every install, so the README's Node snippet runs unchanged.
PROVIDER = {"code": "smsgw", "name": "b24q SMS", "handler": "https://sms.example.com/b24"}
README = (Path(__file__).parents[2] / "README.md").read_text()
README_URL = "http://127.0.0.1:8024"
#: A portal only the scoped key may touch (named by domain in its entry: an entry may name a portal before
#: it is installed; the intake resolves the name at each request).
OTHER = "scoped-other.bitrix24.test"
# made as `b24q apikey new [--portals …]` makes them: the key for the producer, the hash for B24Q_API_KEYS
KEY, ENTRY = apikeys.new()
SCOPED, SCOPED_ENTRY = apikeys.new([OTHER])


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # the stack's settings reach the HTTP app's process as B24Q_* variables: B24Q_API_KEYS among them
    s = make_stack(workers=2, providers=json.dumps([PROVIDER]), api_keys=f"{ENTRY},{SCOPED_ENTRY}")
    try:
        s.start_http()
        yield s
    finally:
        s.__exit__(None, None, None)


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    assert stack.http is not None
    with httpx.Client(base_url=stack.http.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        yield client


def installed(stack: LocalStack, domain: str) -> Portal:
    """Install the app on a new emulator portal through the HTTP app; the portal as b24q registered it."""
    answer = stack.install_portal(domain, auto_messages=True)
    assert answer["handler_status"] == 200, answer
    portal = get_runtime().registry.get(answer["key"])
    assert portal is not None and portal.domain == domain
    return portal


def status(portal: str, message: str) -> dict[str, Any]:
    job = {"portal": portal, "code": PROVIDER["code"], "message_id": message, "status": "delivered"}
    return {"kind": "status-update", **job}


def accepted(response: httpx.Response, n: int) -> list[str]:
    assert response.status_code == 202, response.text
    ids: list[str] = response.json()["ids"]
    assert len(ids) == len(set(ids)) == n
    return ids


def applied(ids: list[str], timeout: float = 60) -> None:
    states = wait_for(ids, timeout)
    assert set(states.values()) == {"applied"}, {i: s for i, s in states.items() if s != "applied"}


def messages(stack: LocalStack, domain: str) -> dict[str, list[str]]:
    """The statuses the portal recorded, per SMS message id (in the order they arrived)."""
    return {m["message_id"]: list(m["statuses"]) for m in stack.emulator.state(domain)["statuses"]}


def snapshot(stack: LocalStack, domain: str) -> tuple[int, int, dict[str, list[str]]]:
    """What a refused request must not change: the ledger's records, the broker queue, the portal."""
    rt = get_runtime()
    queued = sum(int(rt.redis.llen(keys.queue(rt.settings.queue, step))) for step in keys.PRIORITY_STEPS)
    return rt.ledger.count(), queued, messages(stack, domain)


def test_jobs_posted_over_http_are_applied_at_the_portal(stack: LocalStack, api: httpx.Client, domain: str) -> None:
    portal = installed(stack, domain)
    [one] = accepted(api.post("/v1/jobs", json=status(portal.key, "m0")), 1)  # by member_id
    many = accepted(api.post("/v1/jobs", json=[status(domain, f"m{i}") for i in range(1, 201)]), 200)  # by domain
    applied([one, *many])
    assert messages(stack, domain) == {f"m{i}": ["delivered"] for i in range(201)}  # each job once, none lost
    rt = get_runtime()
    assert {r["portal"] for r in rt.ledger.get_many([one, *many]).values() if r} == {portal.key}

    job = api.get(f"/v1/jobs/{one}")
    assert job.status_code == 200, job.text
    body = job.json()
    assert (body["id"], body["kind"], body["portal"], body["state"]) == (one, "status-update", portal.key, "applied")
    assert body["attempts"] >= 1 and body["last_error"] == ""
    history = [event["state"] for event in body["history"]]
    assert history[0] == "queued" and history[-1] == "applied" and "running" in history, history
    assert body["created"] <= body["updated"]
    found = api.get("/v1/jobs", params={"ids": ",".join(many)}).json()
    assert [j["id"] for j in found["jobs"]] == many and found["unknown"] == []
    assert {j["state"] for j in found["jobs"]} == {"applied"}


def test_an_idempotent_retry_gets_the_same_ids_and_the_portal_sees_each_job_once(
    stack: LocalStack, api: httpx.Client, domain: str
) -> None:
    installed(stack, domain)
    jobs = [status(domain, f"r{i}") for i in range(50)]
    records = get_runtime().ledger.count()
    headers = {"Idempotency-Key": f"gw-{domain}"}
    first = accepted(api.post("/v1/jobs", json=jobs, headers=headers), 50)
    # retried at once (the client lost the answer): the jobs are in flight, nothing new is enqueued
    again = api.post("/v1/jobs", json=jobs, headers=headers)
    assert accepted(again, 50) == first and again.headers["idempotent-replayed"] == "true"
    applied(first)
    later = api.post("/v1/jobs", json=jobs, headers=headers)  # and once they are applied
    assert accepted(later, 50) == first and later.headers["idempotent-replayed"] == "true"
    assert get_runtime().ledger.count() == records + 50
    assert messages(stack, domain) == {f"r{i}": ["delivered"] for i in range(50)}


def test_a_wrong_key_is_401_and_another_portals_key_403_with_the_queue_unchanged(
    stack: LocalStack, api: httpx.Client, domain: str
) -> None:
    portal = installed(stack, domain)
    [done] = accepted(api.post("/v1/jobs", json=status(domain, "s0")), 1)
    applied([done])
    before = snapshot(stack, domain)
    assert stack.http is not None
    with httpx.Client(base_url=stack.http.url, timeout=30) as other:
        scoped = {"X-API-Key": SCOPED}
        for name in (domain, portal.key):  # by domain and by member_id
            answer = other.post("/v1/jobs", json=[status(name, "s1")], headers=scoped)
            assert answer.status_code == 403, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert [(e["index"], e["field"]) for e in answer.json()["errors"]] == [(0, "portal")]
        assert other.get(f"/v1/jobs/{done}", headers=scoped).status_code == 404  # not its portal's job
        for wrong in ({"Authorization": f"Bearer {KEY[:-1]}x"}, {"X-API-Key": "b24q_not-a-key"}, {}):
            answer = other.post("/v1/jobs", json=status(domain, "s2"), headers=wrong)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", answer.text
            assert other.get(f"/v1/jobs/{done}", headers=wrong).status_code == 401
        assert snapshot(stack, domain) == before
        assert KEY not in stack.http.log_path.read_text() and SCOPED not in stack.http.log_path.read_text()

        # the scoped key is good for its own portal: the 403s above were its scope, not the key
        installed(stack, OTHER)
        [own] = accepted(other.post("/v1/jobs", json=status(OTHER, "o1"), headers=scoped), 1)
        applied([own])
        assert messages(stack, OTHER) == {"o1": ["delivered"]}
        assert other.get(f"/v1/jobs/{own}", headers=scoped).json()["state"] == "applied"


def test_a_dead_letter_is_replayed_over_http_once_its_cause_is_fixed(
    stack: LocalStack, api: httpx.Client, domain: str
) -> None:
    installed(stack, domain)
    update = {"kind": "sender-update", "portal": domain, "code": "later", "handler": "https://sms.example.com/v2"}
    [job_id] = accepted(api.post("/v1/jobs", json=update), 1)
    assert wait_for([job_id]) == {job_id: "dead"}  # the portal has no provider `later`: a permanent error
    rt = get_runtime()
    letter = rt.dead.get(job_id)
    assert letter is not None and letter.code == "ERROR_SENDER_NOT_FOUND"
    dead = api.get(f"/v1/jobs/{job_id}").json()
    assert dead["state"] == "dead" and "ERROR_SENDER_NOT_FOUND" in dead["last_error"]

    # the cause: the provider was never registered; register it (a sender-add job, over HTTP too)
    add = {"kind": "sender-add", "portal": domain, "code": "later", "name": "Later", "handler": PROVIDER["handler"]}
    applied(accepted(api.post("/v1/jobs", json=add), 1))
    replayed = api.post(f"/v1/dead/{job_id}/replay")
    assert replayed.status_code == 202 and replayed.json() == {"ids": [job_id]}, replayed.text
    applied([job_id])
    assert rt.dead.get(job_id) is None
    state = stack.emulator.state(domain)
    [sender] = [s for s in state["senders"] if s["code"] == "later"]
    assert sender["handler"] == update["handler"]
    assert [u["updates"] for u in state["sender_updates"] if u["code"] == "later"] == [[{"HANDLER": update["handler"]}]]
    history = [event["state"] for event in api.get(f"/v1/jobs/{job_id}").json()["history"]]
    assert history.index("dead") < len(history) - 1 and history[-1] == "applied", history
    assert api.post(f"/v1/dead/{job_id}/replay").status_code == 404  # replayed: no dead letter left


def test_the_readme_node_client_works_as_written(stack: LocalStack, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:  # CI's machines have Node 20: a missing node is a broken machine, not a reason to skip
        pytest.fail("`node` is not on PATH: this test runs the README's Node client example (Node 18+)")
    portal = installed(stack, "acme")  # the example's portal
    section = README.split("## Producing over HTTP")[1].split("\n## ")[0]
    [snippet] = [block.split("```")[0] for block in section.split("```js\n")[1:]]
    assert README_URL in snippet
    script = tmp_path / "post-job.mjs"
    assert stack.http is not None
    script.write_text(snippet.replace(README_URL, stack.http.url))

    def run(key: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": str(Path(node).parent), "B24Q_API_KEY": key}
        return subprocess.run([node, str(script)], env=env, capture_output=True, text=True, timeout=60)

    done = run(KEY)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 1
    applied(ids)
    assert get_runtime().ledger.states(ids, "portal") == {ids[0]: [portal.key]}
    assert messages(stack, "acme") == {"6e20": ["delivered"]}
    retried = run(KEY)  # the snippet's Idempotency-Key: the same id, nothing enqueued again
    assert retried.returncode == 0 and retried.stdout.split() == ids, retried.stderr
    refused = run("b24q_wrong")
    assert refused.returncode == 1 and refused.stderr.startswith("401"), refused.stderr
    assert messages(stack, "acme") == {"6e20": ["delivered"]}
