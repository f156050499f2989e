"""The one job pipeline every job kind runs through:

    validate → check portal → limit + pack + call (`workers.dispatcher`) → classify → done,
    retry (flow control or backoff), park, or dead-letter.

A job kind only declares its model, method and params (`tasks.jobs`); nothing here knows which kind
it runs. `retry` is injected (Celery's `Task.retry` in production) so the pipeline can be tested
without a broker.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol

import redis
from celery.exceptions import Reject, TaskPredicate
from kombu.exceptions import OperationalError

from workers.dispatcher import Deferred
from workers.errors import Action, B24QError, JobRefused, OAuthUnavailable, OperationTimeLimit, classify
from workers.observe import events
from workers.runtime import Runtime

log = logging.getLogger(__name__)

#: Broker priorities (kombu's Redis transport serves 0 first): fresh jobs, and the bulk lane for
#: retries and for portals with a deep backlog, so other portals' jobs pass them.
PRIORITY_NORMAL = 0
PRIORITY_BULK = 6


class JobDeadLettered(B24QError):
    """Raised by a job that went to the dead letters (so Flower shows it failed, with its reason)."""

    def __init__(self, code: str, description: str) -> None:
        self.code = code
        self.description = description
        super().__init__(f"dead letter: {code}: {description}")


class KindLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def task_name(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def app_only(self) -> bool: ...

    def validate(self, payload: Mapping[str, Any]) -> Any: ...


Retry = Callable[[float, BaseException], NoReturn]


def backoff(failures: int, base: float, cap: float) -> float:
    """Capped exponential backoff with full jitter (the AWS architecture blog's recommendation)."""
    return random.uniform(base / 2, min(cap, base * 2 ** (failures - 1)))


def _describe(exc: BaseException) -> tuple[str, str]:
    code = getattr(exc, "code", None) or type(exc).__name__
    description = getattr(exc, "description", None) or str(exc)
    return str(code), str(description)


#: What a portal key may look like (tasks.jobs.PortalKey); anything else is recorded under "?".
_PORTAL_KEY = re.compile(r"^[A-Za-z0-9.\-_:]{1,255}$")
#: A dead letter keeps at most this much of an invalid payload (raw messages can be megabytes).
MAX_STORED_PAYLOAD = 64 * 1024


def _utf8(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8(str(k)): _utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8(v) for v in value]
    return value


def storable(payload: Any, limit: int = MAX_STORED_PAYLOAD) -> dict[str, Any]:
    """A payload that Redis can store as UTF-8 JSON and that is not huge (for dead letters).

    FIX (reliability): a raw message whose strings held a lone surrogate (`"\\ud800"`: valid JSON, not
    UTF-8) made writing its dead letter raise UnicodeEncodeError; Celery then acked the message and
    the job vanished, its ledger record stuck at `running`. A 5 MB payload was stored whole.
    """
    clean = _utf8(payload if isinstance(payload, dict) else {"raw": payload})
    text = json.dumps(clean, ensure_ascii=False, default=str)
    if len(text) > limit:
        return {"raw": text[:2000], "truncated": f"payload of {len(text)} characters cut to 2000"}
    return dict(clean)


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

    FIX (reliability): no exception may end a job without an outcome. With acks_late and
    task_acks_on_failure, Celery acknowledges (deletes) the message of a task that raised anything
    but a retry or a reject. Measured in tests/faults: Redis restarting under load made the ledger,
    the limiter or the registry raise ConnectionError mid-job, and those jobs were gone; a retry that
    could not be published (broker down) made Celery reject the message without requeueing it. Now:
    Redis or broker trouble → the message is requeued (`Reject(requeue=True)`; if even that cannot
    reach Redis, it stays unacked and is redelivered after visibility_timeout); any other unexpected
    error → dead letter `INTERNAL_ERROR`, so it is seen and can be replayed.
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
            rt.dead.add(job_id, kind.task_name, kind.name, portal_key if _PORTAL_KEY.match(portal_key) else "?",
                        storable(kwargs), "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"[:2000], 0)  # fmt: skip
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
        # FIX (reliability): a raw message's `portal` became a Redis key name (backlog) and a ledger
        # field as it was: a 200 kB string made a 200 kB key. It is refused below; record it as "?".
        portal_key = "?"
    record = rt.ledger.started(job_id, kind.name, portal_key, worker, payload=storable(kwargs))
    events.job_started(kind.name, portal_key)

    def latency() -> float | None:
        created = record.get("created")
        return time.time() - float(created) if created else None

    def dead(code: str, description: str) -> NoReturn:
        rt.dead.add(
            job_id,
            kind.task_name,
            kind.name,
            portal_key,
            storable(kwargs),
            code,
            description,
            int(record.get("runs", 1)),
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

    age = time.time() - float(record.get("created") or time.time())
    if age > s.job_max_age:
        dead("MAX_AGE", f"job is {age:.0f}s old; job_max_age is {s.job_max_age:.0f}s")

    portal = rt.portals.get(portal_key)
    if portal is None:
        dead("UNKNOWN_PORTAL", f"portal {portal_key!r} is not in the registry")
    if kind.app_only and portal.kind == "webhook":
        dead("WRONG_AUTH_TYPE", f"{kind.method} needs application (OAuth) context; {portal_key} is a webhook")
    if portal.state == "reauth":
        return park(kind, job_id, kwargs, rt, portal.reason, retry)

    try:
        result = rt.dispatcher.run(portal_key, kind.method, job.params(), wait=s.permit_wait)
        job.check_result(result.result)
    except Exception as exc:
        action = classify(exc)
        code, description = _describe(exc)
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
            if code not in ("REAUTH_NEEDED",):
                rt.registry.mark_reauth(portal_key, f"{code}: {description}")
            return park(kind, job_id, kwargs, rt, f"{code}: {description}", retry)
        if isinstance(exc, OAuthUnavailable):
            # FIX (reliability): the OAuth server being down (or another worker's refresh not finishing)
            # is the whole portal's trouble, not this job's: it no longer spends the job's transient
            # budget (max_failures), which dead-lettered every job of the portal after a few minutes of
            # OAuth outage. The job waits with backoff until the server is back, bounded by job_max_age.
            countdown = backoff(min(int(record.get("runs") or 1), 10), s.backoff_base, s.backoff_max)
            rt.ledger.note(job_id, "deferred", f"{code}: {description}", countdown=round(countdown, 2))
            events.job_retried(kind.name, portal_key, "flow", code)
            retry(countdown, exc)
        if action in (Action.TRANSIENT, Action.REFRESH):
            failures = rt.ledger.failure(job_id)
            if failures >= s.max_failures:
                dead(code, f"{description} (after {failures} failures)")
            countdown = backoff(failures, s.backoff_base, s.backoff_max)
            rt.ledger.note(
                job_id, "retrying", f"{code}: {description}", failures=failures, countdown=round(countdown, 2)
            )
            events.job_retried(kind.name, portal_key, "transient", code)
            retry(countdown, exc)
        dead(code, description)
    rt.ledger.finish(job_id, portal_key, "applied")
    events.job_finished(kind.name, portal_key, "applied", latency())
    return {"outcome": "applied"}


def park(kind: KindLike, job_id: str, kwargs: dict[str, Any], rt: Runtime, reason: str, retry: Retry) -> dict[str, Any]:
    """Keep the job until its portal is re-authorised."""
    portal_key = str(kwargs["portal"])
    rt.parking.park(portal_key, job_id, kind.task_name, kwargs)
    portal = rt.registry.get(portal_key)
    if portal is not None and portal.state == "active":
        # re-authorised while we were parking: do not wait for the next resume
        rt.parking.release(portal_key, job_id)
        retry(0.5, RuntimeError("portal re-authorised while parking"))
    rt.ledger.finish(job_id, portal_key, "parked", reason)
    events.parked(portal_key)
    created = rt.ledger.get(job_id) or {}
    events.job_finished(kind.name, portal_key, "parked", time.time() - float(created.get("created") or time.time()))
    return {"outcome": "parked", "reason": reason}
