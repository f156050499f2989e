"""A POST /v1/jobs, from its body to the jobs' ids: the body's media type and shape checked (one job or an
array of up to `MAX_JOBS`), each job's kind and portal checked against the API key's portals, then the whole
validated and enqueued by the producer (`tasks.producer.enqueue_many`): one bad job refuses the array, and
nothing is enqueued. Also what an API key may see (`portal_filter`), which the /v1 reads ask too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edges.http.apikeys import ApiKey
from edges.http.body import NotJson, parse_json
from edges.http.problems import Problem, field_error
from tasks.jobs import KINDS
from tasks.producer import enqueue_many
from workers.errors import JobsRefused, PortalUninstalled
from workers.runtime import Runtime

#: Jobs in one POST.
MAX_JOBS = 1000


def _refused(exc: JobsRefused, total: int, single: bool) -> Problem:
    errors = [
        field_error(field, message, None if single else index)
        for index, refusal in exc.refusals
        for field, message in refusal.errors
    ]
    # only uninstalled portals: the jobs are fine, the portal is not (reinstall, then post again)
    status = 409 if all(isinstance(r, PortalUninstalled) for _, r in exc.refusals) else 422
    what = "the job was refused" if single else f"{len(exc.refusals)} of {total} jobs refused"
    return Problem(status, f"{what}; nothing was enqueued", errors=errors)


def jobs_in(content_type: str | None, body: bytes) -> tuple[list[Any], bool]:
    """The posted jobs, and whether the body was one job rather than an array."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise Problem(415, "send the jobs as application/json")
    try:
        data = parse_json(body)
    except NotJson as exc:
        raise Problem(400, f"{exc}: send a job object or an array of jobs (UTF-8 JSON)") from None
    if isinstance(data, dict):
        return [data], True
    if isinstance(data, list) and 1 <= len(data) <= MAX_JOBS:
        return data, False
    what = f"an array of {len(data)}" if isinstance(data, list) else f"a JSON {type(data).__name__}"
    rule = f"a job object or an array of 1 to {MAX_JOBS} jobs, not {what}"
    raise Problem(422, f"the body must be {rule}", errors=[field_error("(body)", rule)])


def portal_filter(rt: Runtime, key: ApiKey) -> Callable[[str], bool]:
    """Whether `key` may touch the portal named so (by key, member_id or domain; so may its entries)."""
    if key.portals is None:
        return lambda _: True
    allowed = {rt.registry.resolve(name) or name for name in key.portals}
    seen: dict[str, bool] = {}

    def sees(name: str) -> bool:
        if name not in seen:
            seen[name] = (rt.registry.resolve(name) or name) in allowed
        return seen[name]

    return sees


def enqueue(rt: Runtime, key: ApiKey, items: list[Any], single: bool) -> list[str]:
    """Validate the posted jobs whole and enqueue them (in a worker thread: the producer is synchronous)."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    errors = []
    for index, item in enumerate(items):
        at = None if single else index
        if not isinstance(item, dict):
            errors.append(field_error("(job)", f"a job is a JSON object of fields, not {type(item).__name__}", at))
        elif not isinstance(item.get("kind"), str):
            errors.append(field_error("kind", f"required: the job kind, one of {', '.join(KINDS)}", at))
        else:
            fields = dict(item)
            jobs.append((fields.pop("kind"), fields))
    if errors:
        raise Problem(422, "not a job; nothing was enqueued", errors=errors)
    sees = portal_filter(rt, key)
    outside = [
        field_error("portal", "outside this API key's portals", None if single else index)
        for index, (_, fields) in enumerate(jobs)
        if isinstance(fields.get("portal"), str) and not sees(fields["portal"])
    ]
    if outside:
        raise Problem(403, "this API key may not post jobs for that portal; nothing was enqueued", errors=outside)
    try:
        return enqueue_many(jobs, rt)
    except JobsRefused as exc:
        raise _refused(exc, len(jobs), single) from None
