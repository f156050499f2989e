"""The naive baseline: the Celery app a team typically writes first, to compare b24q against.

One plain task per job that POSTs the job's single REST call with httpx (the token in `auth`),
Celery's per-worker `rate_limit` set to the portal's rate, default (early) acks, no retries, no
batching. Run it as `celery -A bench.naive worker --pool threads -c 8 -Q naive` on the same broker as
the stack: its Redis (`B24Q_REDIS_URL`), or `NAIVE_BROKER_URL` (RabbitMQ: a quorum queue `NAIVE_QUEUE`, as
b24q declares its own); `NAIVE_RATE_LIMIT` sets the rate limit ("2/s"; empty for none); `NAIVE_ACKS_LATE=1`
acknowledges each message after its call (prefetch 1), as b24q does.

It deliberately imports nothing from b24q. The only additions are the signal handlers at the
bottom, which count outcomes in Redis so the benchmark knows when the run is over; the task itself
does not see them. It does share one pooled `httpx.Client` per process (the kinder baseline: a
fresh connection per call would make it slower still).
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import redis
from celery import Celery
from celery.signals import task_failure, task_postrun, task_success
from kombu import Queue

QUEUE = os.environ.get("NAIVE_QUEUE", "naive")
#: Redis hash the signal handlers count outcomes in: ok, failed, last (time of the last outcome).
OUTCOMES = "bench:naive:outcomes"
#: Redis list of seconds from enqueue to the task's end, for messages sent with a `sent_at` header.
LATENCIES = "bench:naive:latencies"

#: Where the outcomes are counted: the stack's Redis, whichever broker carries the messages.
COUNTING_URL = os.environ.get("B24Q_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL") or COUNTING_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
if os.environ.get("NAIVE_ACKS_LATE"):  # acknowledged after the call, as b24q's jobs are: a dead worker loses none
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)


def _declare(broker_url: str, queue: str) -> None:
    if broker_url.startswith("amqp"):
        app.conf.task_queues = [Queue(queue, durable=True, queue_arguments={"x-queue-type": "quorum"})]
        app.conf.broker_transport_options = {"confirm_publish": True}
    else:
        app.conf.task_queues = None
        app.conf.broker_transport_options = {}


_declare(app.conf.broker_url, QUEUE)

http = httpx.Client(timeout=30)


@app.task(name="naive.call", rate_limit=os.environ.get("NAIVE_RATE_LIMIT") or None)
def call(url: str, params: dict[str, Any], token: str) -> Any:
    """POST one REST call; a refusal (503 QUERY_LIMIT_EXCEEDED, ...) fails the task."""
    response = http.post(url, json={**params, "auth": token})
    response.raise_for_status()
    return response.json()["result"]


@app.task(name="naive.noop", acks_late=True)
def noop(params: dict[str, Any]) -> None:
    """Nothing: what Celery itself costs per message (decode, thread pool, late ack), a floor for any
    design in which each job is its own Celery task acknowledged after its outcome (b24q's)."""


@app.task(name="naive.noop_early")
def noop_early(params: dict[str, Any]) -> None:
    """`noop` acknowledged when it is received (Celery's default): the floor of a design that does not hold a
    job's message until its outcome."""


def broker_of(settings: Any) -> tuple[str, str]:
    """The broker URL and queue the naive workers of a b24q stack use: the stack's broker (`Settings`)."""
    if settings.on_rabbitmq:
        return settings.broker_url, f"{settings.queue}.naive"
    return settings.redis_url, "naive"


def configure(broker_url: str, queue: str = "naive") -> None:
    """Point this (producer) process's naive app at a stack's broker and queue."""
    global QUEUE
    QUEUE = queue
    app.conf.broker_url = broker_url
    _declare(broker_url, queue)
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    app.__dict__.pop("amqp", None)  # its queues are cached from the old broker's settings


# --- measurement only ---------------------------------------------------------------------------

_redis: redis.Redis | None = None


def _count(outcome: str) -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(COUNTING_URL)
    pipe = _redis.pipeline(transaction=False)
    pipe.hincrby(OUTCOMES, outcome, 1)
    pipe.hset(OUTCOMES, "last", repr(time.time()))
    pipe.execute()


@task_success.connect(sender=call)
def _on_success(**_: Any) -> None:
    _count("ok")


@task_failure.connect(sender=call)
def _on_failure(**_: Any) -> None:
    _count("failed")


@task_postrun.connect(sender=call)
def _on_done(task: Any = None, **_: Any) -> None:
    sent_at = task.request.get("sent_at") if task is not None else None
    if sent_at and _redis is not None:
        _redis.rpush(LATENCIES, repr(time.time() - float(sent_at)))
