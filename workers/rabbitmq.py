"""b24q's queues on RabbitMQ (B24Q_BROKER_URL=amqp://...): their names, arguments and depths.

Three durable quorum queues per `B24Q_QUEUE` (say `b24q`), all bound to one topic exchange named after it
(kombu's native delayed delivery needs a topic exchange to route a countdown retry back to its queue):

- `b24q`: fresh jobs, resumes and replays (the Redis broker's priority 0);
- `b24q.bulk`: retries and the jobs of a portal with a deep backlog (the Redis broker's priority 6).
  Quorum queues on RabbitMQ 3.10 have no message priorities, so the two lanes are two queues, each with
  its own consumer and prefetch in every worker: the bulk lane can never take a worker's every slot
  from fresh jobs (on Redis, fresh jobs pass bulk ones strictly; here each lane gets its share);
- `b24q.dead`: a message delivered `B24Q_BROKER_DELIVERY_LIMIT` times without an outcome (each worker
  that took it died or stopped) is dead-lettered here by RabbitMQ (at-least-once dead-lettering) and a
  worker records it as the b24q dead letter `DELIVERY_LIMIT` (`workers.broker.consumer`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from amqp import spec
from amqp.exceptions import MessageNacked
from celery.exceptions import Reject
from kombu import Connection, Exchange, Producer, Queue
from kombu.common import maybe_declare

T = TypeVar("T")

#: Priorities the publishers use on Redis at or above which a job goes to the bulk lane here.
BULK_FROM_PRIORITY = 1
#: The dead-letter code of a message RabbitMQ moved aside after too many deliveries.
DELIVERY_LIMIT = "DELIVERY_LIMIT"


def bulk(queue: str) -> str:
    return f"{queue}.bulk"


def dead(queue: str) -> str:
    return f"{queue}.dead"


def names(queue: str) -> tuple[str, str, str]:
    """b24q's queues for `queue`: fresh jobs, the bulk lane, the dead letters."""
    return (queue, bulk(queue), dead(queue))


def lane(queue: str, priority: int) -> str:
    """The queue (and routing key) of a job published with this Redis-broker priority."""
    return bulk(queue) if priority >= BULK_FROM_PRIORITY else queue


def retry_options(queue: str, countdown: float) -> dict[str, Any]:
    """How a retry is published here: to the bulk lane, after a countdown of whole seconds (kombu's delay
    queues count in seconds and refuse a countdown below 1 s, so a shorter one waits 1 s)."""
    return {"queue": bulk(queue), "countdown": max(1, math.ceil(countdown))}


#: How long a job whose run met Redis (or the broker) down keeps its message and tries again in place.
OUTAGE_HOLD = 300.0


def held_through_outages(run: Callable[[], T], hold: float = OUTAGE_HOLD) -> T:
    """Run a job; when the run asks for its message to be requeued (Redis or the broker unavailable: the
    pipeline raises `Reject(requeue=True)`), wait and run it again here, the message still held, for up to
    `hold` seconds before requeueing it after all. RabbitMQ counts every return of a message to its queue
    towards `x-delivery-limit`: requeued at once, a job met Redis down ten times in a fraction of a second
    and ended as the dead letter DELIVERY_LIMIT (tests/faults/test_redis_restart.py)."""
    waited, pause = 0.0, 0.25
    while True:
        try:
            return run()
        except Reject as exc:
            if not exc.requeue or waited >= hold:
                raise
        time.sleep(pause)
        waited += pause
        pause = min(pause * 2, 5.0)


def exchange(queue: str) -> Exchange:
    return Exchange(queue, type="topic", durable=True)


def task_queues(queue: str, delivery_limit: int) -> list[Queue]:
    """The queues a worker consumes and declares (Celery's `task_queues`)."""
    ex = exchange(queue)
    work = {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": ex.name,
        "x-dead-letter-routing-key": dead(queue),
        # at-least-once dead-lettering (a message is never dropped on its way aside) requires reject-publish
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    return [
        Queue(queue, ex, routing_key=queue, durable=True, queue_arguments=work),
        Queue(bulk(queue), ex, routing_key=bulk(queue), durable=True, queue_arguments=work),
        Queue(dead(queue), ex, routing_key=dead(queue), durable=True, queue_arguments={"x-queue-type": "quorum"}),
    ]


def dead_lettered(message: Any, queue: str) -> bool:
    """Whether a delivered message is one RabbitMQ moved to the dead queue (countdown retries carry `x-death`
    too, from the delay queues they expired from: the routing key tells them apart)."""
    info = getattr(message, "delivery_info", None)
    headers = getattr(message, "headers", None)
    return (
        isinstance(info, dict)
        and info.get("routing_key") == dead(queue)
        and isinstance(headers, dict)
        and bool(headers.get("x-death"))
    )


@contextlib.contextmanager
def confirmed(producer: Producer, queues: Iterable[Queue], timeout: float = 30.0) -> Iterator[Producer]:
    """A producer whose publishes RabbitMQ has all confirmed when the block ends, in one wait.

    With `confirm_publish`, py-amqp waits for each message's confirm before the next publish (one round
    trip per message). Inside this block messages go out back to back on a channel of their own, and the
    block ends only once RabbitMQ has confirmed every one of them (a negative confirm, a closed connection
    or the timeout raises): the same guarantee, for a whole batch at once. b24q's exchange, queues and
    bindings are declared first (once per connection): RabbitMQ drops, and confirms, a message no binding
    routes.
    """
    channel = _fresh_channel(producer.connection)
    confirms = _Confirms()
    publish = channel._basic_publish

    def publish_unconfirmed(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("confirm_timeout", None)
        result = publish(*args, **kwargs)
        confirms.sent += 1  # confirm mode numbers a channel's publishes 1, 2, ...
        return result

    try:
        for queue in queues:
            maybe_declare(queue, channel)
        # py-amqp reads what has arrived before each publish (to see connection.blocked in time), and hands the
        # confirms it finds to these listeners: they must be in place before the first publish
        channel.events["basic_ack"].add(confirms.ack)
        channel.events["basic_nack"].add(confirms.nack)
        channel.confirm_select()
        channel.basic_publish = publish_unconfirmed
        yield Producer(channel, exchange=producer.exchange, serializer=producer.serializer)
        confirms.wait(channel.connection, timeout)
    finally:
        with contextlib.suppress(Exception):
            channel.close()


class _Confirms:
    """The publisher confirms of one channel: publishes 1..sent, and which of them RabbitMQ has acknowledged
    (singly, or all up to a tag; in any order)."""

    def __init__(self) -> None:
        self.sent = 0
        self.confirmed_through = 0
        self.confirmed: set[int] = set()
        self.refused: list[int] = []

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self.confirmed_through = max(self.confirmed_through, delivery_tag)
        else:
            self.confirmed.add(delivery_tag)

    def nack(self, delivery_tag: int, multiple: bool) -> None:
        self.refused.append(delivery_tag)

    def done(self) -> bool:
        if self.refused:
            raise MessageNacked(f"RabbitMQ refused message(s) {self.refused[:5]} of this batch")
        if self.confirmed_through >= self.sent:
            return True
        return all(tag in self.confirmed for tag in range(self.confirmed_through + 1, self.sent + 1))

    def wait(self, connection: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"RabbitMQ did not confirm this batch's messages in {timeout} s")
            connection.drain_events(timeout=left)


#: Seconds RabbitMQ has to answer a channel's opening before its connection is taken for dead.
CHANNEL_OPEN_TIMEOUT = 10.0


def _fresh_channel(connection: Connection, timeout: float = CHANNEL_OPEN_TIMEOUT) -> Any:
    """A new channel on the pooled connection, or on a new connection when that one has died (the broker
    restarted or cut it, or no longer answers): nothing is published yet, so trying again is safe, and a
    producer recovers by itself instead of failing on a dead socket until its process restarts."""
    try:
        if connection.connected:  # (False once the pool closed it after an error, or py-amqp dropped it)
            return open_channel(connection, timeout)
    except (*connection.connection_errors, OSError):
        pass  # a socket that died unnoticed (found out on the first write), or a broker that stays silent
    with contextlib.suppress(Exception):
        connection.collect()
    connection.connect()
    return open_channel(connection, timeout)


def open_channel(connection: Connection, timeout: float = CHANNEL_OPEN_TIMEOUT) -> Any:
    """A new channel, or `TimeoutError` when RabbitMQ has not answered its opening within `timeout` s.

    py-amqp waits for channel.open-ok with no bound: on a connection RabbitMQ no longer answers (a peer that
    vanished without a reset, a frozen broker) an enqueue would hang for good. Producer connections carry no
    AMQP heartbeats to find that out, and a socket timeout alone restarts with every frame that does arrive,
    so the wait here is one deadline over the frames read.
    """
    raw = connection.connection  # py-amqp's (connected by kombu if need be)
    channel = raw.Channel(raw)  # kombu's channel class, registered with the connection, not yet open
    channel.send_method(spec.Channel.Open, "s", ("",))
    deadline = time.monotonic() + timeout
    while not channel.is_open:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"RabbitMQ did not open a channel in {timeout} s")
        raw.blocking_read(left)
    return channel


def depths(url: str, queue: str) -> dict[str, int | None]:
    """Messages ready in each of b24q's queues (None: the queue does not exist yet)."""
    out: dict[str, int | None] = {}
    with Connection(url, connect_timeout=5) as conn:
        for name in names(queue):
            channel = open_channel(conn)
            try:
                out[name] = int(channel.queue_declare(name, passive=True).message_count)
            except conn.channel_errors:
                out[name] = None  # a passive declare of a missing queue closes the channel
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return out


def delete(url: str, queue: str) -> None:
    """Delete b24q's queues and exchange for `queue` (test runs clean up their namespace with it)."""
    with Connection(url, connect_timeout=5) as conn:
        for name in names(queue):
            channel = conn.channel()
            with contextlib.suppress(*conn.channel_errors):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.close()
        channel = conn.channel()
        with contextlib.suppress(*conn.channel_errors):
            channel.exchange_delete(queue)
        with contextlib.suppress(Exception):
            channel.close()
