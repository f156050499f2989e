"""The Celery tasks: one per job kind, all running the same pipeline; what a worker loads.

Task names are stable (`b24q.status_update`, `b24q.delivery_confirmation`, `b24q.sender_update`,
`b24q.sender_add`, `b24q.mark_unread`) and take the job's fields as JSON kwargs, so any Celery-protocol client can
produce them. Nothing secret is ever in a message: jobs name a portal, never a token.

A worker also runs the lost-message reconciler (`workers.broker.reconcile`), which publishes lost jobs
again through the producer's own publishing path (`tasks.publishing.republish`).
"""

from __future__ import annotations

from typing import Any, NoReturn

from celery import Task
from celery.signals import worker_ready

from tasks.jobs import KINDS, JobKind
from tasks.publishing import republish
from workers import rabbitmq
from workers.broker import reconcile
from workers.celery import app
from workers.pipeline import run_job
from workers.retries import RETRY_PRIORITY
from workers.runtime import get_runtime


def _define(kind: JobKind) -> Task:
    @app.task(name=kind.task_name, bind=True, max_retries=None, acks_late=True)
    def job(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        def retry(countdown: float, exc: BaseException) -> NoReturn:
            settings = get_runtime().settings
            if settings.on_rabbitmq:
                raise self.retry(exc=exc, max_retries=None, **rabbitmq.retry_options(settings.queue, countdown))
            raise self.retry(countdown=countdown, exc=exc, max_retries=None, priority=RETRY_PRIORITY)

        def run() -> dict[str, Any]:
            return run_job(
                kind, self.request.id, args, kwargs, get_runtime().job_services, retry, self.request.hostname or ""
            )

        return rabbitmq.held_through_outages(run) if get_runtime().settings.on_rabbitmq else run()

    job.__doc__ = f"{kind.name}: {kind.method} ({kind.model.__doc__})"
    return job


TASKS: dict[str, Task] = {kind.name: _define(kind) for kind in KINDS.values()}
status_update = TASKS["status-update"]
delivery_confirmation = TASKS["delivery-confirmation"]
sender_update = TASKS["sender-update"]
sender_add = TASKS["sender-add"]
mark_unread = TASKS["mark-unread"]


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    reconcile.start(republish)
