"""The one job pipeline every job kind runs through:

    validate → admit (may the job go to its portal now?) → order → limit + pack + call (`workers.delivery`)
    → applied or superseded, else what the retry policy decides (`workers.retries`): retry, wait, park or
    dead-letter.

A job kind only declares its model, method, params and merge rule (`tasks.jobs`); nothing here knows
which kind it runs. The pipeline uses the few services it is given (`workers.runtime.JobServices`) and records
every outcome through the outcome recorder (`workers.records.outcomes`). `retry` is injected (Celery's
`Task.retry` in production) so the pipeline can be tested without a broker.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import redis
from celery.exceptions import Reject, TaskPredicate
from kombu.exceptions import OperationalError

from workers import retries
from workers.delivery.calls import Finish, MergeRule
from workers.delivery.ordering import Order, OrderRule, parse_version
from workers.delivery.wire import Look
from workers.errors import Deferred, JobDeadLettered, JobRefused, Superseded
from workers.events import events
from workers.keys import PORTAL_KEY_CHARS, PORTAL_KEY_MAX
from workers.portals.admission import admission
from workers.portals.record import Portal
from workers.portals.registry import PortalRegistry
from workers.records.deadletters import storable
from workers.records.ledger import Run
from workers.records.outcomes import JobRef
from workers.retries import Applied, DeadLetter, Decision, History, Park, Providers, RetryAfter, Wait
from workers.runtime import JobServices

log = logging.getLogger(__name__)


class KindLike(Protocol):
    """What the pipeline needs of a job kind (`tasks.jobs.JobKind`)."""

    @property
    def name(self) -> str: ...
    @property
    def task_name(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def app_only(self) -> bool: ...
    @property
    def merge(self) -> MergeRule | None: ...
    @property
    def order(self) -> OrderRule | None: ...
    @property
    def waits_for_providers(self) -> bool: ...
    @property
    def applied_codes(self) -> frozenset[str]: ...
    @property
    def on_applied(self) -> Callable[[PortalRegistry, str, Any], None] | None: ...

    def applied(self, registry: PortalRegistry, portal: str, job: Any) -> None: ...
    def validate(self, payload: Mapping[str, Any]) -> Any: ...


Retry = Callable[[float, BaseException], NoReturn]

#: What a portal key may look like (`workers.keys`, as `tasks.fields.PortalKey`); anything else is recorded as "?".
_PORTAL_KEY = re.compile(PORTAL_KEY_CHARS)


def _keyable(portal: str) -> bool:
    return len(portal) <= PORTAL_KEY_MAX and _PORTAL_KEY.match(portal) is not None


def _broker_trouble(exc: BaseException) -> bool:
    return isinstance(exc, redis.RedisError | OperationalError | ConnectionError | TimeoutError)


def run_job(
    kind: KindLike,
    job_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    services: JobServices,
    retry: Retry,
    worker: str = "",
) -> dict[str, Any]:
    """Run one job to an outcome. Returns {"outcome": "applied" | "superseded" | "parked"}, raises a retry, or
    raises `JobDeadLettered` after writing the dead letter.

    No exception may end a job without an outcome: with acks_late and task_acks_on_failure, Celery
    acknowledges (deletes) the message of a task that raised anything but a retry or a reject. So Redis
    or broker trouble (a Redis restart mid-job, a retry that cannot be published) requeues the message
    (`Reject(requeue=True)`; if even that cannot reach Redis, it stays unacked and is redelivered after
    visibility_timeout), and any other unexpected error becomes the dead letter `INTERNAL_ERROR`, seen
    and replayable (tests/faults/test_redis_restart.py).
    """
    try:
        return _run_job(kind, job_id, args, kwargs, services, retry, worker)
    except JobDeadLettered:
        raise
    except Reject as exc:
        if not exc.requeue and _broker_trouble(exc.reason if isinstance(exc.reason, BaseException) else exc):
            log.warning("job %s: could not publish its retry (%s); requeued", job_id, exc.reason)
            raise Reject(exc.reason, requeue=True) from None
        raise
    except TaskPredicate:  # Retry, Ignore
        raise
    except Exception as exc:
        if _broker_trouble(exc):
            log.warning("job %s: Redis unavailable (%s: %s); requeued", job_id, type(exc).__name__, exc)
            raise Reject(exc, requeue=True) from None
        portal_key = str(kwargs.get("portal", ""))
        job = JobRef(job_id, kind.name, kind.task_name, portal_key if _keyable(portal_key) else "?")
        try:
            services.outcomes.crashed(job, kwargs, exc)
        except Exception as store_error:
            if _broker_trouble(store_error):
                raise Reject(exc, requeue=True) from None
            raise
        raise JobDeadLettered("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class _Run:
    """One run of one job: what each stage needs."""

    kind: KindLike
    ref: JobRef
    kwargs: dict[str, Any]
    started: Run
    services: JobServices
    retry: Retry

    def latency(self) -> float:
        return time.time() - self.started.created

    def dead(self, letter: DeadLetter) -> NoReturn:
        self.services.outcomes.dead(self.ref, self.kwargs, letter, self.started.runs, self.latency())
        raise JobDeadLettered(letter.code, letter.description)


def _run_job(
    kind: KindLike,
    job_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    services: JobServices,
    retry: Retry,
    worker: str,
) -> dict[str, Any]:
    portal_key = str(kwargs.get("portal", "")) or "?"
    if not _keyable(portal_key):
        # a raw message's `portal` names Redis keys (backlog): refused below, recorded as "?"
        portal_key = "?"
    payload = functools.partial(storable, kwargs)  # kept only for a job no producer recorded
    look = None
    if portal_key == "?":
        portal, started = None, services.ledger.started(job_id, kind.name, portal_key, worker, payload)
    else:
        begun = services.start(job_id, kind.name, kind.method, portal_key, worker, payload)
        portal, started, look = begun.portal, begun.run, begun.look
        if begun.key != portal_key:
            # a raw message may name the portal by an alias (its domain or member_id): every record, lane and
            # limit of the job is the registry key's, as if the producer had resolved it
            portal_key, kwargs = begun.key, {**kwargs, "portal": begun.key}
    events.job_started(kind.name, portal_key)
    run = _Run(kind, JobRef(job_id, kind.name, kind.task_name, portal_key), kwargs, started, services, retry)

    job = _validated(run, args)
    admitted = _admit(run, portal)
    if not isinstance(admitted, Portal):
        return _apply(run, admitted, job, None)
    order = _order(run, job)
    # the lane may record the job applied with the others of its request (a kind that also updates the
    # portal's record on success records its own outcome after that update)
    finish = Finish(run.ref.id, job.check_result) if kind.on_applied is None else None
    try:
        _call(run, job, order, look, finish)
    except Superseded as exc:  # a newer job has this portal state: nothing to send
        services.outcomes.superseded(run.ref, exc.by, run.latency())
        return {"outcome": "superseded", "by": exc.by}
    except Exception as exc:
        return _apply(run, _decide(run, exc), job, exc)
    return _applied(run, job, recorded=finish is not None and finish.done)


def _validated(run: _Run, args: tuple[Any, ...]) -> Any:
    """The job as its kind's model, or the dead letter: bad input, or too old to be worth sending."""
    if args:
        run.dead(DeadLetter("INVALID_PAYLOAD", "positional arguments are not accepted; send the fields as JSON kwargs"))
    try:
        job = run.kind.validate(run.kwargs)
    except JobRefused as exc:
        run.dead(DeadLetter("INVALID_PAYLOAD", str(exc)))
    too_old = retries.too_old(run.latency(), run.services.settings)
    if too_old is not None:
        run.dead(too_old)
    return job


def _admit(run: _Run, portal: Portal | None) -> Portal | DeadLetter | Park | Wait:
    """May the job go to its portal now? The portal if so, else what becomes of the job. The one place the
    pipeline reads a portal's state."""
    kind, key, services = run.kind, run.ref.portal, run.services
    refusal = admission(portal, key, kind.method, kind.app_only)  # as read by `CachedPortals.current`
    if refusal is not None:
        if refusal.park:
            return Park(refusal.description, "the portal waits for re-authorisation")
        return (
            retries.UNINSTALLED if refusal.code == "APP_UNINSTALLED" else DeadLetter(refusal.code, refusal.description)
        )
    assert portal is not None
    if kind.waits_for_providers and portal.providers_pending:
        # as cached (up to a second old): the last provider may be back already, and a wait costs seconds
        portal = services.portals.fresh(key) or portal
        if portal.providers_pending:
            return retries.wait_for_providers(portal.providers_pending, services.settings)
    return portal


def _order(run: _Run, job: Any) -> Order | None:
    """The job's place in its portal state's order: as the producer recorded it, or stamped now for a
    message that bypassed the producer (or whose record was re-created)."""
    if run.kind.order is None:
        return None
    fields = job.model_dump(mode="json", exclude_none=True)
    keys = run.kind.order.keys(fields)
    version = parse_version(run.started.version)
    if version is None:
        rank = run.kind.order.rank(fields) if run.services.settings.status_ranks else 0
        (version,) = run.services.ordering.stamp(run.ref.portal, [(run.ref.id, rank, fields.get("at"), keys)])
    return Order(run.ref.id, version, keys)


def _call(run: _Run, job: Any, order: Order | None, look: Look | None, finish: Finish | None = None) -> None:
    """The job's call, through its portal's lane (limit, pack, token, send); raises what went wrong."""
    services = run.services
    result = services.dispatcher.run(
        run.ref.portal,
        run.kind.method,
        job.params(),
        wait=services.settings.permit_wait,
        merge=run.kind.merge,
        order=order,
        look=look,
        finish=finish,
    )
    job.check_result(result.result)


def _decide(run: _Run, error: Exception) -> Decision:
    """The retry policy's decision, given the facts it asks for: the portal's providers, the failure count."""
    services, kind = run.services, run.kind
    providers = _providers(run) if retries.provider_gone(error, kind) else None
    history = History(run.started.runs)
    if retries.counts_as_failure(error, kind, providers):
        failures = services.ledger.failure(run.ref.id)
        history = History(run.started.runs, failures.count, failures.since)
    return retries.decide(error, kind, history, services.settings, now=time.time(), providers=providers)


def _providers(run: _Run) -> Providers:
    """The portal's SMS providers as they are now (a job's provider is gone: being added again, or not yet)."""
    fresh = run.services.registry.get(run.ref.portal)
    if fresh is None:
        return Providers("", managed=False)
    managed = {str(p.get("code", "")).lower() for p in fresh.provider_list(run.services.settings)}
    return Providers(fresh.providers_pending, str(run.kwargs.get("code", "")).lower() in managed)


def _apply(run: _Run, decision: Decision, job: Any, error: BaseException | None) -> dict[str, Any]:
    """Carry out what the policy decided (a retry raises)."""
    match decision:
        case Applied():
            return _applied(run, job)
        case RetryAfter():
            run.services.outcomes.retrying(run.ref, decision)
            if isinstance(decision, Wait) or error is None:  # nothing failed: the job waits its turn
                run.retry(decision.delay, Deferred(decision.delay, decision.why))
            run.retry(decision.delay, error)
        case Park():
            return _park(run, decision)
        case DeadLetter():
            run.dead(decision)


def _applied(run: _Run, job: Any, recorded: bool = False) -> dict[str, Any]:
    """`recorded`: the lane has marked the job's record applied already (`Finish`)."""
    latency = run.latency()
    run.kind.applied(run.services.registry, run.ref.portal, job)
    run.services.outcomes.applied(run.ref, latency, recorded)
    return {"outcome": "applied"}


def _park(run: _Run, decision: Park) -> dict[str, Any]:
    """Keep the job until its portal is re-authorised (it ends if the app is uninstalled meanwhile)."""
    services, ref = run.services, run.ref
    if decision.if_uninstalled is not None and not services.registry.mark_reauth(ref.portal, decision.reason):
        run.dead(decision.if_uninstalled)
    services.outcomes.park(ref, run.kwargs)
    now = services.registry.get(ref.portal)
    if now is not None:
        # admitted again, as the portal is now: the uninstall's sweep of parked jobs may have run before this
        # one was parked, or the portal was re-authorised meanwhile (then do not wait for the next resume)
        match _admit(run, now):
            case DeadLetter() as letter:
                services.outcomes.unpark(ref)
                run.dead(letter)
            case Park():
                pass
            case _:
                services.outcomes.unpark(ref)
                run.retry(retries.RESUMED_WHILE_PARKING, RuntimeError("portal re-authorised while parking"))
    services.outcomes.parked(ref, decision.reason, run.latency())
    return {"outcome": "parked", "reason": decision.reason}
