"""The ASGI app: `uvicorn edges.http.app:app`, or `b24q serve` (settings `B24Q_HTTP_*`).

FastAPI, because its routes are typed by the same pydantic models the producer validates with and it
generates the OpenAPI document from them; uvicorn serves it. The app holds no state of its own (Redis
holds everything), so instances scale out behind any load balancer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from edges.http import appside, console, intake
from edges.http.body import BodyTooLarge
from edges.http.docs import serve_docs
from edges.http.problems import answer_refusals, problem, responses
from edges.http.runtime import RuntimeDep, keep
from workers.events import add_observer, remove_observer
from workers.observe import logs
from workers.observe.metrics import Metrics
from workers.redaction import install_redaction
from workers.runtime import Runtime, get_runtime
from workers.settings import get_settings

log = logging.getLogger(__name__)

#: the loggers whose handlers get the redaction filter: the root logger and uvicorn's
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")

#: The process's own health and metrics.
operations = APIRouter(tags=["operations"])


@operations.get("/healthz", summary="The process answers")
def healthz() -> dict[str, Any]:
    return {"ok": True}


@operations.get("/readyz", summary="Redis answers", responses=responses({503: "Redis does not answer."}))
async def readyz(rt: RuntimeDep) -> dict[str, Any]:
    await run_in_threadpool(rt.redis.ping)  # not answering: 503 (`answer_refusals`)
    return {"ok": True}


@operations.get(
    "/metrics",
    summary="Prometheus metrics of this process (events, moves)",
    response_class=PlainTextResponse,
    response_description="The Prometheus text format.",
)
def prometheus(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _lifespan(metrics: Metrics) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # uvicorn has set up its loggers by now: a traceback (uvicorn.error) or an access line may carry a
        # token (an install POST's fields), so its handlers mask secrets as the worker's do
        for name in LOGGERS:
            install_redaction(logging.getLogger(name))
        if not logging.getLogger().handlers:  # plain `uvicorn edges.http.app:app`: b24q's own lines shown too
            logs.setup(get_settings().log_format)
        add_observer(metrics)
        try:
            yield
        finally:
            remove_observer(metrics)

    return lifespan


def _answer_broken_bodies(app: FastAPI, registry: CollectorRegistry) -> None:
    """A body over its limit is 413; a client gone before sending all of it is counted, not logged."""
    disconnects = Counter(
        "b24q_http_client_disconnects",
        "Requests whose client went away before sending its whole body",
        registry=registry,
    )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> Response:
        return problem(413, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # no one is left to read an answer; a traceback per request would let any client flood the log
        disconnects.inc()
        log.debug("%s %s: the client went away before sending its whole body", request.method, request.url.path)
        return problem(400, "the client went away before sending its whole body")


def create_app(runtime: Callable[[], Runtime] = get_runtime) -> FastAPI:
    """The app, reading the process's `Runtime` through `runtime` (tests pass their own)."""
    registry = CollectorRegistry()
    app = FastAPI(
        title="b24q",
        summary="Delivers message-state updates to Bitrix24 portals: the application's back end.",
        version="0.1.0",
        lifespan=_lifespan(Metrics(registry, portal_labels=0)),
        docs_url=None,  # served by `serve_docs`, from the app itself
        redoc_url=None,
    )
    app.state.metrics = registry  # what /metrics shows
    shared = keep(app, runtime)
    _answer_broken_bodies(app, registry)
    answer_refusals(app)
    serve_docs(app)
    app.include_router(appside.router(shared))
    app.include_router(intake.router)
    app.include_router(console.router)
    intake.document(app)
    app.include_router(operations)
    return app


app = create_app()
