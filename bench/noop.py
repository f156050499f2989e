"""Celery's own floor on a broker: a no-op task run the way b24q runs its jobs (threads pool, late acks,
prefetch 1, JSON), on Redis or on RabbitMQ (a durable quorum queue, as b24q declares its own).

`celery -A bench.noop worker --pool threads -c 64 -Q $NOOP_QUEUE` with `NOOP_BROKER_URL` (a redis:// or amqp://
URL), `NOOP_QUEUE` and `NOOP_COUNTER_URL` (the Redis that counts what ran). It imports nothing from b24q.
The task counts in memory and writes the count to Redis once per `STEP` tasks, so the count costs the floor a
Redis call per hundred messages, not one per message.
"""

from __future__ import annotations

import itertools
import os
import threading

import redis
from celery import Celery
from kombu import Queue

BROKER = os.environ.get("NOOP_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("NOOP_QUEUE", "noop")
COUNTER = "bench:noop:done"
STEP = 100

app = Celery("noop", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
if BROKER.startswith("amqp"):
    app.conf.task_queues = [Queue(QUEUE, durable=True, queue_arguments={"x-queue-type": "quorum"})]
    app.conf.broker_transport_options = {"confirm_publish": True}

_done = itertools.count(1)
_lock = threading.Lock()
_counter = redis.Redis.from_url(os.environ.get("NOOP_COUNTER_URL", "redis://127.0.0.1:6379/0"))


@app.task(name="noop.noop")
def noop(params: dict[str, object]) -> None:
    with _lock:
        n = next(_done)
    if n % STEP == 0:
        _counter.incrby(COUNTER, STEP)
