"""The producer API that other services call to enqueue jobs.

Input is validated here, before anything enters the queue: a bad job raises `JobRefused` naming the
field and the rule; a job for an unknown portal raises `UnknownPortal`; an application-only method
for a webhook portal is refused too. Each call returns the job id (also its Celery task id and its
ledger key).

Examples:
    >>> from tasks.producer import enqueue_status_update, job_state     # doctest: +SKIP
    >>> job_id = enqueue_status_update(portal="acme", code="smsgw", message_id="a1", status="delivered")
    >>> job_state(job_id)["state"]
    'queued'
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from tasks.fields import Horizon
from tasks.jobs import KINDS, KINDS_BY_TASK, JobKind
from tasks.models import DeliveredMessage
from tasks.publishing import publish
from workers.errors import JobRefused, JobsRefused, PortalUninstalled, UnknownPortal
from workers.portals.admission import Refusal, admission
from workers.portals.record import Portal
from workers.runtime import Runtime, get_runtime


def _kind(kind: str | JobKind) -> JobKind:
    if isinstance(kind, JobKind):
        return kind
    try:
        return KINDS[kind]
    except KeyError:
        raise JobRefused(str(kind), [("kind", f"unknown job kind; one of {', '.join(KINDS)}")]) from None


def check(
    kind: str | JobKind,
    payload: Mapping[str, Any],
    rt: Runtime | None = None,
    portals: dict[str, Portal | None] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Validate a job against its model and the portal registry; return the message kwargs.

    The portal may be named by its key, member_id or domain; the message names its key. `portals`
    caches registry lookups across a bulk enqueue. `now` (default: this host's clock) bounds the job's
    `at`: at most B24Q_CLOCK_SKEW later.
    """
    rt = rt or get_runtime()
    k = _kind(kind)
    horizon = Horizon(time.time() if now is None else now, rt.settings.clock_skew)
    job = k.validate(payload, horizon)  # the model's rules, including what Bitrix24 itself would refuse
    if portals is None:
        portals = {}
    if job.portal not in portals:
        # the record as this process read it within the last second (a state change, such as an uninstall,
        # reaches producers within that second; the worker checks again); a refusal on a fresh read
        portals[job.portal] = rt.portals.current(job.portal)
    portal = portals[job.portal]
    refusal = admission(portal, job.portal, k.method, k.app_only)
    if refusal is not None and not refusal.park:  # a portal in `reauth` takes jobs: a worker parks them
        raise _refused(refusal, job.portal, k)
    assert portal is not None  # admission refuses a missing one
    return {**job.model_dump(mode="json", exclude_none=True), "portal": portal.key}


def _refused(refusal: Refusal, portal: str, k: JobKind) -> JobRefused:
    """What a producer is told when `admission` refuses a job (a worker would dead-letter it with `code`)."""
    if refusal.code == "UNKNOWN_PORTAL":
        return UnknownPortal(portal, k.name)
    if refusal.code == "APP_UNINSTALLED":
        return PortalUninstalled(portal, k.name)
    return JobRefused(
        k.name, [("portal", f"{k.method} needs an OAuth application portal; {portal!r} is an incoming webhook")]
    )


def enqueue(
    kind: str | JobKind, payload: Mapping[str, Any], rt: Runtime | None = None, job_id: str | None = None
) -> str:
    """Validate and enqueue one job; returns its id."""
    rt = rt or get_runtime()
    k = _kind(kind)
    kwargs = check(k, payload, rt)
    return publish(rt, [(k, kwargs, job_id or str(uuid.uuid4()))])[0]


#: `enqueue_many` publishes in chunks of up to CHUNK jobs (one Redis pipeline each), the first ones smaller:
#: a chunk's messages reach the workers only once the whole chunk is recorded and published (~0.25 ms a job),
#: so a first chunk of 1,000 kept a bulk enqueue's first jobs from the workers for a quarter of a second.
#: Doubling from FIRST_CHUNK (100, 200, 400, 800, 1,000, ...) starts them at once and still publishes far
#: faster than workers take jobs, so they never wait for the next chunk.
FIRST_CHUNK, CHUNK = 100, 1000


def enqueue_many(jobs: Iterable[tuple[str, Mapping[str, Any]]], rt: Runtime | None = None) -> list[str]:
    """Validate every job first, then enqueue them all; if any is bad, nothing is enqueued and `JobsRefused`
    names every bad job (its index) and field."""
    rt = rt or get_runtime()
    portals: dict[str, Portal | None] = {}
    checked = []
    refusals: list[tuple[int, JobRefused]] = []
    for index, (kind, payload) in enumerate(jobs):
        try:
            checked.append((_kind(kind), check(kind, payload, rt, portals), str(uuid.uuid4())))
        except JobRefused as exc:
            refusals.append((index, exc))
    if refusals:
        raise JobsRefused(refusals)
    ids: list[str] = []
    start, size = 0, FIRST_CHUNK
    while start < len(checked):
        ids.extend(publish(rt, checked[start : start + size]))
        start, size = start + size, min(2 * size, CHUNK)
    return ids


def enqueue_status_update(*, portal: str, code: str, message_id: str, status: str) -> str:
    """Report an SMS's state (`queued`, `sent`, `delivered`, `undelivered`, `failed`) to the portal."""
    return enqueue("status-update", {"portal": portal, "code": code, "message_id": message_id, "status": status})


def enqueue_delivery_confirmation(
    *, portal: str, connector: str, line: int, messages: list[Mapping[str, Any] | DeliveredMessage]
) -> str:
    """Confirm delivery of open-line messages (`im` ids from OnImConnectorMessageAdd)."""
    items = [m.model_dump() if isinstance(m, DeliveredMessage) else dict(m) for m in messages]
    return enqueue("delivery-confirmation", {"portal": portal, "connector": connector, "line": line, "messages": items})


def enqueue_sender_update(
    *, portal: str, code: str, handler: str | None = None, name: Any = None, description: Any = None
) -> str:
    """Change a messageservice provider's handler URL, name or description."""
    payload = {"portal": portal, "code": code, "handler": handler, "name": name, "description": description}
    return enqueue("sender-update", {k: v for k, v in payload.items() if v is not None})


def enqueue_mark_unread(*, portal: str, dialog_id: str, message_id: int) -> str:
    """Mark a dialog unread from `message_id` on (for the portal credentials' user)."""
    return enqueue("mark-unread", {"portal": portal, "dialog_id": dialog_id, "message_id": message_id})


def job_state(job_id: str, rt: Runtime | None = None) -> dict[str, Any] | None:
    """The job's ledger record and history, or None if unknown."""
    return (rt or get_runtime()).ledger.get(job_id)


def resume_parked(portal: str, rt: Runtime | None = None) -> int:
    """Re-enqueue the jobs parked for `portal` (keeping their ids); returns how many."""
    rt = rt or get_runtime()
    count = 0
    for envelope in rt.parking.parked(portal):
        kind = KINDS_BY_TASK.get(envelope["task"])
        if kind is not None:
            publish(rt, [(kind, envelope["kwargs"], envelope["id"])], "resumed after re-authorisation")
            count += 1
        rt.parking.release(portal, envelope["id"])
    return count


def reactivate(portal: str, rt: Runtime | None = None) -> int:
    """Mark a portal in `reauth` active (its credentials were fixed by hand) and resume its parked jobs."""
    rt = rt or get_runtime()
    rt.registry.mark_active(portal)  # a portal in no `reauth` state stays as it is
    return resume_parked(portal, rt)


def store_tokens(portal: str, auth: Mapping[str, Any], rt: Runtime | None = None) -> int:
    """Store a fresh token pair from Bitrix24's `auth` block and resume the portal's parked jobs.

    Call it from an app's install or event handler. Returns the number of jobs resumed.
    """
    rt = rt or get_runtime()
    rt.registry.store_auth(portal, auth)
    return resume_parked(portal, rt)


def replay(
    ids: Iterable[str] | None = None,
    portal: str | None = None,
    code: str | None = None,
    kind: str | None = None,
    rt: Runtime | None = None,
) -> tuple[list[str], list[tuple[str, JobRefused]]]:
    """Re-validate and re-enqueue dead letters (by id, or by filter; all when nothing is given).

    Returns (replayed ids, [(id, the refusal)]). A letter that fails validation again stays.
    """
    rt = rt or get_runtime()
    letters = [rt.dead.get(i) for i in ids] if ids is not None else list(rt.dead.iter(portal, code, kind))
    done: list[str] = []
    refused: list[tuple[str, JobRefused]] = []
    for letter in letters:
        if letter is None:
            continue
        try:
            k = _kind(letter.kind)
            kwargs = check(k, letter.payload, rt)
        except JobRefused as exc:
            refused.append((letter.id, exc))
            continue
        publish(rt, [(k, kwargs, letter.id)], f"replayed from dead letter {letter.code}")
        rt.dead.remove(letter.id)
        done.append(letter.id)
    return done, refused
