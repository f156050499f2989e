"""The outcome recorder: every end of a job (applied, superseded, parked, dead) and every retry, recorded one way.

Each method owns all of an outcome's records: the ledger write, the dead letter or the parking entry, the
event for the observers (`workers.events`: the metrics) and, for a dead letter, the log line. Callers decide
(`workers.retries`) and apply; they never write an outcome's records themselves: the pipeline, the lifecycle's
end of parked jobs, the consumer's delivery limit and the reconciler's lost messages all come here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from workers.events import events
from workers.records.deadletters import DeadLetters
from workers.records.ledger import Ledger
from workers.records.parking import Parking
from workers.retries import DeadLetter, RetryAfter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRef:
    """Which job an outcome is of: its id, its kind's name and Celery task, its portal's registry key."""

    id: str
    kind: str
    task: str
    portal: str


class Outcomes:
    def __init__(self, ledger: Ledger, dead: DeadLetters, parking: Parking) -> None:
        self._ledger = ledger
        self._dead = dead
        self._parking = parking

    def applied(self, job: JobRef, latency: float, recorded: bool = False) -> None:
        """`recorded`: the ledger says so already (the lane that sent the job's call wrote it)."""
        if not recorded:
            self._ledger.finish(job.id, job.portal, "applied")
        events.job_finished(job.kind, job.portal, "applied", latency)

    def superseded(self, job: JobRef, by: str, latency: float) -> None:
        """Not sent: the newer job `by` has this portal state (`workers.delivery.ordering`)."""
        self._ledger.finish(job.id, job.portal, "superseded", by=by)
        events.job_finished(job.kind, job.portal, "superseded", latency)

    def retrying(self, job: JobRef, retry: RetryAfter) -> None:
        """A retry is scheduled: `deferred` (flow control) or `retrying` (a transient failure)."""
        detail: dict[str, Any] = {} if retry.failures is None else {"failures": retry.failures}
        self._ledger.note(job.id, retry.status, retry.error, **detail, countdown=round(retry.delay, 2))
        events.job_retried(job.kind, job.portal, retry.reason, retry.code)

    def park(self, job: JobRef, kwargs: dict[str, Any]) -> None:
        """Keep the job, to be resumed when its portal is re-authorised; `parked` once it stays so."""
        self._parking.park(job.portal, job.id, job.task, kwargs)

    def unpark(self, job: JobRef) -> None:
        """Forget a job `park` kept: its portal changed while it was being parked."""
        self._parking.release(job.portal, job.id)

    def parked(self, job: JobRef, reason: str, latency: float) -> None:
        self._ledger.finish(job.id, job.portal, "parked", reason)
        events.parked(job.portal)
        events.job_finished(job.kind, job.portal, "parked", latency)

    def dead(self, job: JobRef, kwargs: dict[str, Any], letter: DeadLetter, runs: int, latency: float) -> None:
        """The job ends in the dead letters (after `runs` runs), with its reason."""
        self._dead.add(job.id, job.task, job.kind, job.portal, kwargs, letter.code, letter.description, runs)
        self._ledger.finish(job.id, job.portal, "dead", f"{letter.code}: {letter.description}")
        events.dead_letter(job.kind, job.portal, letter.code)
        events.job_finished(job.kind, job.portal, "dead", latency)
        log.warning("job %s (%s, portal %s) dead-lettered: %s", job.id, job.kind, job.portal, letter.code)

    def dead_while_parked(self, job: JobRef, kwargs: dict[str, Any], letter: DeadLetter) -> None:
        """A parked job ends in the dead letters (its portal was uninstalled). It finished already, as
        parked, for the observers: this is one dead letter more, not one more finished job."""
        self._dead.add(job.id, job.task, job.kind, job.portal, kwargs, letter.code, letter.description, 0)
        self._ledger.finish(job.id, job.portal, "dead", letter.code)
        self._parking.release(job.portal, job.id)
        events.dead_letter(job.kind, job.portal, letter.code)

    def unrun(self, job: JobRef, kwargs: dict[str, Any], letter: DeadLetter, runs: int) -> None:
        """A job no run could end: the broker moved its message aside (the delivery limit) or lost it (the
        reconciler's finding). The dead letter, replayable, and the ledger's end; no run was there to time."""
        self._dead.add(job.id, job.task, job.kind, job.portal, kwargs, letter.code, letter.description, runs)
        self._ledger.finish(job.id, job.portal, "dead", f"{letter.code}: {letter.description}")
        events.dead_letter(job.kind, job.portal, letter.code)
        log.error("job %s (task %s) recorded as dead letter %s: %s", job.id, job.task, letter.code, letter.description)

    def crashed(self, job: JobRef, kwargs: dict[str, Any], error: BaseException) -> None:
        """An unexpected error ended the job: the dead letter `INTERNAL_ERROR`, seen and replayable, with the
        traceback in the log (call it while handling `error`)."""
        log.exception("job %s: unexpected error", job.id)
        description = f"{type(error).__name__}: {error}"[:2000]
        self._dead.add(job.id, job.task, job.kind, job.portal, kwargs, "INTERNAL_ERROR", description, 0)
        self._ledger.finish(job.id, job.portal, "dead", "INTERNAL_ERROR")
