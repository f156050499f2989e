"""Messages that never become a job run: each one is kept as a dead letter, none stops a worker.

Without this, one bad message in the queue can stop a worker or vanish without trace. Measured with
celery 5.7 / kombu 5.7 (tests/faults/test_raw_messages.py):

- a body that is JSON but not Celery's (args, kwargs, embed) triple, e.g. `"hello"`, raises ValueError
  inside Celery's consumer: "Unrecoverable error", the worker process exits, and the message goes back
  to the queue for the next worker to die on (a poison pill that takes the whole pool down);
- an item in the queue list that is not JSON, or not a kombu envelope, raises inside kombu's BRPOP
  reader: the same crash, and the item is gone;
- a body that does not decode (not JSON, a disallowed content type such as pickle) is logged and
  dropped by Celery (`on_decode_error`, `on_invalid_task`): nothing records the job;
- a message for a task name b24q does not know is dropped by Celery (`task_unknown`);
- on RabbitMQ, the messages Celery rejects (a disallowed content type, an unknown task, a body that is not a
  message at all) are not dropped but dead-lettered by RabbitMQ to b24q's dead queue, from which a worker
  recorded each a second time, as DELIVERY_LIMIT (a bare body as a second letter).

Each is recorded as a dead letter (reason, task name, id, the raw body cut to 2,000 characters),
acknowledged, and the worker carries on. `workers.celery` connects the signal handlers below and
`workers.broker.configuration` names `Consumer` as the worker's consumer.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer

from workers import rabbitmq
from workers.records.outcomes import JobRef
from workers.retries import DeadLetter
from workers.runtime import get_runtime

#: Dead-letter reasons of messages that never reached a job (see `b24q dead list --code ...`).
UNDECODABLE = "UNDECODABLE_MESSAGE"
MALFORMED = "MALFORMED_MESSAGE"
#: The task name a quarantined queue item is delivered under (never a real task).
QUARANTINE_TASK = "b24q.undecodable"
RAW_LIMIT = 2000

log = logging.getLogger(__name__)


def _text(raw: Any, limit: int = RAW_LIMIT) -> str:
    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw).decode("utf-8", "replace")
    text = raw if isinstance(raw, str) else repr(raw)
    text = text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates cannot be stored


def record_raw(message: Any, code: str, description: str, raw: Any = None) -> None:
    """Keep a message that never reached a job as a dead letter (never raises)."""
    try:
        headers = getattr(message, "headers", None)
        headers = headers if isinstance(headers, dict) else {}
        props = getattr(message, "properties", None)
        correlation = props.get("correlation_id") if isinstance(props, dict) else None
        job_id = _text(str(headers.get("id") or correlation or uuid.uuid4()), 200)
        task = _text(str(headers.get("task") or "?"), 200)
        body = raw if raw is not None else getattr(message, "body", None)
        payload = {
            "raw": _text(body),
            "content_type": str(getattr(message, "content_type", "") or ""),
            "headers": _text(headers, 500),
        }
        get_runtime().dead.add(job_id, task, "raw", "?", payload, code, description, 0)
        log.error("message %s (task %s) recorded as dead letter %s: %s", job_id, task, code, description)
    except Exception:
        log.exception("could not record a malformed message (%s: %s)", code, description)


def _envelope_ok(value: Any) -> bool:
    """Whether kombu can build a message from a queue item without raising."""
    if not isinstance(value, dict):
        return False
    props = value.get("properties")
    if not isinstance(props, dict) or "delivery_tag" not in props:
        return False
    info = props.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        return False
    headers = value.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return False
    body, encoding = value.get("body"), props.get("body_encoding")
    if encoding not in (None, "base64"):
        return False
    if body and encoding == "base64":
        if not isinstance(body, str | bytes):
            return False
        try:
            base64.b64decode(body)
        except (ValueError, TypeError):
            return False
    return True


def _quarantine(raw: Any, reason: str) -> dict[str, Any]:
    """A well-formed envelope standing for an unusable queue item; the consumer records and acks it."""
    body = json.dumps({"reason": reason, "raw": _text(raw)}).encode()
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": QUARANTINE_TASK, "id": str(uuid.uuid4())},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "priority": 0,
            "delivery_info": {"exchange": "", "routing_key": ""},
        },
    }


def harden_redis_transport() -> None:
    """Make kombu's Redis transport hand unusable queue items on as quarantine envelopes instead of
    raising inside the worker's event loop. The transport decodes every item it pops (BRPOP / RPOP),
    every unacked entry it restores ([envelope, exchange, routing_key]) and every fanout message with
    the module's `loads`; only values that are neither envelopes nor unacked entries are replaced."""
    from kombu.transport import redis as kombu_redis

    original = getattr(kombu_redis, "loads", None)
    if original is None or getattr(original, "b24q_tolerant", False):
        return  # (another kombu: tests/faults/test_raw_messages.py says whether it still needs this)

    def loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            value = original(s, *args, **kwargs)
        except Exception as exc:
            return _quarantine(s, f"queue item is not JSON ({type(exc).__name__})")
        if _envelope_ok(value):
            return value
        if isinstance(value, list) and len(value) == 3 and _envelope_ok(value[0]):
            return value  # an unacked entry being restored
        return _quarantine(s, "queue item is not a message envelope")

    loads.b24q_tolerant = True  # type: ignore[attr-defined]
    kombu_redis.loads = loads

    # Measured in tests/faults/test_redis_restart.py: when Redis goes away while a worker holds
    # delivered-but-unacked messages, Celery detaches the broken connection's transport, then closes
    # its channel, which tries to put those messages back; and after the reconnect, jobs that were
    # running finish and ack or reject their messages on that old channel. Both dereference the
    # detached transport: AttributeError inside the event loop, "Unrecoverable error", the worker
    # exits and never comes back. A channel without a transport now raises a connection error, which
    # kombu and Celery already handle (log it; the message stays in Redis's `unacked` hash and is
    # redelivered after visibility_timeout).
    connparams = getattr(kombu_redis.Channel, "_connparams", None)
    if connparams is None:
        return  # (another kombu: tests/faults/test_redis_restart.py says whether it still needs this)

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("this broker channel's connection was reset")
        return connparams(self, asynchronous)

    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]  # the patch is the point


class _AckedWhenRejected:
    """A message Celery rejects as one it cannot run, acknowledged instead: b24q keeps it as a dead letter (the
    signal handlers below), so the broker has nothing more to do with it. Redis drops a rejected message
    anyway; RabbitMQ would dead-letter it to b24q's dead queue (`workers.rabbitmq`), which is for messages
    delivered too often, and it would be recorded again there."""

    def __init__(self, message: Any) -> None:
        self._message = message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def reject_log_error(self, logger: logging.Logger, errors: Any, requeue: bool = False) -> None:
        if requeue:
            self._message.reject_log_error(logger, errors, requeue=True)
        else:
            self._message.ack_log_error(logger, errors)


class Consumer(CeleryConsumer):
    """Celery's consumer, except that no single message can stop it (its `worker_consumer` setting), and a
    message it cannot run is acknowledged once recorded, on either broker."""

    def on_unknown_message(self, body: Any, message: Any) -> None:
        super().on_unknown_message(body, _AckedWhenRejected(message))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        super().on_unknown_task(body, _AckedWhenRejected(message), exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        super().on_invalid_task(body, _AckedWhenRejected(message), exc)

    def create_task_handler(self, promise: Any = None) -> Any:
        handler = super().create_task_handler() if promise is None else super().create_task_handler(promise)
        connection_errors = tuple(self.connection_errors or ())

        queue = str(self.app.conf.task_default_queue)

        def on_task_received(message: Any) -> Any:
            headers = getattr(message, "headers", None)
            if rabbitmq.dead_lettered(message, queue):
                try:
                    record_delivery_limit(message)
                except Exception:
                    log.exception("could not record a dead-lettered message; it stays in the dead queue")
                    message.reject_log_error(log, self.connection_errors, requeue=True)
                    return None
                message.ack_log_error(log, self.connection_errors)
                return None
            if isinstance(headers, dict) and headers.get("task") == QUARANTINE_TASK:
                try:
                    inner = json.loads(message.body)
                except ValueError:
                    inner = {"reason": "quarantined", "raw": message.body}
                record_raw(message, UNDECODABLE, str(inner.get("reason")), raw=inner.get("raw"))
                message.ack_log_error(log, self.connection_errors)
                return None
            try:
                return handler(message)
            except connection_errors:
                raise  # the consumer reconnects; the message stays unacked and comes back
            except Exception as exc:
                record_raw(
                    message,
                    MALFORMED,
                    f"the worker could not read this message: {type(exc).__name__}: {_text(str(exc), 300)}",
                )
                message.ack_log_error(log, self.connection_errors)
                return None

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery logs the raw body and acks: record it first
        record_raw(message, UNDECODABLE, f"body does not decode: {type(exc).__name__}: {_text(str(exc), 300)}")
        super().on_decode_error(message, exc)


def record_delivery_limit(message: Any) -> None:
    """A job's message RabbitMQ moved aside after `broker_delivery_limit` deliveries (every worker that took it
    died or stopped holding it): the job ends as the dead letter DELIVERY_LIMIT, replayable."""
    headers = message.headers
    job_id = str(headers.get("id") or uuid.uuid4())
    task = str(headers.get("task") or "?")
    try:
        body = message.decode()
    except Exception:
        body = None
    kwargs = body[1] if isinstance(body, list | tuple) and len(body) >= 2 and isinstance(body[1], dict) else {}
    rt = get_runtime()
    record = rt.ledger.record(job_id)
    portal = str(record.get("portal") or kwargs.get("portal") or "?")[:255]
    limit = rt.settings.broker_delivery_limit
    why = (
        f"delivered {limit} times without an outcome (each worker that took it "
        "died or stopped); RabbitMQ moved it aside"
    )
    job = JobRef(job_id, record.get("kind", "?"), task, portal)
    rt.outcomes.unrun(job, kwargs, DeadLetter(rabbitmq.DELIVERY_LIMIT, why), limit)


def record_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    """Celery rejects (and drops) messages it cannot turn into a task: disallowed content types such as
    pickle (`on_invalid_task`) and messages in an unknown format (`on_unknown_message`)."""
    if message is None:
        return
    reason = f"{type(exc).__name__}: {_text(str(exc), 300)}" if exc is not None else "unknown message format"
    record_raw(message, UNDECODABLE, f"rejected by the worker: {reason}")


def record_internal_error(
    sender: Any = None, task_id: str = "", args: Any = None, kwargs: Any = None, exception: Any = None, **_: Any
) -> None:
    """A message whose args/kwargs Celery cannot even pass to the task (kwargs not a mapping, ...): Celery
    logs "Exception raised outside body" and acks it; keep it as a dead letter."""
    try:
        name = str(getattr(sender, "name", "?"))
        payload = {"raw": _text({"args": args, "kwargs": kwargs})}
        reason = f"the worker could not run this message: {type(exception).__name__}: {_text(str(exception), 300)}"
        get_runtime().dead.add(task_id or str(uuid.uuid4()), name, "raw", "?", payload, MALFORMED, reason, 0)
        log.error("message %s (task %s) recorded as dead letter %s: %s", task_id, name, MALFORMED, reason)
    except Exception:
        log.exception("could not record a message that failed outside the task body")


def record_unknown_task(sender: Any = None, name: str = "", id: str = "", message: Any = None, **_: Any) -> None:
    """A message for a task name b24q does not know: Celery drops it; keep it as a dead letter."""
    try:
        body = message.decode() if message is not None else None
    except Exception:
        body = None
    args, kwargs = ((), {})
    if isinstance(body, list | tuple) and len(body) >= 2:
        args, kwargs = body[0], body[1]
    payload = kwargs if isinstance(kwargs, dict) else {"raw": repr(body)[:2000]}
    if args:
        payload = {"args": list(args), "kwargs": payload}
    portal = str(payload.get("portal", "?")) if isinstance(payload, dict) else "?"
    get_runtime().dead.add(
        id or "unknown",
        name[:200],
        "unknown",
        portal[:255],
        payload,
        "UNKNOWN_TASK",
        f"no task named {name[:200]!r}",
        0,
    )
