"""Raw messages injected straight into the queue, bypassing the producer: each is recorded as a dead
letter with a reason (raw body cut to 2,000 characters); no worker crashes or wedges.

On both brokers: on Redis the items are pushed into kombu's list (envelopes, and items that are none); on
RabbitMQ the same bodies are published to b24q's queue with py-amqp (Celery's properties and headers, and
bodies with none at all). Each is recorded once, with the same code, and nothing is left in the broker (on
RabbitMQ: none moved to its dead queue, where it would come back as a second, DELIVERY_LIMIT, letter)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import amqp
import pytest
from kombu import Connection

from tasks import producer
from tasks.definitions import TASKS
from tests.faults.conftest import broker_backlog, make_fault_stack, wait_drained
from tests.integration.conftest import BROKERS, RABBITMQ_URL, on_broker
from workers.celery import app
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


#: A message put in b24q's queue by hand: (body, content type, Celery's headers); None: no headers at all.
Raw = tuple[bytes, str, dict[str, Any] | None]


def message(
    body: bytes, task: str = "b24q.mark_unread", ctype: str = "application/json", headers: dict[str, Any] | None = None
) -> tuple[str, Raw]:
    """A job id, and a message with that id as any Celery-protocol producer would publish it."""
    job_id = str(uuid.uuid4())
    head = {"lang": "py", "task": task, "id": job_id, "retries": 0} if headers is None else headers
    return job_id, (body, ctype, head)


def envelope(job_id: str, raw: Raw) -> bytes:
    """The kombu envelope the Redis transport keeps in its list for a message."""
    body, ctype, headers = raw
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": ctype,
            "headers": headers,
            "properties": {
                "delivery_tag": str(uuid.uuid4()),
                "body_encoding": "base64",
                "priority": 0,
                "delivery_info": {"exchange": "", "routing_key": "b24q"},
                "correlation_id": job_id,
            },
        }
    ).encode()


def put_on_redis(messages: dict[str, Raw], bare: list[bytes]) -> None:
    """Push the messages' envelopes, then items that are not envelopes at all, straight into the queue list."""
    rt = get_runtime()
    for job_id, raw in messages.items():
        rt.redis.lpush(rt.settings.queue, envelope(job_id, raw))
    for item in bare:
        rt.redis.lpush(rt.settings.queue, item)


def put_on_rabbitmq(messages: dict[str, Raw], bare: list[bytes]) -> None:
    """Publish the messages (AMQP properties and headers as Celery's), then bodies with no properties at all,
    straight to the queue, confirmed (py-amqp, bypassing kombu and Celery)."""
    queue = get_runtime().settings.queue
    with Connection(RABBITMQ_URL) as conn:
        channel = conn.channel()  # (py-amqp's, under kombu's name)
        channel.confirm_select()
        for job_id, (body, ctype, headers) in messages.items():
            props: dict[str, Any] = {"content_type": ctype, "content_encoding": "utf-8", "correlation_id": job_id}
            props |= {"application_headers": headers} if headers else {}
            channel.basic_publish_confirm(amqp.Message(body, delivery_mode=2, **props), queue, queue)
        for item in bare:
            channel.basic_publish_confirm(amqp.Message(item), queue, queue)


#: Queue items that are not messages at all (on RabbitMQ: bodies without properties or headers).
BARE = [b"this is not even an envelope", b'{"json": "but not an envelope"}', b"[1, 2, 3]"]


@pytest.mark.parametrize("broker", BROKERS)
def test_malformed_messages_are_recorded_and_workers_carry_on(
    domain: str, broker: str, figures: dict[str, Any]
) -> None:
    stack = make_fault_stack(workers=1, concurrency=8, **on_broker(broker))
    try:
        stack.add_portal(domain)
        rt = get_runtime()
        cases: dict[str, tuple[str, Raw]] = {
            "body not JSON": message(b"{not json"),
            "body JSON but not (args, kwargs, embed)": message(b'"hello"'),  # crashed the worker before the fix
            "two-item body": message(b'[[], {"portal": "x"}]'),
            "kwargs not a mapping": message(b"[[], [1, 2], {}]"),
            "pickle (disallowed content type)": message(b"\x80\x04K\x01.", ctype="application/x-python-serialize"),
            "no headers, body not JSON": message(b"zzz", headers={}),
        }
        expected_codes = {
            "body not JSON": "UNDECODABLE_MESSAGE",
            "body JSON but not (args, kwargs, embed)": "MALFORMED_MESSAGE",
            "two-item body": "MALFORMED_MESSAGE",
            "kwargs not a mapping": "MALFORMED_MESSAGE",
            "pickle (disallowed content type)": "UNDECODABLE_MESSAGE",
            "no headers, body not JSON": "UNDECODABLE_MESSAGE",
        }
        before = set(rt.dead.ids())
        put = put_on_rabbitmq if broker == "rabbitmq" else put_on_redis
        put(dict(cases.values()), BARE)
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
        # every message taken and settled (none left in the broker, none moved to RabbitMQ's dead queue)
        found, backlog = wait_drained(published, timeout=30)
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
        time.sleep(1.0)  # (a message recorded twice, say once more from RabbitMQ's dead queue, would show now)
        backlog = broker_backlog()
        recorded = {name: rt.dead.get(job_id) for name, (job_id, _) in cases.items()}
        new_letters = [rt.dead.get(i) for i in set(rt.dead.ids()) - before]
        not_messages = [d for d in new_letters if d and d.payload.get("raw") in {b.decode() for b in BARE}]
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
            not_messages_recorded=sorted((d.code, d.payload["raw"]) for d in not_messages),
            new_dead_letters=len(new_letters),
            broker_left=backlog,
            worker_alive=stack.workers[0].alive,
        )
        assert {name: (d.code if d else None) for name, d in recorded.items()} == expected_codes
        assert all(len(d.payload["raw"]) <= 2100 for d in recorded.values() if d)
        assert sorted(d.payload["raw"] for d in not_messages) == sorted(b.decode() for b in BARE)
        assert all(d.code == "UNDECODABLE_MESSAGE" for d in not_messages), not_messages
        assert len(new_letters) == len(cases) + len(BARE) + 5, [(d.id, d.code) for d in new_letters if d]
        assert found[ok] == "applied"
        assert found[huge.id] == found[wrong_args.id] == found[surrogate.id] == found[long_portal.id] == "dead"
        letter = rt.dead.get(huge.id)
        assert letter is not None and len(json.dumps(letter.payload)) < 10_000 and "blob" in letter.description
        assert rt.dead.get(surrogate.id).payload["message_id"] == "a\\ud800b"  # type: ignore[union-attr]
        assert rt.dead.get(long_portal.id).portal == "?"  # type: ignore[union-attr]
        assert rt.dead.get(unknown.id).code == "UNKNOWN_TASK"  # type: ignore[union-attr]
        assert stack.workers[0].alive and "Unrecoverable error" not in log
        assert backlog == {"queued": 0, "unacked": 0}, backlog
    finally:
        stack.__exit__(None, None, None)
