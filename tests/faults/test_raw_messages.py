"""Raw messages injected straight into the queue, bypassing the producer: each is recorded as a dead
letter with a reason (raw body cut to 2,000 characters); no worker crashes or wedges."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest

from tasks import producer
from tasks.definitions import TASKS
from tests.faults.conftest import make_fault_stack, wait_terminal
from workers.celery import app
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


def envelope(
    body: bytes, task: str = "b24q.mark_unread", ctype: str = "application/json", headers: dict[str, Any] | None = None
) -> tuple[str, bytes]:
    """A kombu envelope as any Celery-protocol producer would put it in the list."""
    job_id = str(uuid.uuid4())
    head = {"lang": "py", "task": task, "id": job_id, "retries": 0} if headers is None else headers
    raw = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": ctype,
        "headers": head,
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "priority": 0,
            "delivery_info": {"exchange": "", "routing_key": "b24q"},
            "correlation_id": job_id,
        },
    }
    return job_id, json.dumps(raw).encode()


def test_malformed_messages_are_recorded_and_workers_carry_on(domain: str, figures: dict[str, Any]) -> None:
    stack = make_fault_stack(workers=1, concurrency=8)
    try:
        stack.add_portal(domain)
        rt = get_runtime()
        queue = rt.settings.queue
        cases: dict[str, tuple[str, bytes]] = {
            "body not JSON": envelope(b"{not json"),
            "body JSON but not (args, kwargs, embed)": envelope(b'"hello"'),  # crashed the worker before the fix
            "two-item body": envelope(b'[[], {"portal": "x"}]'),
            "kwargs not a mapping": envelope(b"[[], [1, 2], {}]"),
            "pickle (disallowed content type)": envelope(b"\x80\x04K\x01.", ctype="application/x-python-serialize"),
            "no headers, body not JSON": envelope(b"zzz", headers={}),
        }
        expected_codes = {
            "body not JSON": "UNDECODABLE_MESSAGE",
            "body JSON but not (args, kwargs, embed)": "MALFORMED_MESSAGE",
            "two-item body": "MALFORMED_MESSAGE",
            "kwargs not a mapping": "MALFORMED_MESSAGE",
            "pickle (disallowed content type)": "UNDECODABLE_MESSAGE",
            "no headers, body not JSON": "UNDECODABLE_MESSAGE",
        }
        for _, raw in cases.values():
            rt.redis.lpush(queue, raw)
        before = set(rt.dead.ids())
        rt.redis.lpush(queue, b"this is not even an envelope")  # not JSON at all
        rt.redis.lpush(queue, b'{"json": "but not an envelope"}')
        rt.redis.lpush(queue, b"[1, 2, 3]")
        # through the normal publishing path, but with what the producer would refuse
        huge = TASKS["mark-unread"].apply_async(
            kwargs={"portal": domain, "dialog_id": "1", "message_id": 1, "blob": "x" * 5_000_000}
        )
        wrong_args = TASKS["status-update"].apply_async(args=[domain, "smsgw"], kwargs={})
        surrogate = TASKS["status-update"].apply_async(
            kwargs={"portal": domain, "code": "smsgw", "message_id": "a\ud800b", "status": "sent"}
        )
        long_portal = TASKS["mark-unread"].apply_async(
            kwargs={"portal": "p" * 200_000, "dialog_id": "1", "message_id": 1}
        )
        unknown = app.send_task("b24q.no_such_job", kwargs={"portal": domain})
        # a good job behind them all is still applied: nothing is wedged
        ok = producer.enqueue_mark_unread(portal=domain, dialog_id="chat1", message_id=42)
        published = [huge.id, wrong_args.id, surrogate.id, long_portal.id, ok]
        found = wait_terminal(published, timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            recorded = {name: rt.dead.get(job_id) for name, (job_id, _) in cases.items()}
            if (
                all(recorded.values())
                and rt.dead.get(unknown.id)
                and len(set(rt.dead.ids()) - before) >= len(cases) + 8
            ):
                break
            time.sleep(0.2)
        recorded = {name: rt.dead.get(job_id) for name, (job_id, _) in cases.items()}
        new_letters = [rt.dead.get(i) for i in set(rt.dead.ids()) - before]
        quarantined = [d for d in new_letters if d and d.task == "b24q.undecodable"]
        log = stack.workers[0].log_path.read_text(errors="replace")
        figures.update(
            recorded={name: (d.code if d else None) for name, d in recorded.items()},
            published={
                name: (d.code if d else None)
                for name, d in (
                    ("huge", rt.dead.get(huge.id)),
                    ("positional args", rt.dead.get(wrong_args.id)),
                    ("lone surrogate", rt.dead.get(surrogate.id)),
                    ("200 kB portal", rt.dead.get(long_portal.id)),
                    ("unknown task", rt.dead.get(unknown.id)),
                )
            },
            not_envelopes_recorded=len(quarantined),
            worker_alive=stack.workers[0].alive,
        )
        assert {name: (d.code if d else None) for name, d in recorded.items()} == expected_codes
        assert all(len(d.payload["raw"]) <= 2100 for d in recorded.values() if d)
        assert len(quarantined) == 3 and all(d.code == "UNDECODABLE_MESSAGE" for d in quarantined)
        assert found[ok] == "applied"
        assert found[huge.id] == found[wrong_args.id] == found[surrogate.id] == found[long_portal.id] == "dead"
        letter = rt.dead.get(huge.id)
        assert letter is not None and len(json.dumps(letter.payload)) < 10_000 and "blob" in letter.description
        assert rt.dead.get(surrogate.id).payload["message_id"] == "a\\ud800b"  # type: ignore[union-attr]
        assert rt.dead.get(long_portal.id).portal == "?"  # type: ignore[union-attr]
        assert rt.dead.get(unknown.id).code == "UNKNOWN_TASK"  # type: ignore[union-attr]
        assert stack.workers[0].alive and "Unrecoverable error" not in log
        assert rt.redis.hlen("unacked") == 0
    finally:
        stack.__exit__(None, None, None)
