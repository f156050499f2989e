"""The Celery application (`celery -A workers worker` finds it here) and what it does at Celery's signals.

The job tasks are defined in `tasks.definitions`, which `workers.broker.configuration` names in `include`: what runs
jobs lives in workers/, what the jobs are lives in tasks/. Each signal handler below is one line that
hands over to the module owning the concern.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    celeryd_init,
    task_internal_error,
    task_rejected,
    task_unknown,
    worker_init,
    worker_ready,
    worker_shutdown,
)

from workers import redaction
from workers.broker import configuration, consumer, recovery, unacked
from workers.observe import exposition, logs
from workers.runtime import get_runtime
from workers.settings import Settings, get_settings

app = Celery("b24q")
app.config_from_object(configuration.CeleryConfig(get_settings))


def configure(settings: Settings) -> None:
    """Point this process's Celery app at another `Settings` (a producer in tests and the demo)."""
    from kombu import pools

    app.conf.update(configuration.build(settings))
    if app._pool is not None:  # drop connections to the old broker
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    app.__dict__.pop("amqp", None)  # its queues and router are cached from the old broker's settings
    # `app.pool` is kombu's process-wide pool for this broker URL: without a reset, the closed pool came
    # back on the next publish to the same URL ("Acquire on closed pool")
    pools.reset()


# messages that never become a job are kept as dead letters, and none stops a worker
consumer.harden_redis_transport()
# kombu's bookkeeping of the messages a worker holds, on Redis: the same transactions, in lean round trips
unacked.lean_unacked_writes()
task_unknown.connect(consumer.record_unknown_task, weak=False)
task_rejected.connect(consumer.record_rejected, weak=False)
task_internal_error.connect(consumer.record_internal_error, weak=False)

# what Flower shows of a job's arguments: a masked summary
before_task_publish.connect(redaction.mask_published_arguments, weak=False)

# httpx logs every request's full URL at INFO (the OAuth refresh carries secrets in its query); b24q's
# observer hooks report every request without URLs
logging.getLogger("httpx").setLevel(logging.WARNING)


@celeryd_init.connect
def _log_before_celery_does(**_: Any) -> None:
    """What a worker says before Celery sets up its logging (the warning about running as root) is written
    as the rest is; Celery then replaces the root's handlers with its own, formatted below."""
    logging.captureWarnings(True)
    logs.setup(get_settings().log_format)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_worker_logs(logger: Any = None, **_: Any) -> None:
    logs.format_celery_handlers(logger or logging.getLogger(), get_settings().log_format)
    redaction.install_redaction(logger)
    redaction.install_redaction()


@worker_init.connect
def _record_metrics(**_: Any) -> None:
    exposition.install_worker_safely()


def _restore_messages(tags: list[str]) -> None:
    """Put unacknowledged messages back in their queues, as kombu's own visibility-timeout sweep does."""
    with app.connection_for_write() as connection:
        qos = connection.default_channel.qos
        for tag in tags:
            qos.restore_by_tag(tag)


@worker_ready.connect
def _start_recovery(sender: Any = None, **_: Any) -> None:
    """Heartbeat and dead-worker sweep (`workers.broker.recovery`)."""
    recovery.start(sender, get_runtime(), _restore_messages)


@worker_shutdown.connect
def _finish_sending(**_: Any) -> None:
    """After the warm shutdown's own jobs are done: requests on the wire for other workers' jobs finish."""
    get_runtime().finish_sending()
