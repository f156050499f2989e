"""The one way a job's message enters the broker: its ledger record first, then the Celery message.

Every path that publishes a job goes through `publish`: first enqueues (`tasks.producer`), resumes of
parked jobs, replays of dead letters, and the reconciler's republishing of a message the broker lost
(`republish`, handed to `workers.broker.reconcile` by `tasks.definitions`). Messages are Celery's own
(protocol 2, JSON kwargs, the task name of the job kind), so Flower and any Celery worker read them;
their `argsrepr`/`kwargsrepr` headers are masked at publish time (`workers.redaction`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tasks.jobs import KINDS, JobKind
from workers import rabbitmq, redaction
from workers.celery import app
from workers.delivery.ordering import Stamped
from workers.retries import PRIORITY_BULK, PRIORITY_NORMAL
from workers.runtime import Runtime
from workers.settings import Settings

#: A portal with more unfinished jobs than this goes to the bulk lane, so other portals pass it.
FAIR_BACKLOG = 200


def publish(rt: Runtime, jobs: list[tuple[JobKind, dict[str, Any], str]], requeue_why: str = "") -> list[str]:
    """Record the jobs in the ledger, then publish them (one Redis pipeline, one broker connection).

    A portal whose backlog is deep goes to the bulk lane so other portals' jobs pass it. `requeue_why`
    marks jobs that existed before (resumed, replayed): their records are reopened, not created, and keep
    their order version. New jobs get theirs in the same transaction as their records.
    """
    portals = list(dict.fromkeys(kwargs["portal"] for _, kwargs, _ in jobs))
    stamps: dict[str, list[Stamped]] = {}
    pipe = rt.redis.pipeline(transaction=True)
    for portal in portals:  # the backlogs as they were before these jobs, read in the same round trip
        rt.ledger.read_backlog(portal, pipe)
    for k, kwargs, job_id in jobs:
        portal = kwargs["portal"]
        # the kwargs stay in the ledger until the job finishes: a message the broker loses is published
        # again from them (workers.broker.reconcile)
        if requeue_why:
            rt.ledger.requeued(job_id, portal, requeue_why, pipe, payload=kwargs)
        else:
            rt.ledger.enqueued(job_id, k.name, portal, pipe, payload=kwargs)
            if k.order is not None:
                rank = k.order.rank(kwargs) if rt.settings.status_ranks else 0
                stamps.setdefault(portal, []).append((job_id, rank, kwargs.get("at"), k.order.keys(kwargs)))
    rt.ordering.queue_stamps(pipe, stamps)
    replies = pipe.execute()
    backlog = {portal: int(raw or 0) for portal, raw in zip(portals, replies, strict=False)}
    priorities = []
    for _, kwargs, _ in jobs:
        priorities.append(PRIORITY_NORMAL if backlog[kwargs["portal"]] < FAIR_BACKLOG else PRIORITY_BULK)
        backlog[kwargs["portal"]] += 1
    published: list[str] = []
    try:
        with app.producer_or_acquire() as producer, _batch(producer, rt.settings, len(jobs)) as sender:
            for (k, kwargs, job_id), priority in zip(jobs, priorities, strict=True):
                _send(k, kwargs, job_id, priority, rt.settings, sender)
        published = [job_id for _, _, job_id in jobs]
    except Exception:
        # the caller learns the enqueue failed (Redis down), so the records of jobs not published are
        # rolled back rather than left `queued` forever; best effort, Redis may still be down
        if not requeue_why:
            done = set(published)
            for _, kwargs, job_id in jobs:
                if job_id not in done:
                    with contextlib.suppress(Exception):
                        rt.ledger.unpublished(job_id, kwargs["portal"])
        raise
    # an enqueue is acknowledged only once the reconciler watches its jobs: if this fails (Redis gone
    # between the messages and here), the caller hears of it, though the messages may still be delivered
    # (a retry by the caller then delivers a job twice, which every kind tolerates)
    rt.ledger.mark_open(published)
    return published


@contextlib.contextmanager
def _batch(producer: Any, settings: Settings, size: int) -> Iterator[Any]:
    """The producer a batch of `size` messages goes through. Celery builds each message as always (protocol
    2, headers, the masking hook); on Redis kombu's publish batch writes them in one pipelined round trip
    per 1000; on RabbitMQ they go out back to back and the batch ends once RabbitMQ confirmed them all."""
    if settings.on_rabbitmq:
        with rabbitmq.confirmed(producer, app.amqp.queues.values()) as sender:
            yield sender
    else:
        with producer.batch(max_size=1000) if size > 1 else contextlib.nullcontext():
            yield producer


def republish(rt: Runtime, kind: str, job_id: str, kwargs: dict[str, Any]) -> str | None:
    """Publish a lost job's message again under its id (the reconciler's `Republish`); its task name, or
    None for a kind this version does not know."""
    k = KINDS.get(kind)
    if k is None:
        return None
    with app.producer_or_acquire() as producer, _batch(producer, rt.settings, 1) as sender:
        _send(k, kwargs, job_id, PRIORITY_NORMAL, rt.settings, sender)
    return k.task_name


def _send(kind: JobKind, kwargs: dict[str, Any], job_id: str, priority: int, settings: Settings, producer: Any) -> None:
    """Publish one job's message: built by Celery's own protocol-2 builder (`as_task_v2`: the headers and
    body any Celery worker and Flower read), with the masked summaries Flower shows (`workers.redaction`),
    and handed to kombu for the queue (through the batch `_batch` opened). `send_task` would do the same
    with routing and option merging that b24q does not use, at three times the cost per message; it also
    fires Celery's publish signals, which b24q's own publishing does not need."""
    message = app.amqp.as_task_v2(
        job_id,
        kind.task_name,
        args=(),
        kwargs=kwargs,
        argsrepr=redaction.argsrepr(()),
        kwargsrepr=redaction.kwargsrepr(kwargs),
    )
    queue = settings.queue
    if settings.on_rabbitmq:  # the lane is a queue of its own, behind b24q's topic exchange
        route = {"exchange": queue, "routing_key": rabbitmq.lane(queue, priority), "delivery_mode": 2}
    else:  # Redis: the default exchange (routing_key names the queue, as send_task's), the lane a priority
        route = {"exchange": "", "routing_key": queue, "priority": priority}
    producer.publish(
        message.body, serializer="json", headers=message.headers, retry=False, **route, **message.properties
    )
