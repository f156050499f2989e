"""Celery's settings for b24q: the reliability baseline of celery-redis-notes.md §8, built from `Settings`.

`workers.celery` hands `CeleryConfig` to its app; the top-level `celeryconfig` module is the same settings for
tools that read a configuration module. One place configures everything: the environment / .env.
"""

import ssl
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs, urlsplit

from workers import rabbitmq
from workers.keys import PRIORITY_STEPS
from workers.redisurl import broker_options
from workers.settings import Settings


def _restore_interval(visibility_timeout: int) -> int:
    """Seconds between sweeps that put messages of dead workers back in the queue.

    kombu (5.7) restores an unacked message only when a live worker's sweep finds it older than
    `visibility_timeout`; the sweep runs at worker start and then every `unacked_restore_interval` s,
    but scans only every `unacked_restore_throttle`-th time (defaults 10 and 10: every ~100 s). b24q
    scans at every sweep, about five times per visibility timeout (at least every 1 s, at most every
    10 s), so a job of a killed worker comes back within ~1.2x visibility_timeout.
    """
    return max(1, min(10, visibility_timeout // 5))


def _tls_options(url: str) -> dict[str, Any] | None:
    """For rediss:// URLs, verify the server's certificate unless the URL says otherwise.

    kombu falls back on CERT_NONE (no verification, a warning in the log) when a rediss:// broker URL
    carries no ssl options; redis-py (the limiter, the ledger, tokens) verifies by default. One policy
    for both: verify, with `ssl_ca_certs` / `ssl_certfile` / `ssl_keyfile` / `ssl_cert_reqs` taken
    from the URL's query (`rediss://:pw@host:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem`).
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = {k: v[0] for k, v in parse_qs(parts.query).items() if v}
    reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(
        query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_"), ssl.CERT_REQUIRED
    )
    options: dict[str, Any] = {"ssl_cert_reqs": reqs}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if key in query:
            options[key] = query[key]
    return options


def _broker(_s: Settings) -> dict[str, Any]:
    """Where the messages live: the Redis of the state (kombu's Redis transport, hardened by b24q), or RabbitMQ."""
    if _s.on_rabbitmq:
        return dict(
            broker_url=_s.broker_url,
            # publish returns only once RabbitMQ has taken the message (publisher confirms): an enqueue the
            # producer saw succeed is on the broker (tests/faults/test_rabbitmq.py cuts the connection after it)
            broker_transport_options={"confirm_publish": True},
            broker_use_ssl=_s.broker_url.startswith("amqps://"),
            # durable quorum queues, two lanes and a dead-letter queue (workers.rabbitmq)
            task_queues=rabbitmq.task_queues(_s.queue, _s.broker_delivery_limit),
            task_default_exchange=_s.queue,
            task_default_exchange_type="topic",
            task_default_routing_key=_s.queue,
            # countdown retries wait in RabbitMQ's delay queues (kombu's native delayed delivery), not in a
            # worker's memory: a worker's death does not touch them
            broker_native_delayed_delivery_queue_type="quorum",
            # a frozen worker (SIGSTOP, a host that vanished) holds its unacknowledged jobs until RabbitMQ closes
            # its connection, after two to three missed heartbeats: seconds here, not Celery's default 120 s
            # (tests/faults/test_dead_workers.py freezes a worker)
            broker_heartbeat=_s.broker_heartbeat,
            # the remote-control queues (`celery inspect`, `b24q status`, Flower) are exclusive and named after
            # the worker's hostname and this exchange: named after B24Q_QUEUE, two pools (or test runs) that share
            # a vhost do not take each other's (Celery's default, "celery", made a second w1@host fail to start)
            control_exchange=_s.queue,
        )
    return dict(
        broker_url=_s.redis_url,
        broker_transport_options={
            # must exceed the longest countdown (backoff_max) plus the longest job run, or a scheduled
            # retry is redelivered while it waits (Celery's Redis caveat)
            "visibility_timeout": _s.visibility_timeout,
            # fresh jobs (priority 0) pass the bulk lane (retries, portals with a deep backlog)
            "queue_order_strategy": "priority",
            "priority_steps": list(PRIORITY_STEPS),
            # redeliver a dead worker's jobs promptly (kombu's default scan is every ~100 s)
            "unacked_restore_interval": _restore_interval(_s.visibility_timeout),
            "unacked_restore_throttle": 1,
            # a sweep holds a Redis mutex (300 s by default); a worker killed mid-sweep would block every
            # sweep that long. Sweeps take milliseconds and restores are transactional, so a shorter expiry
            # is safe (tests/faults/test_worker_kill.py kills workers while they sweep every 2 s)
            "unacked_mutex_expire": max(10, min(300, _s.visibility_timeout)),
            # each job thread acknowledges its own message through the consumer channel's connection pool, which
            # kombu caps at 10 (redis-py refuses an 11th at once: "Too many connections")
            "max_connections": _s.worker_concurrency + 16,
            **broker_options(_s.redis_url, _s.redis_sentinel_master, _s.redis_sentinel_password.get_secret_value()),
        },
        broker_use_ssl=_tls_options(_s.redis_url) or False,
        task_default_priority=0,
        # Celery's defaults, spelled out so that `workers.celery.configure` can point a process back at Redis
        task_queues=None,
        task_default_exchange=None,
        task_default_exchange_type="direct",
        task_default_routing_key=None,
    )


def build(_s: Settings) -> dict[str, Any]:
    """The Celery settings for a b24q `Settings` (also used to re-point a producer in tests)."""
    return dict(
        **_broker(_s),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep reconnecting through a broker restart
        # JSON only: any Celery-protocol client can produce, and nothing executable crosses the wire
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # at-least-once: acknowledge after the job's outcome; requeue when a worker dies mid-job
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure=True,
        task_acks_on_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # outcomes live in the job ledger, not in a result backend
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue=_s.queue,
        # I/O-bound work: threads share one dispatcher per process, so concurrent jobs pack into batches
        worker_pool="threads",
        worker_concurrency=_s.worker_concurrency,
        # Flower and `b24q status`
        worker_send_task_events=_s.task_events,  # Flower enables them on its own while it runs
        # task-sent events would double the cost of every enqueue; Flower lists jobs from task-received
        task_send_sent_event=False,
        task_track_started=True,
        # graceful stop (Celery 5.5+): finish or requeue in-flight jobs on SIGTERM
        worker_soft_shutdown_timeout=10.0,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
        # records messages that cannot be read instead of crashing on them or dropping them
        worker_consumer="workers.broker.consumer:Consumer",
        # the job tasks: what runs them lives in workers/, what they are in tasks/
        include=["tasks.definitions"],
    )


class CeleryConfig(Mapping[str, Any]):
    """The settings Celery reads, built from `Settings` the first time Celery reads one (not at import)."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    @cached_property
    def _built(self) -> dict[str, Any]:
        return build(self._settings())

    def __getitem__(self, key: str) -> Any:
        return self._built[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built)

    def __len__(self) -> int:
        return len(self._built)
