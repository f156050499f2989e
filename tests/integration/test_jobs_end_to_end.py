"""Issue 2: the four job kinds end to end through real workers, and what happens to bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tasks import producer
from tasks.definitions import TASKS
from tests.integration.conftest import wait_for
from workers.celery import app
from workers.errors import JobRefused, UnknownPortal
from workers.localdev.localstack import LocalStack
from workers.runtime import Runtime

pytestmark = pytest.mark.integration

DELIVERED = {
    "im": {"chat_id": 1807, "message_id": 86497},
    "message": {"id": ["ext-1"], "date": 1738065600},
    "chat": {"id": "channel-123"},
}


def setup_portal(stack: LocalStack, domain: str) -> None:
    stack.add_portal(domain)
    stack.emulator.admin("POST", f"portals/{domain}/senders", {"code": "smsgw", "name": "SMS"})
    stack.emulator.admin("POST", f"portals/{domain}/messages", {"code": "smsgw", "message_ids": ["m1", "m2"]})
    stack.emulator.admin("POST", f"portals/{domain}/connectors", {"connector": "myconnector", "line": 107})


def test_each_job_kind_is_applied_at_the_portal(stack: LocalStack, rt: Runtime, domain: str) -> None:
    setup_portal(stack, domain)
    ids = [
        producer.enqueue_status_update(portal=domain, code="smsgw", message_id="m1", status="delivered"),
        producer.enqueue_delivery_confirmation(portal=domain, connector="myconnector", line=107, messages=[DELIVERED]),
        producer.enqueue_sender_update(
            portal=domain, code="smsgw", handler="https://sms.example.com/h", name={"en": "SMS", "de": "SMS"}
        ),
        producer.enqueue_mark_unread(portal=domain, dialog_id="chat29", message_id=12),
    ]
    assert set(wait_for(ids).values()) == {"applied"}
    state = stack.emulator.state(domain)
    text = json.dumps([state["statuses"], state["deliveries"], state["sender_updates"], state["unread"]])
    assert "m1" in text and "delivered" in text
    assert "86497" in text and "myconnector" in text
    assert "https://sms.example.com/h" in text
    assert "chat29" in text
    record = producer.job_state(ids[0])
    assert record is not None and record["state"] == "applied" and record["kind"] == "status-update"
    assert next(e["state"] for e in record["events"]) == "queued"


def test_bad_input_never_reaches_the_queue(stack: LocalStack, rt: Runtime, domain: str) -> None:
    setup_portal(stack, domain)
    before = stack.emulator.state(domain)["counters"]["requests"]
    jobs_before = rt.ledger.count()
    with pytest.raises(JobRefused, match="status: Input should be"):
        producer.enqueue_status_update(portal=domain, code="smsgw", message_id="m1", status="read")
    with pytest.raises(JobRefused, match="dialog_id"):
        producer.enqueue_mark_unread(portal=domain, dialog_id="user1", message_id=1)
    with pytest.raises(UnknownPortal):
        producer.enqueue_mark_unread(portal="nowhere.test", dialog_id="1", message_id=1)
    with pytest.raises(JobRefused, match=r"\[1\]\.status"):  # a bulk enqueue is all or nothing
        producer.enqueue_many(
            [
                ("mark-unread", {"portal": domain, "dialog_id": "1", "message_id": 1}),
                ("status-update", {"portal": domain, "code": "smsgw", "message_id": "m1"}),
            ]
        )
    time.sleep(0.5)
    assert rt.ledger.count() == jobs_before
    assert rt.redis.llen(rt.settings.queue) == 0
    assert stack.emulator.state(domain)["counters"]["requests"] == before


def test_webhook_portals_take_mark_unread_and_refuse_app_only_methods(
    stack: LocalStack, rt: Runtime, domain: str
) -> None:
    stack.add_webhook_portal(domain)
    job = producer.enqueue_mark_unread(portal=domain, dialog_id="sg3", message_id=5)
    assert wait_for([job]) == {job: "applied"}
    with pytest.raises(JobRefused, match="needs an OAuth application portal"):
        producer.enqueue_status_update(portal=domain, code="smsgw", message_id="m1", status="sent")


def test_malformed_raw_messages_are_recorded_not_lost(stack: LocalStack, rt: Runtime, domain: str) -> None:
    setup_portal(stack, domain)
    # a non-Python producer sends bad kwargs, positional args, an unknown task
    bad = TASKS["status-update"].apply_async(kwargs={"portal": domain, "code": "smsgw", "status": "lost"})
    positional = TASKS["mark-unread"].apply_async(args=[domain, "chat1", 5])
    unknown = app.send_task("b24q.no_such_job", kwargs={"portal": domain, "x": 1})
    assert wait_for([bad.id, positional.id], timeout=30) == {bad.id: "dead", positional.id: "dead"}
    letter = rt.dead.get(bad.id)
    assert letter is not None and letter.code == "INVALID_PAYLOAD" and "message_id" in letter.description
    assert letter.payload["status"] == "lost"
    assert rt.dead.get(positional.id).code == "INVALID_PAYLOAD"  # type: ignore[union-attr]
    deadline = time.time() + 20
    while rt.dead.get(unknown.id) is None and time.time() < deadline:
        time.sleep(0.1)
    assert rt.dead.get(unknown.id).code == "UNKNOWN_TASK"  # type: ignore[union-attr]
    # the workers are still fine
    ok = producer.enqueue_mark_unread(portal=domain, dialog_id="1", message_id=1)
    assert wait_for([ok]) == {ok: "applied"}


def test_the_cli_enqueues_and_shows_a_job(stack: LocalStack, rt: Runtime, domain: str, tmp_path: object) -> None:
    setup_portal(stack, domain)
    env = stack.env
    cli = [sys.executable, "-m", "edges.cli"]
    out = subprocess.run(
        [
            *cli,
            "enqueue",
            "status-update",
            "--portal",
            domain,
            "--code",
            "smsgw",
            "--message-id",
            "m2",
            "--status",
            "sent",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert wait_for([job_id]) == {job_id: "applied"}
    shown = subprocess.run([*cli, "job", "show", job_id], env=env, capture_output=True, text=True)
    assert "applied" in shown.stdout and "status-update" in shown.stdout
    refused = subprocess.run(
        [*cli, "enqueue", "mark-unread", "--portal", domain, "--dialog-id", "x", "--message-id", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "dialog_id" in refused.stderr
    lines = "\n".join(
        json.dumps({"kind": "mark-unread", "portal": domain, "dialog_id": f"chat{i}", "message_id": i})
        for i in range(1, 30)
    )
    bulk = subprocess.run([*cli, "enqueue", "--file", "-"], input=lines, env=env, capture_output=True, text=True)
    assert bulk.returncode == 0, bulk.stderr
    ids = bulk.stdout.split()
    assert len(ids) == 29 and set(wait_for(ids).values()) == {"applied"}
    secret = stack.settings.client_secret.get_secret_value()
    assert secret and secret not in bulk.stdout + bulk.stderr + refused.stdout + refused.stderr


def test_one_request_carries_jobs_of_several_workers(stack: LocalStack, rt: Runtime, domain: str) -> None:
    """The call pool: on a rate-limited portal a request packs calls from every worker, so a batch can
    hold more jobs than any one worker's threads (2 workers x 16 threads here)."""
    stack.add_portal(domain, rate=2.0, burst=2)  # scarce slots (2/s, no burst): every request waits, calls pile up
    ids = producer.enqueue_many(
        [("mark-unread", {"portal": domain, "dialog_id": f"chat{i}", "message_id": i}) for i in range(1, 201)]
    )
    assert set(wait_for(ids).values()) == {"applied"}
    counters = stack.emulator.state(domain)["counters"]
    assert counters["method_calls"]["im.dialog.unread"] == 200  # each job applied once
    per_batch = counters["batch_commands"] / max(1, counters["batches"])
    assert per_batch > 16, counters  # more than one worker's threads could hold
    workers = {e.get("worker", "").split("@")[0] for i in ids for e in (rt.ledger.get(i) or {})["events"]}
    assert {"w1", "w2"} <= workers  # both workers held jobs
