"""The contract is the server: what `/openapi.json` says each route answers (codes, media types, bodies,
headers) is what a real uvicorn server answers, to requests schemathesis generates from it with every check
it has (with a valid key, none and a wrong one), to unknown paths and methods, and with Redis gone; and the
documentation pages work with no internet access."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from edges.http.docs import ASSETS
from edges.http.problems import RETRY_UNAVAILABLE
from tests.test_http_intake import (  # the fixtures: a real server on loopback, its Runtime and two portals
    ACME,
    KEY,
    Server,
    is_problem,
    queued,
    rt,
    serve,
    server,
    settings,
    status,
)
from workers.localdev.redisserver import RedisServer
from workers.runtime import Runtime
from workers.settings import Settings

__all__ = ["rt", "serve", "server", "settings"]  # fixtures, imported for pytest

ROOT = Path(__file__).parent.parent.parent
load_all_checks()
#: Every check schemathesis has (status codes, content types, response schemas and headers conformance,
#: positive data accepted, negative data refused, auth not ignored, ...), classes aside (stateful ones).
ALL_CHECKS = [check for check in CHECKS.get_all() if callable(check) and not isinstance(check, type)]


def operations(server: Server) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation the app's OpenAPI document names."""
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    return [(method.upper(), path, op) for path, ops in document["paths"].items() for method, op in ops.items()]


# --- Redis down: 503 problem+json on every route -----------------------------------------------------------

#: A valid request for each operation of the document: its path (ids filled in) and what it sends.
VALID: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("POST", "/v1/jobs"): ("/v1/jobs", {"json": status()}),
    ("GET", "/v1/jobs"): ("/v1/jobs", {"params": {"ids": "a,b"}}),
    ("GET", "/v1/jobs/{job_id}"): ("/v1/jobs/a", {}),
    ("POST", "/v1/dead/{job_id}/replay"): ("/v1/dead/a/replay", {}),
    ("POST", "/b24/install"): (
        "/b24/install",
        {
            "data": {
                "event": "ONAPPINSTALL",
                "auth[member_id]": "m-acme",
                "auth[access_token]": "access",
                "auth[refresh_token]": "refresh",
                "auth[application_token]": "app-token",
                "auth[client_endpoint]": "https://acme.bitrix24.com/rest/",
                "auth[domain]": "acme.bitrix24.com",
            }
        },
    ),
    ("POST", "/b24/events"): (
        "/b24/events",
        {"data": {"event": "ONAPPUNINSTALL", "auth[member_id]": ACME, "auth[application_token]": "app-token"}},
    ),
    ("GET", "/healthz"): ("/healthz", {}),
    ("GET", "/readyz"): ("/readyz", {}),
    ("GET", "/metrics"): ("/metrics", {}),
}


@pytest.fixture
def gone(settings: Settings) -> Iterator[Settings]:
    """Settings naming a redis-server of this test's own, killed before the test uses it (the session's stays)."""
    own = RedisServer(appendonly=False).start()
    try:
        url = own.url
        own.kill()
        yield settings.model_copy(update={"redis_url": url})
    finally:
        own.close()


@pytest.mark.parametrize("http_rate", [10.0, 0.0], ids=["key-limited", "unlimited"])
def test_with_redis_down_every_route_answers_503_problem_json(
    serve: Callable[[Runtime], Server], gone: Settings, http_rate: float
) -> None:
    """A key's rate is a Redis call before the route runs (an unlimited key skips it: then the route's own
    calls meet the dead Redis); either way every route that needs Redis is 503 with Retry-After, /readyz
    too, and only /healthz and /metrics, which do not need it, answer 200."""
    import redis

    dead = serve(Runtime(gone.model_copy(update={"http_rate": http_rate}), redis.Redis.from_url(gone.redis_url)))
    with httpx.Client(base_url=dead.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        for method, path, operation in operations(dead):
            url, request = VALID[(method, path)]
            answer = client.request(method, url, **request)
            if "503" in operation["responses"]:
                assert is_problem(answer, 503), (method, path)
                assert answer.headers["retry-after"] == str(RETRY_UNAVAILABLE)
            else:
                assert answer.status_code == 200, (method, path, answer.text)
        assert {path for _, path, _ in operations(dead)} >= {"/v1/jobs", "/b24/install", "/readyz"}


# --- 404 and 405 ----------------------------------------------------------------------------------------


def test_unknown_paths_and_methods_are_problems_and_allow_names_every_method(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        is_problem(client.get("/no/such/path"), 404)
        is_problem(client.get("/v1/jobs/a/b"), 404)
        for method in ("OPTIONS", "PUT", "DELETE", "PATCH"):
            answer = client.request(method, "/v1/jobs")
            is_problem(answer, 405)
            assert answer.headers["allow"] == "GET, POST", method  # two routes
        answer = client.get("/b24/events")
        assert is_problem(answer, 405) and answer.headers["allow"] == "POST"
        answer = client.post("/healthz")
        assert is_problem(answer, 405) and answer.headers["allow"] == "GET"


# --- what the document declares ---------------------------------------------------------------------------


def test_every_answer_is_declared_with_its_media_type(server: Server) -> None:
    declared = {(m, p): op["responses"] for m, p, op in operations(server)}
    assert set(declared[("GET", "/metrics")]["200"]["content"]) == {"text/plain"}
    metrics = httpx.get(f"{server.url}/metrics", timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    for route in ("/b24/install", "/b24/events"):
        responses = declared[("POST", route)]
        assert set(responses) == {"200", "202", "400", "401", "403", "409", "413", "429", "503"}, route
        assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EventAnswer"}
        assert all(set(r["content"]) == {"application/problem+json"} for s, r in responses.items() if s[0] != "2")
    for (_, path), responses in declared.items():
        if path.startswith("/v1/"):
            assert {"401", "429", "503"} <= set(responses), path
            assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]


# --- /docs and /redoc offline ------------------------------------------------------------------------------


def test_docs_pages_load_every_asset_from_the_app_itself(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        loaded: set[str] = set()
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
            urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
            urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html.text)  # the document Swagger UI loads
            assert urls, page
            for url in urls:
                assert not re.match(r"^(https?:)?//", url), f"{page} loads {url} from another host"
                answer = client.get(url)
                assert answer.status_code == 200, url
                loaded.add(url.rsplit("/", 1)[-1])
                kind = answer.headers["content-type"]
                if url.endswith(".js"):
                    assert kind.startswith("text/javascript") and len(answer.content) > 100_000, url
                elif url.endswith(".css"):
                    assert kind.startswith("text/css"), url
                elif url.endswith(".png"):
                    assert kind == "image/png", url
        assert set(ASSETS) <= loaded
        assert is_problem(client.get("/docs/assets/..%2Fcore.py"), 404)
        assert is_problem(client.get("/docs/assets/core.py"), 404)


# --- generated requests, every check --------------------------------------------------------------------

WRONG = "b24q_" + "x" * 43


#: A portal name as the job schemas take it: what a generated job names is pointed at a registered portal
#: only if it is one, so that a job refused for its portal's form stays refused.
PORTAL_NAME = re.compile(r"^[A-Za-z0-9.\-_:]{1,255}$")


def as_of_now(job: Any) -> None:
    """Point a generated job at what the schema cannot say: which portals are registered (`acme`), and what
    time it is (a number `at` at most now: the schema sets it no maximum, so a number ahead of now is never
    what a negative case made wrong, and a schema-valid job of any case may carry one)."""
    if not isinstance(job, dict):
        return
    if isinstance(job.get("portal"), str) and PORTAL_NAME.match(job["portal"]):
        job["portal"] = ACME
    at = job.get("at")
    if isinstance(at, float | int) and not isinstance(at, bool) and at > time.time():
        job["at"] = time.time()


def _without_credentials(case: Any) -> None:
    """Remove the credentials schemathesis generated: the run's own are sent instead (or none), so that its
    `ignored_auth` check knows them for the caller's and tries the route without them and with wrong ones."""
    generated = case.headers or {}
    case.headers = {k: v for k, v in generated.items() if k.lower() not in ("authorization", "x-api-key")}


@pytest.mark.parametrize(("key", "runs"), [(KEY, 200), (None, 30), (WRONG, 30)], ids=["key", "no-key", "wrong-key"])
def test_generated_requests_pass_every_check_and_refused_ones_touch_nothing(
    server: Server, rt: Runtime, key: str | None, runs: int
) -> None:
    """Requests schemathesis generates from /openapi.json for every route, valid and invalid, answered as the
    document says (every check of schemathesis: no 5xx, codes, media types, bodies and headers as declared,
    valid input accepted, invalid refused); every refusal leaves the queue and the ledger as they were, and
    every 202 enqueued each of its ids exactly once, and the same POST again (its Idempotency-Key) gets the same
    ids and enqueues nothing. Valid posts are drawn more often, their jobs pointed at a registered portal and
    their `at` kept from the future, so that some are accepted (derandomized: the same examples on every
    run)."""
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    posts = api["/v1/jobs"]["POST"].as_strategy(GenerationMode.POSITIVE)
    cases = st.one_of(posts, posts, api.as_strategy(GenerationMode.POSITIVE), api.as_strategy(GenerationMode.NEGATIVE))
    credentials = {"Authorization": f"Bearer {key}"} if key is not None else {}
    seen: Counter[int] = Counter()

    @examples(
        max_examples=runs, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=cases, again=st.booleans())
    def requests_from_the_document(case: Any, again: bool) -> None:
        if case.method == "POST" and case.path == "/v1/jobs" and isinstance(case.body, dict | list):
            for job in case.body if isinstance(case.body, list) else [case.body]:
                as_of_now(job)
        _without_credentials(case)
        if "Idempotency-Key" in case.headers:  # each request its own key: a key reused is tried below
            case.headers["Idempotency-Key"] = case.headers["Idempotency-Key"][:200] + uuid.uuid4().hex
        before, records = queued(rt), rt.ledger.count()
        response = case.call(base_url=server.url, headers=credentials)
        seen[response.status_code] += 1
        case.validate_response(response, checks=ALL_CHECKS, headers=credentials)
        after = queued(rt)
        if 400 <= response.status_code < 500:
            assert after == before and rt.ledger.count() == records
        if response.status_code == 202:
            ids = response.json()["ids"]
            assert after - before == Counter(dict.fromkeys(ids, 1))
            if again and "Idempotency-Key" in case.headers:  # the same request again: the same ids, no job
                retried = case.call(base_url=server.url, headers=credentials)
                case.validate_response(retried, checks=ALL_CHECKS, headers=credentials)
                assert retried.status_code == 202 and retried.json()["ids"] == ids
                assert retried.headers.get("idempotent-replayed") == ["true"] and queued(rt) == after

    requests_from_the_document()
    if key == KEY:
        assert seen[202] and seen[422] and seen[404], seen  # accepted, refused, and looked up
    else:
        assert seen[401] and not seen[202], seen


# --- the schemathesis command, every phase but the stateful one --------------------------------------------


def test_the_schemathesis_command_with_all_checks_finds_nothing(server: Server, tmp_path: Path) -> None:
    """`schemathesis run --checks all` as a CI job would run it against the app, with its examples and coverage
    phases too (the property test above draws from the fuzzing phase only): boundary values of every
    parameter, missing required headers, and methods a path does not have (405 with an `Allow` that names
    them). With a valid key (no key and a wrong one: the property test above). Bounded: a fixed seed and a
    few examples per operation. Jobs pointed at a registered portal and
    idempotency keys made unique by `tests.security.schemathesis_hooks`."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{server.url}/openapi.json",
        "--checks=all",
        "--phases=examples,coverage,fuzzing",
        "--max-examples=15",
        "--seed=24",
        "--generation-deterministic",
        "--workers=1",
        "--no-color",
        "--suppress-health-check=all",
        f"--header=Authorization: Bearer {KEY}",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.security.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    # run in tmp_path: the command keeps what it replays in ./.schemathesis
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
