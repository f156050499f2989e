"""The Celery application (`celery -A workers worker` finds it here).

Job tasks are defined in `tasks.definitions`; the worker imports them through `include`.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
import uuid
from typing import Any

import redis
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_internal_error,
    task_rejected,
    task_unknown,
    worker_ready,
)
from celery.worker.consumer import Consumer as CeleryConsumer

from workers.settings import Settings

app = Celery("b24q", include=["tasks.definitions"])
app.config_from_object("celeryconfig")


def configure(settings: Settings) -> None:
    """Point this process's Celery app at another `Settings` (a producer in tests and the demo)."""
    import celeryconfig

    app.conf.update(celeryconfig.build(settings))
    if app._pool is not None:  # drop connections to the old broker
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    # FIX: `app.pool` is kombu's process-wide pool for this broker URL, so the closed pool came back on
    # the next publish to the same URL ("Acquire on closed pool": configure() twice with one Settings)
    from kombu import pools

    pools.reset()


@task_unknown.connect
def _record_unknown_task(sender: Any = None, name: str = "", id: str = "", message: Any = None, **_: Any) -> None:
    """A message for a task name b24q does not know: Celery drops it; keep it as a dead letter."""
    from workers.runtime import get_runtime

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
    from workers.pipeline import storable  # (reliability) surrogates and megabytes would make this raise

    get_runtime().dead.add(
        id or "unknown", name[:200], "unknown", portal[:255], storable(payload), "UNKNOWN_TASK",
        f"no task named {name[:200]!r}", 0,
    )  # fmt: skip


# --- poison messages (docs/reliability.md) -------------------------------------------------------------
# Why this is here: without it, one bad message in the queue can stop a worker or vanish without trace.
# Measured with celery 5.7 / kombu 5.7 (tests/faults/test_raw_messages.py):
# - a body that is JSON but not Celery's (args, kwargs, embed) triple, e.g. `"hello"`, raises ValueError
#   inside Celery's consumer: "Unrecoverable error", the worker process exits, and the message goes back
#   to the queue for the next worker to die on (a poison pill that takes the whole pool down);
# - an item in the queue list that is not JSON, or not a kombu envelope, raises inside kombu's BRPOP
#   reader: the same crash, and the item is gone;
# - a body that does not decode (not JSON, a disallowed content type such as pickle) is logged and
#   dropped by Celery (`on_decode_error`, `on_invalid_task`): nothing records the job.
# b24q records each of them as a dead letter (reason, task name, id, the raw body cut to 2,000
# characters), acknowledges it, and carries on.

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
        from workers.runtime import get_runtime

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


def _harden_redis_transport() -> None:
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

    kombu_redis.Channel._connparams = _connparams


_harden_redis_transport()


class Consumer(CeleryConsumer):
    """Celery's consumer, except that no single message can stop it (`worker_consumer` in celeryconfig)."""

    def create_task_handler(self, promise: Any = None) -> Any:
        handler = super().create_task_handler() if promise is None else super().create_task_handler(promise)
        connection_errors = tuple(self.connection_errors or ())

        def on_task_received(message: Any) -> Any:
            headers = getattr(message, "headers", None)
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
                record_raw(message, MALFORMED, f"the worker could not read this message: {type(exc).__name__}: "
                                               f"{_text(str(exc), 300)}")  # fmt: skip
                message.ack_log_error(log, self.connection_errors)
                return None

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery logs the raw body and acks: record it first
        record_raw(message, UNDECODABLE, f"body does not decode: {type(exc).__name__}: {_text(str(exc), 300)}")
        super().on_decode_error(message, exc)


@task_rejected.connect
def _record_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    """Celery rejects (and drops) messages it cannot turn into a task: disallowed content types such as
    pickle (`on_invalid_task`) and messages in an unknown format (`on_unknown_message`)."""
    if message is None:
        return
    reason = f"{type(exc).__name__}: {_text(str(exc), 300)}" if exc is not None else "unknown message format"
    record_raw(message, UNDECODABLE, f"rejected by the worker: {reason}")


@task_internal_error.connect
def _record_internal_error(
    sender: Any = None, task_id: str = "", args: Any = None, kwargs: Any = None, exception: Any = None, **_: Any
) -> None:
    """A message whose args/kwargs Celery cannot even pass to the task (kwargs not a mapping, ...): Celery
    logs "Exception raised outside body" and acks it; keep it as a dead letter."""
    try:
        from workers.runtime import get_runtime

        name = str(getattr(sender, "name", "?"))
        payload = {"raw": _text({"args": args, "kwargs": kwargs})}
        reason = f"the worker could not run this message: {type(exception).__name__}: {_text(str(exception), 300)}"
        get_runtime().dead.add(task_id or str(uuid.uuid4()), name, "raw", "?", payload, MALFORMED, reason, 0)
        log.error("message %s (task %s) recorded as dead letter %s: %s", task_id, name, MALFORMED, reason)
    except Exception:
        log.exception("could not record a message that failed outside the task body")


# --- lost-message reconciler (docs/reliability.md) -----------------------------------------------------
# Why this is here: kombu's Redis transport takes a message with BRPOP and only then records it in its
# `unacked` hash. A worker killed (or stopped) between the two loses that message for good
# (celery#7950, kombu#305); tests/faults/test_worker_kill.py hit it about once in 25 SIGKILLs under
# load. The ledger knows every open job and keeps its kwargs (workers.ledger); once a minute one
# worker of the pool looks for open jobs that made no progress for `reconcile_grace` seconds and whose
# message is neither queued nor unacked, and publishes them again under the same job id.

_TASK_ID = re.compile(rb'"id": ?"([^"]{1,200})"')


def broker_job_ids(rt: Any, max_scan: int = 200_000, chunk: int = 5000) -> set[str] | None:
    """Task ids of every message queued (all priority sub-queues) or unacked; None when the queue is too
    deep to scan this time (it is then read again at the next round)."""
    queue = rt.settings.queue
    names = [queue] + [f"{queue}\x06\x16{p}" for p in (3, 6, 9)]
    if sum(int(rt.redis.llen(n)) for n in names) > max_scan:
        return None
    ids: set[str] = set()
    for name in names:  # the queues first, then unacked: a message moving on is then seen in one of them
        start = 0
        while True:
            items = rt.redis.lrange(name, start, start + chunk - 1)
            for item in items:
                ids.update(m.decode(errors="replace") for m in _TASK_ID.findall(item))
            if len(items) < chunk:
                break
            start += chunk
    for value in rt.redis.hvals("unacked"):
        ids.update(m.decode(errors="replace") for m in _TASK_ID.findall(value))
    return ids


def reconcile(rt: Any, grace: float | None = None) -> dict[str, int]:
    """One reconciliation round; returns counts (checked, republished, dead)."""
    from tasks.definitions import TASKS
    from tasks.jobs import KINDS
    from workers.ledger import TERMINAL
    from workers.pipeline import PRIORITY_NORMAL

    grace = rt.settings.reconcile_grace if grace is None else grace
    cutoff = time.time() - grace
    candidates = rt.ledger.stale_open(cutoff)
    done = {"checked": len(candidates), "republished": 0, "dead": 0}
    if not candidates:
        return done
    missing = set(candidates)
    for look in range(2):  # a message between two places can be missed once; never twice a second apart
        seen = broker_job_ids(rt)
        if seen is None:
            log.info("reconcile: queue too deep to scan; next round")
            return done
        missing -= seen
        if not missing:
            return done
        if look == 0:
            time.sleep(1.0)
    for job_id in sorted(missing):
        raw = rt.redis.hgetall(f"{rt.settings.key_prefix}:job:{job_id}")
        record = {k.decode(): v.decode() for k, v in raw.items()}
        if not record or record.get("state") in TERMINAL:
            rt.ledger.forget_open(job_id)
            continue
        if float(record.get("updated") or 0) > cutoff:
            continue  # it moved on meanwhile
        kind = KINDS.get(record.get("kind", ""))
        payload = json.loads(record["payload"]) if record.get("payload") else None
        portal = record.get("portal", "?")
        if kind is None or not isinstance(payload, dict):
            rt.dead.add(job_id, kind.task_name if kind else "?", record.get("kind", "?"), portal, {},
                        "LOST_MESSAGE", "the broker lost this job's message and the ledger has no payload to "
                        "publish again", int(record.get("runs") or 0))  # fmt: skip
            rt.ledger.finish(job_id, portal, "dead", "LOST_MESSAGE")
            done["dead"] += 1
            continue
        TASKS[kind.name].apply_async(kwargs=payload, task_id=job_id, priority=PRIORITY_NORMAL, queue=rt.settings.queue)
        rt.ledger.recovered(job_id, "the broker lost its message; published again by the reconciler")
        done["republished"] += 1
        log.warning("reconcile: job %s (%s, portal %s) had no message in the broker; published again",
                    job_id, kind.name, portal)  # fmt: skip
    return done


def _reconcile_loop() -> None:
    from workers.runtime import get_runtime

    owner = uuid.uuid4().hex
    while True:
        rt = get_runtime()
        interval = rt.settings.reconcile_interval
        time.sleep(interval * random.uniform(0.8, 1.2))
        try:
            # one worker of the pool per interval (the lock expires; it is never released early)
            if rt.redis.set(f"{rt.settings.key_prefix}:lock:reconcile", owner, nx=True, px=int(interval * 1000)):
                reconcile(rt)
        except Exception:
            log.exception("reconcile: round failed; next round in %.0f s", interval)


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    from workers.runtime import get_runtime

    if get_runtime().settings.reconcile_interval > 0:
        threading.Thread(target=_reconcile_loop, name="b24q-reconciler", daemon=True).start()


# --- secrets out of logs (docs/reliability.md) ----------------------------------------------------------
# Why this is here: tests/integration/test_secrets.py ran workers at DEBUG and found the client_secret,
# a refresh token and a webhook's secret code in the logs: httpx logs every request's full URL at INFO,
# and the OAuth refresh (a GET, as Bitrix24 documents it) carries client_secret and refresh_token in its
# query, a webhook URL its code in its path. httpx's request lines are turned off (b24q's observer hooks
# report every request without URLs), and every handler of the root logger masks such URL parts in
# whatever else might log one.

_SECRET_PARAM = re.compile(
    r"((?:client_secret|refresh_token|access_token|auth|password|code)(?:=|%3D))[^&\s\"'<>]+", re.IGNORECASE
)
_WEBHOOK_PATH = re.compile(r"(/rest/\d+/)[^/\s\"'<>?]+")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """`text` with secret query parameters, webhook codes and URL passwords masked."""
    text = _SECRET_PARAM.sub(rf"\g<1>{MASK}", text)
    text = _WEBHOOK_PATH.sub(rf"\g<1>{MASK}", text)
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)


class RedactSecrets(logging.Filter):
    """A handler filter: the message (with its arguments) and any traceback text are redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


logging.getLogger("httpx").setLevel(logging.WARNING)


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add `RedactSecrets` to every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_worker_logs(logger: Any = None, **_: Any) -> None:
    install_redaction(logger)
    install_redaction()


# observability: masked job arguments for Flower (before_task_publish), Prometheus metrics in workers (worker_init)
from workers import masking, metrics  # noqa: E402, F401
