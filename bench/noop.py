"""Celery's own floor on a broker: a no-op task run the way b24q runs its jobs (threads pool, late acks,
prefetch 1, JSON), on Redis or on RabbitMQ (a durable quorum queue, as b24q declares its own).

`celery -A bench.noop worker --pool threads -c 64 -Q $NOOP_QUEUE` with `NOOP_BROKER_URL` (a redis:// or amqp://
URL), `NOOP_QUEUE` and `NOOP_COUNTER_URL` (the Redis that counts what ran). It imports nothing from b24q.
The task counts in memory; a thread adds the count to Redis every 50 ms, so the count costs the floor a few
Redis calls a second, not one per message, and any number of worker processes add up.
"""

from __future__ import annotations

import os
import threading
import time

import redis
from celery import Celery
from kombu import Queue

BROKER = os.environ.get("NOOP_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("NOOP_QUEUE", "noop")
COUNTER = "bench:noop:done"
STEP = 100  # messages run before the clock starts (the workers' start-up, connections)
FLUSH_EVERY = 0.05

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

_done = 0  # messages run since the last flush
_lock = threading.Lock()
_counter = redis.Redis.from_url(os.environ.get("NOOP_COUNTER_URL", "redis://127.0.0.1:6379/0"))


def _flush() -> None:
    """Add what ran to the shared count every 50 ms: a Redis call per flush, not per message (~20 a second per
    worker, whatever the load: a few microseconds per message at the loads measured)."""
    global _done
    while True:
        time.sleep(FLUSH_EVERY)
        with _lock:
            done, _done = _done, 0
        if done:
            _counter.incrby(COUNTER, done)


threading.Thread(target=_flush, name="noop-count", daemon=True).start()


@app.task(name="noop.noop")
def noop(params: dict[str, object]) -> None:
    global _done
    with _lock:
        _done += 1
