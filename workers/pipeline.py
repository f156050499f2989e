"""The one job pipeline every job kind runs through:

    validate → check portal → limit + pack + call (`workers.delivery`) → classify → done,
    retry (flow control or backoff), park, or dead-letter.

A job kind only declares its model, method, params and merge rule (`tasks.jobs`); nothing here knows
which kind it runs. `retry` is injected (Celery's `Task.retry` in production) so the pipeline can be tested
without a broker.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol

import redis
from celery.exceptions import Reject, TaskPredicate
from kombu.exceptions import OperationalError

from workers.delivery.calls import MergeRule
from workers.delivery.ordering import Order, OrderRule, parse_version
from workers.errors import (
    Deferred,
    JobDeadLettered,
    JobRefused,
    OAuthUnavailable,
    OperationTimeLimit,
    Superseded,
)
from workers.events import events
from workers.records.deadletters import storable
from workers.retries import Action, backoff, classify
from workers.runtime import Runtime

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

    def applied(self, rt: Runtime, portal: str, job: Any) -> None: ...
    def validate(self, payload: Mapping[str, Any]) -> Any: ...


Retry = Callable[[float, BaseException], NoReturn]


def _describe(exc: BaseException) -> tuple[str, str]:
    code = getattr(exc, "code", None) or type(exc).__name__
    description = getattr(exc, "description", None) or str(exc)
    return str(code), str(description)


#: What a status or sender job gets while its provider is missing (an app update deletes them, §7.2).
_PROVIDER_GONE = ("ERROR_MESSAGE_NOT_FOUND", "ERROR_SENDER_NOT_FOUND")

#: What a portal key may look like (tasks.jobs.PortalKey); anything else is recorded under "?".
_PORTAL_KEY = re.compile(r"^[A-Za-z0-9.\-_:]{1,255}$")


def _broker_trouble(exc: BaseException) -> bool:
    return isinstance(exc, redis.RedisError | OperationalError | ConnectionError | TimeoutError)


def run_job(
    kind: KindLike,
    job_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    rt: Runtime,
    retry: Retry,
    worker: str = "",
) -> dict[str, Any]:
    """Run one job to an outcome. Returns {"outcome": "applied" | "parked"}, raises a retry, or
    raises `JobDeadLettered` after writing the dead letter.

    No exception may end a job without an outcome: with acks_late and task_acks_on_failure, Celery
    acknowledges (deletes) the message of a task that raised anything but a retry or a reject. So Redis
    or broker trouble (a Redis restart mid-job, a retry that cannot be published) requeues the message
    (`Reject(requeue=True)`; if even that cannot reach Redis, it stays unacked and is redelivered after
    visibility_timeout), and any other unexpected error becomes the dead letter `INTERNAL_ERROR`, seen
    and replayable (tests/faults/test_redis_restart.py).
    """
    try:
        return _run_job(kind, job_id, args, kwargs, rt, retry, worker)
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
        log.exception("job %s: unexpected error", job_id)
        portal_key = str(kwargs.get("portal", ""))
        try:
            rt.dead.add(
                job_id,
                kind.task_name,
                kind.name,
                portal_key if _PORTAL_KEY.match(portal_key) else "?",
                kwargs,
                "INTERNAL_ERROR",
                f"{type(exc).__name__}: {exc}"[:2000],
                0,
            )
            rt.ledger.finish(job_id, portal_key if _PORTAL_KEY.match(portal_key) else "?", "dead", "INTERNAL_ERROR")
        except Exception as store_error:
            if _broker_trouble(store_error):
                raise Reject(exc, requeue=True) from None
            raise
        raise JobDeadLettered("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}") from None


def _run_job(
    kind: KindLike,
    job_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    rt: Runtime,
    retry: Retry,
    worker: str = "",
) -> dict[str, Any]:
    s = rt.settings
    portal_key = str(kwargs.get("portal", "")) or "?"
    if not _PORTAL_KEY.match(portal_key):
        # a raw message's `portal` names Redis keys (backlog): refused below, recorded as "?"
        portal_key = "?"
    portal = rt.portals.get(portal_key) if portal_key != "?" else None
    if portal is not None and portal.key != portal_key:
        # a raw message may name the portal by an alias (its domain or member_id): every record, lane and
        # limit of the job is the registry key's, as if the producer had resolved it
        portal_key, kwargs = portal.key, {**kwargs, "portal": portal.key}
    run = rt.ledger.started(job_id, kind.name, portal_key, worker, payload=lambda: storable(kwargs))
    events.job_started(kind.name, portal_key)

    def latency() -> float:
        return time.time() - run.created

    def dead(code: str, description: str) -> NoReturn:
        rt.dead.add(
            job_id,
            kind.task_name,
            kind.name,
            portal_key,
            kwargs,
            code,
            description,
            run.runs,
        )
        rt.ledger.finish(job_id, portal_key, "dead", f"{code}: {description}")
        events.dead_letter(kind.name, portal_key, code)
        events.job_finished(kind.name, portal_key, "dead", latency())
        log.warning("job %s (%s, portal %s) dead-lettered: %s", job_id, kind.name, portal_key, code)
        raise JobDeadLettered(code, description)

    if args:
        dead("INVALID_PAYLOAD", "positional arguments are not accepted; send the fields as JSON kwargs")
    try:
        job = kind.validate(kwargs)
    except JobRefused as exc:
        dead("INVALID_PAYLOAD", str(exc))

    age = latency()
    if age > s.job_max_age:
        dead("MAX_AGE", f"job is {age:.0f}s old; job_max_age is {s.job_max_age:.0f}s")

    if portal is None:
        dead("UNKNOWN_PORTAL", f"portal {portal_key!r} is not in the registry")
    if kind.app_only and portal.kind == "webhook":
        dead("WRONG_AUTH_TYPE", f"{kind.method} needs application (OAuth) context; {portal_key} is a webhook")
    if portal.state == "uninstalled":  # as cached: a reinstall a moment ago may have ended it
        portal = rt.portals.fresh(portal_key) or portal
    if portal.state == "uninstalled":
        dead("APP_UNINSTALLED", "the application was uninstalled from the portal; replay after a reinstall")
    if portal.state == "reauth":
        return park(kind, job_id, kwargs, rt, portal.reason, retry, run.created, dead)

    def wait_for_providers(pending: str) -> NoReturn:
        # an app update deleted the portal's SMS providers and they are being added again (edges.lifecycle):
        # a status for them now fails with ERROR_MESSAGE_NOT_FOUND, so the job waits (not a failure)
        delay = min(2.0, s.backoff_max) + random.uniform(0, 1.0)
        why = f"waiting for SMS providers to be registered again: {pending}"
        rt.ledger.note(job_id, "deferred", why, countdown=round(delay, 2))
        events.job_retried(kind.name, portal_key, "flow", "PROVIDERS_PENDING")
        retry(delay, Deferred(delay, why))

    if kind.waits_for_providers and portal.providers_pending:
        # as cached (up to a second old): the last provider may be back already, and a wait costs seconds
        portal = rt.portals.fresh(portal_key) or portal
        if portal.providers_pending:
            wait_for_providers(portal.providers_pending)

    order = _order(kind, job_id, portal_key, job.model_dump(mode="json", exclude_none=True), run.version, rt)
    try:
        result = rt.dispatcher.run(
            portal_key, kind.method, job.params(), wait=s.permit_wait, merge=kind.merge, order=order
        )
        job.check_result(result.result)
    except Superseded as exc:  # a newer job has this portal state: nothing to send
        rt.ledger.finish(job_id, portal_key, "superseded", by=exc.by)
        events.job_finished(kind.name, portal_key, "superseded", latency())
        return {"outcome": "superseded", "by": exc.by}
    except Exception as exc:
        action = classify(exc)
        code, description = _describe(exc)
        if code in kind.applied_codes:  # e.g. sender.add's "already installed": the state the job wanted
            return _applied(kind, job_id, portal_key, job, rt, latency())
        if kind.waits_for_providers and code in _PROVIDER_GONE:
            # sent before the update's event arrived (in a lane, or a moment earlier): wait like the others
            fresh = rt.registry.get(portal_key)
            if fresh is not None and fresh.providers_pending:
                wait_for_providers(fresh.providers_pending)
            managed = {str(p.get("code", "")).lower() for p in fresh.provider_list(s)} if fresh else set()
            if str(kwargs.get("code", "")).lower() in managed and rt.ledger.failure(job_id).count <= 3:
                # b24q registers this provider: the update that deleted it may not have told us yet (its
                # event comes after the deletion), so a few short retries before the dead letter
                countdown = backoff(1, s.backoff_base, s.backoff_max)
                rt.ledger.note(job_id, "retrying", f"{code}: {description}", countdown=round(countdown, 2))
                events.job_retried(kind.name, portal_key, "transient", code)
                retry(countdown, exc)
        if action is Action.FLOW:
            if isinstance(exc, Deferred):
                delay = exc.delay
            elif isinstance(exc, OperationTimeLimit) and exc.reset_at:
                delay = exc.reset_at - time.time()
            else:
                delay = 1.0
            delay = min(max(delay, 0.2), s.backoff_max) + random.uniform(0, 0.5)
            rt.ledger.note(job_id, "deferred", f"{code}: {description}", countdown=round(delay, 2))
            events.job_retried(kind.name, portal_key, "flow", code)
            retry(delay, exc)
        if action is Action.PARK:
            if code not in ("REAUTH_NEEDED",) and not rt.registry.mark_reauth(portal_key, f"{code}: {description}"):
                dead("APP_UNINSTALLED", f"{code}: {description}; the application was uninstalled from the portal")
            return park(kind, job_id, kwargs, rt, f"{code}: {description}", retry, run.created, dead)
        if isinstance(exc, OAuthUnavailable):
            # the OAuth server being down (or another worker's refresh not finishing) is the whole
            # portal's trouble, not this job's: it spends no transient budget (max_failures), or every
            # job of the portal would be dead-lettered by a few minutes of OAuth outage. The job waits
            # with backoff until the server is back, bounded by job_max_age.
            countdown = backoff(min(run.runs, 10), s.backoff_base, s.backoff_max)
            rt.ledger.note(job_id, "deferred", f"{code}: {description}", countdown=round(countdown, 2))
            events.job_retried(kind.name, portal_key, "flow", code)
            retry(countdown, exc)
        if action in (Action.TRANSIENT, Action.REFRESH):
            failures = rt.ledger.failure(job_id)
            # both bounds: a count alone lets a minute of a flaky portal (8 countdowns of at most ~2 min in
            # all) end jobs that the next minute would apply; a time alone would end a job that failed once,
            # long ago, at its second failure
            if failures.count >= s.max_failures and failures.since >= s.transient_window:
                dead(code, f"{description} (after {failures.count} failures in {failures.since:.0f} s)")
            countdown = backoff(failures.count, s.backoff_base, s.backoff_max)
            rt.ledger.note(
                job_id, "retrying", f"{code}: {description}", failures=failures.count, countdown=round(countdown, 2)
            )
            events.job_retried(kind.name, portal_key, "transient", code)
            retry(countdown, exc)
        if code == "APP_UNINSTALLED":
            description = f"{description}; replay after a reinstall"
        dead(code, description)
    return _applied(kind, job_id, portal_key, job, rt, latency())


def _applied(kind: KindLike, job_id: str, portal: str, job: Any, rt: Runtime, latency: float) -> dict[str, Any]:
    kind.applied(rt, portal, job)
    rt.ledger.finish(job_id, portal, "applied")
    events.job_finished(kind.name, portal, "applied", latency)
    return {"outcome": "applied"}


def _order(
    kind: KindLike, job_id: str, portal: str, fields: dict[str, Any], recorded: str, rt: Runtime
) -> Order | None:
    """The job's place in its portal state's order: as the producer recorded it, or stamped now for a
    message that bypassed the producer (or whose record was re-created)."""
    if kind.order is None:
        return None
    keys = kind.order.keys(fields)
    version = parse_version(recorded)
    if version is None:
        rank = kind.order.rank(fields) if rt.settings.status_ranks else 0
        (version,) = rt.ordering.stamp(portal, [(job_id, rank, fields.get("at"), keys)])
    return Order(job_id, version, keys)


def park(
    kind: KindLike,
    job_id: str,
    kwargs: dict[str, Any],
    rt: Runtime,
    reason: str,
    retry: Retry,
    created: float,
    dead: Callable[[str, str], NoReturn],
) -> dict[str, Any]:
    """Keep the job until its portal is re-authorised (`dead` ends it if the app is uninstalled meanwhile)."""
    portal_key = str(kwargs["portal"])
    rt.parking.park(portal_key, job_id, kind.task_name, kwargs)
    portal = rt.registry.get(portal_key)
    if portal is not None and portal.state == "uninstalled":
        # the uninstall's sweep of parked jobs may have run before this one was parked
        rt.parking.release(portal_key, job_id)
        dead("APP_UNINSTALLED", "the application was uninstalled from the portal; replay after a reinstall")
    if portal is not None and portal.state == "active":
        # re-authorised while we were parking: do not wait for the next resume
        rt.parking.release(portal_key, job_id)
        retry(0.5, RuntimeError("portal re-authorised while parking"))
    rt.ledger.finish(job_id, portal_key, "parked", reason)
    events.parked(portal_key)
    events.job_finished(kind.name, portal_key, "parked", time.time() - created)
    return {"outcome": "parked", "reason": reason}
