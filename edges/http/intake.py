"""The HTTP intake: services in any language post jobs, read their state and replay dead letters.

    POST /v1/jobs                  a job {"kind": ..., ...fields}, or an array of up to 1,000 → 202 {"ids": [...]}
    GET  /v1/jobs/{id}             a job's state, attempts, last error and history
    GET  /v1/jobs?ids=a,b,c        up to 1,000 jobs at once
    POST /v1/dead/{id}/replay      validate a dead letter again and enqueue it → 202 {"ids": [id]}

Every request names an API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`; `edges.http.apikeys`) and
spends a unit of that key's GCRA bucket (`B24Q_HTTP_RATE`, `B24Q_HTTP_BURST`). A body is read up to
`B24Q_HTTP_MAX_BODY`, then validated whole by the producer (`edges.http.posting`, then
`tasks.producer.enqueue_many`: the job models and the portal registry) before anything touches the queue: one
bad job refuses the array. Refusals are problem+json naming each bad field (and its job's index in an array).
A POST with an `Idempotency-Key` header, retried, gets the ids the first one got
(`workers.records.idempotency`).

The jobs' JSON Schemas (`tasks.schema`) are the OpenAPI document's components (`document`): the route reads
its body itself, size limit first, so FastAPI has no body model of its own to document.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from edges.http import apikeys
from edges.http.apikeys import ApiKey
from edges.http.body import read_body
from edges.http.posting import MAX_JOBS, enqueue, jobs_in, portal_filter
from edges.http.problems import Problem, ProblemDocument, field_error, problem, responses
from edges.http.runtime import RuntimeDep
from tasks import schema
from tasks.producer import replay
from workers.errors import PortalUninstalled
from workers.portals.limits import Limits
from workers.redaction import redact
from workers.runtime import Runtime

#: Ids in one GET (and `MAX_JOBS` jobs in one POST).
MAX_IDS = 1000
#: Largest request line and headers uvicorn reads (`b24q serve`; uvicorn's flag
#: --h11-max-incomplete-event-size): GET /v1/jobs?ids= with 1,000 ids is a 37 KB line, h11's default 16 KB.
HEAD_LIMIT = 64 * 1024
#: How long a POST waits for another request holding its Idempotency-Key to finish before answering 409.
PENDING_WAIT = 1.0

_REF = "#/components/schemas/{model}"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


class Accepted(BaseModel):
    ids: list[str] = Field(description="The jobs' ids, in the order they were posted.")


class JobState(BaseModel):
    id: str
    kind: str
    portal: str
    state: str = Field(description="queued, running, retrying, deferred, applied, superseded, dead or parked")
    attempts: int = Field(description="Runs so far.")
    failures: int = Field(description="Transient failures so far.")
    last_error: str
    created: float | None
    updated: float | None
    history: list[dict[str, Any]] = Field(description='The last 50 events: {"t", "state", ...details}.')


class JobStates(BaseModel):
    jobs: list[JobState]
    unknown: list[str] = Field(description="Ids with no record (never enqueued, or expired after B24Q_LEDGER_TTL).")


# --- refusals --------------------------------------------------------------------------------------------

_WHY = {
    400: "The body is not strict JSON: UTF-8, no NaN or Infinity.",
    401: "No valid API key (or B24Q_API_KEYS is empty).",
    403: "A job for a portal outside the API key's portals.",
    404: "No such job (or dead letter) for this API key.",
    409: "The portal's application is uninstalled, or a request with this Idempotency-Key is still running.",
    413: "The body is larger than B24Q_HTTP_MAX_BODY.",
    415: "The body is not application/json.",
    422: "Invalid input: `errors` names each field (and the job's index in an array).",
    429: "More requests than B24Q_HTTP_RATE / B24Q_HTTP_BURST allow for this API key.",
    503: "Redis or the broker does not answer.",
}


def _answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return responses({s: _WHY[s] for s in statuses})


class _ProblemRoute(APIRoute):
    """Answers a `Problem` raised in a route, and FastAPI's own refusal of a path, query or header parameter,
    as problem+json: one shape for every refusal of the intake."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as exc:
                return exc.response()
            except RequestValidationError as exc:
                errors = [field_error(".".join(str(p) for p in e["loc"][1:]), str(e["msg"])) for e in exc.errors()]
                return problem(422, "invalid request parameters", errors=errors)

        return answer


def _state(record: dict[str, Any]) -> dict[str, Any]:
    """What the ledger says of a job, without its payload; texts from portals redacted."""

    def number(name: str) -> float | None:
        value = record.get(name)
        return float(value) if value else None

    return {
        "id": record.get("id", ""),
        "kind": record.get("kind", ""),
        "portal": record.get("portal", ""),
        "state": record.get("state", ""),
        "attempts": int(record.get("runs") or 0),
        "failures": int(record.get("failures") or 0),
        "last_error": redact(record.get("last_error", "")),
        "created": number("created"),
        "updated": number("updated"),
        "history": [
            {k: redact(v) if isinstance(v, str) else v for k, v in event.items()} for event in record["events"]
        ],
    }


async def caller(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
    rt: RuntimeDep,
) -> ApiKey:
    """The request's API key, after one unit of its rate."""
    s = rt.settings
    keys = apikeys.parse(s.api_keys)
    if not keys:
        raise Problem(401, "the HTTP intake is closed: no API keys are configured (B24Q_API_KEYS)", _CHALLENGE)
    presented = header or (bearer.credentials if bearer is not None else "")
    key = apikeys.identify(keys, presented) if presented else None
    if key is None:
        raise Problem(401, "send a valid API key: Authorization: Bearer KEY, or X-API-Key: KEY", _CHALLENGE)
    permit = await run_in_threadpool(rt.api_limiter.reserve, key.id, Limits(s.http_rate, s.http_burst), 0.0)
    if not permit.granted:
        retry = str(max(1, math.ceil(permit.wait)))
        raise Problem(429, f"this API key may make {s.http_rate:g} requests/s", {"Retry-After": retry})
    return key


Caller = Annotated[ApiKey, Security(caller)]
#: The /v1 routes.
router = APIRouter(prefix="/v1", tags=["jobs"], route_class=_ProblemRoute)


async def claimed(rt: Runtime, key: ApiKey, idempotency: str, token: str, body: str) -> list[str] | None:
    """None once this request holds `idempotency`; the ids an earlier request with the same body got."""
    deadline = time.monotonic() + PENDING_WAIT
    while True:
        earlier = await run_in_threadpool(rt.idempotency.claim, key.id, idempotency, token)
        if earlier is None:
            return None
        if earlier.ids is not None:
            if earlier.body != body:
                raise Problem(422, "this Idempotency-Key was used with another body")
            return earlier.ids
        if time.monotonic() >= deadline:
            raise Problem(409, "a request with this Idempotency-Key is still running", {"Retry-After": "1"})
        await asyncio.sleep(0.05)


#: POST /v1/jobs's body, for the document: the route reads it itself (size limit first).
_POST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": _REF.format(model="Job")},
                        {
                            "type": "array",
                            "items": {"$ref": _REF.format(model="Job")},
                            "minItems": 1,
                            "maxItems": MAX_JOBS,
                        },
                    ]
                }
            }
        },
    }
}


@router.post(
    "/jobs",
    status_code=202,
    response_model=Accepted,
    summary="Enqueue a job, or an array of up to 1,000 (all or none)",
    response_description="Enqueued: the jobs' ids.",
    responses=_answers(400, 401, 403, 409, 413, 415, 422, 429, 503),
    openapi_extra=_POST_BODY,
)
async def post_jobs(
    request: Request,
    key: Caller,
    rt: RuntimeDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Retrying with the same key (and body) returns the first request's ids; kept B24Q_LEDGER_TTL.",
        ),
    ] = None,
) -> Response:
    body = await read_body(request, rt.settings.http_max_body)
    items, single = jobs_in(request.headers.get("content-type"), body)
    if idempotency_key is None:
        return JSONResponse({"ids": await run_in_threadpool(enqueue, rt, key, items, single)}, 202)
    fingerprint = hashlib.sha256(body).hexdigest()
    token = uuid.uuid4().hex
    earlier = await claimed(rt, key, idempotency_key, token, fingerprint)
    if earlier is not None:
        return JSONResponse({"ids": earlier}, 202, headers={"Idempotent-Replayed": "true"})
    try:
        ids = await run_in_threadpool(enqueue, rt, key, items, single)
    except Exception:
        await run_in_threadpool(rt.idempotency.release, key.id, idempotency_key, token)
        raise
    await run_in_threadpool(rt.idempotency.done, key.id, idempotency_key, fingerprint, ids)
    return JSONResponse({"ids": ids}, 202)


def visible(rt: Runtime, key: ApiKey, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """The jobs' records; None for unknown ones and those of portals outside the key's."""
    sees = portal_filter(rt, key)
    return {
        job_id: record if record is not None and sees(str(record.get("portal", ""))) else None
        for job_id, record in rt.ledger.get_many(ids).items()
    }


@router.get(
    "/jobs/{job_id}",
    response_model=JobState,
    summary="A job's state, attempts, last error and history",
    response_description="The job, as the ledger records it (no payload; secrets masked).",
    responses=_answers(401, 404, 422, 429, 503),
)
async def get_job(job_id: Annotated[str, Path(min_length=1, max_length=255)], key: Caller, rt: RuntimeDep) -> Response:
    record = (await run_in_threadpool(visible, rt, key, [job_id]))[job_id]
    if record is None:
        raise Problem(404, "no such job (a finished job's record is kept B24Q_LEDGER_TTL)")
    return JSONResponse(_state(record))


@router.get(
    "/jobs",
    response_model=JobStates,
    summary=f"Many jobs' states at once (up to {MAX_IDS})",
    response_description="The jobs found, and the ids of those not found.",
    responses=_answers(401, 422, 429, 503),
)
async def get_jobs(
    ids: Annotated[
        str,
        Query(
            min_length=1,
            description=f"Job ids, comma-separated (up to {MAX_IDS}).",
            # at least one id: "," names none (the route counts them, the document says so)
            json_schema_extra={"pattern": r"[^\s,]"},
        ),
    ],
    key: Caller,
    rt: RuntimeDep,
) -> Response:
    wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
    if not 1 <= len(wanted) <= MAX_IDS:
        rule = f"1 to {MAX_IDS} job ids, comma-separated"
        raise Problem(422, f"give {rule}", errors=[field_error("ids", f"{rule}; got {len(wanted)}")])
    found = await run_in_threadpool(visible, rt, key, wanted)
    return JSONResponse(
        {
            "jobs": [_state(record) for record in found.values() if record is not None],
            "unknown": [job_id for job_id, record in found.items() if record is None],
        }
    )


def replay_one(rt: Runtime, key: ApiKey, job_id: str) -> list[str]:
    letter = rt.dead.get(job_id)
    if letter is None or not portal_filter(rt, key)(letter.portal):
        raise Problem(404, "no such dead letter")
    done, refused = replay([job_id], rt=rt)
    for _, exc in refused:
        status = 409 if isinstance(exc, PortalUninstalled) else 422
        errors = [field_error(field, message) for field, message in exc.errors]
        raise Problem(status, "the dead letter was refused again; it stays", errors=errors)
    if not done:  # replayed or purged by someone else meanwhile
        raise Problem(404, "no such dead letter")
    return done


@router.post(
    "/dead/{job_id}/replay",
    status_code=202,
    response_model=Accepted,
    summary="Validate a dead letter again and enqueue it under its id",
    response_description="Enqueued again, under its id.",
    responses=_answers(401, 404, 409, 422, 429, 503),
)
async def replay_dead(
    job_id: Annotated[str, Path(min_length=1, max_length=255)], key: Caller, rt: RuntimeDep
) -> Response:
    ids = await run_in_threadpool(replay_one, rt, key, job_id)
    return JSONResponse({"ids": ids}, 202)


def document(app: FastAPI) -> None:
    """Add the job kinds' schemas and the problem shape to `app`'s OpenAPI components (what the /v1 routes'
    `$ref`s name)."""
    problem_schema = ProblemDocument.model_json_schema(ref_template=_REF)
    extra = {**schema.components(_REF), **problem_schema.pop("$defs", {}), "Problem": problem_schema}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        document.setdefault("components", {}).setdefault("schemas", {}).update(extra)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
