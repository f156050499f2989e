"""Issue 5, unit level: the metrics observer fed by the real pipeline, the Redis collector against the
session redis, multiprocess aggregation across processes, the status snapshot, masked arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import redis
from celery.exceptions import Retry
from prometheus_client import CollectorRegistry, generate_latest

from tasks.jobs import KINDS
from workers import keys, redaction
from workers.delivery.calls import Call
from workers.errors import JobDeadLettered
from workers.events import add_observer, remove_observer
from workers.observe import status
from workers.observe.exposition import build_registry
from workers.observe.gauges import RedisCollector
from workers.observe.metrics import Metrics, PortalLabels
from workers.pipeline import run_job
from workers.runtime import Runtime
from workers.settings import Settings

UNREAD = KINDS["mark-unread"]


class Portal:
    """A portal for single calls: MESSAGE_ID 404 is unknown (permanent), 500 fails once (transient)."""

    def __init__(self) -> None:
        self.failed_once = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("MESSAGE_ID") == 404:
            return httpx.Response(400, json={"error": "ERROR_MESSAGE_NOT_FOUND", "error_description": "no such"})
        if body.get("MESSAGE_ID") == 500 and not self.failed_once:
            self.failed_once = True
            return httpx.Response(500, json={"error": "INTERNAL_SERVER_ERROR", "error_description": "oops"})
        return httpx.Response(200, json={"result": True, "time": {"operating": 0}})


def retry(countdown: float, exc: BaseException) -> NoReturn:
    raise Retry(exc=exc, when=countdown)  # what Celery's Task.retry raises


@pytest.fixture
def observed(settings: Settings, rclient: redis.Redis) -> Iterator[tuple[Runtime, CollectorRegistry]]:
    rt = Runtime(settings, rclient, transport=httpx.MockTransport(Portal()))
    rt.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 3600)
    registry = CollectorRegistry()
    metrics = Metrics(registry, portal_labels=10)
    add_observer(metrics)
    yield rt, registry
    remove_observer(metrics)


def run(rt: Runtime, job_id: str, message_id: int, portal: str = "acme") -> Any:
    rt.ledger.enqueued(job_id, UNREAD.name, portal)
    kwargs = {"portal": portal, "dialog_id": "chat1", "message_id": message_id}
    return run_job(UNREAD, job_id, (), kwargs, rt.job_services, retry)


def test_the_pipeline_feeds_the_observer(observed: tuple[Runtime, CollectorRegistry]) -> None:
    rt, registry = observed
    v = registry.get_sample_value
    for i in range(3):
        assert run(rt, f"ok{i}", i + 1) == {"outcome": "applied"}
    with pytest.raises(JobDeadLettered):
        run(rt, "dead1", 404)
    with pytest.raises(JobDeadLettered):
        run(rt, "nowhere", 1, portal="nowhere")
    with pytest.raises(Retry):
        run(rt, "flaky", 500)
    assert run_job(
        UNREAD, "flaky", (), {"portal": "acme", "dialog_id": "chat1", "message_id": 500}, rt.job_services, retry
    )

    assert v("b24q_jobs_total", {"kind": "mark-unread", "outcome": "applied"}) == 4
    assert v("b24q_jobs_total", {"kind": "mark-unread", "outcome": "dead"}) == 2
    assert v("b24q_job_runs_total", {"kind": "mark-unread"}) == 7
    assert v("b24q_dead_lettered_total", {"kind": "mark-unread", "reason": "ERROR_MESSAGE_NOT_FOUND"}) == 1
    assert v("b24q_dead_lettered_total", {"kind": "mark-unread", "reason": "UNKNOWN_PORTAL"}) == 1
    assert (
        v("b24q_job_retries_total", {"kind": "mark-unread", "reason": "transient", "code": "INTERNAL_SERVER_ERROR"})
        == 1
    )
    assert v("b24q_job_latency_seconds_count", {"kind": "mark-unread"}) == 4
    assert 0 < v("b24q_job_latency_seconds_sum", {"kind": "mark-unread"}) < 10  # type: ignore[operator]
    method = UNREAD.method
    assert v("b24q_rest_requests_total", {"method": method, "code": "ok"}) == 4
    assert v("b24q_rest_requests_total", {"method": method, "code": "ERROR_MESSAGE_NOT_FOUND"}) == 1  # a single call
    assert v("b24q_rest_requests_total", {"method": method, "code": "INTERNAL_SERVER_ERROR"}) == 1
    assert v("b24q_rest_request_duration_seconds_count", {"method": method}) == 6
    assert v("b24q_rest_commands_total", {"method": method}) == 6


def test_every_hook_has_a_metric_and_portal_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, portal_labels=2)
    v = registry.get_sample_value
    for portal in ("a", "b", "c", "d", "a"):
        m.limiter_wait(portal, 0.5)
        m.refused_503(portal)
    m.operating_hold("a", "im.dialog.unread", time.time() + 60)
    m.token_refresh("b", "refreshed")
    m.token_refresh("c", "refused")
    m.parked("c")
    m.job_finished("status-update", "c", "parked", 1.0)
    assert v("b24q_limiter_waits_total", {"portal": "a"}) == 2
    assert v("b24q_limiter_wait_seconds_total", {"portal": "a"}) == 1.0
    assert v("b24q_limiter_waits_total", {"portal": "(other)"}) == 2
    assert v("b24q_query_limit_exceeded_total", {"portal": "b"}) == 1
    assert v("b24q_operating_holds_total", {"portal": "a", "method": "im.dialog.unread"}) == 1
    assert v("b24q_token_refreshes_total", {"portal": "b", "outcome": "refreshed"}) == 1
    assert v("b24q_token_refreshes_total", {"portal": "(other)", "outcome": "refused"}) == 1
    assert v("b24q_parked_total", {"portal": "(other)"}) == 1
    assert v("b24q_jobs_total", {"kind": "status-update", "outcome": "parked"}) == 1
    assert v("b24q_job_latency_seconds_count", {"kind": "status-update"}) is None  # only applied jobs
    off = PortalLabels(0)
    assert {off("a"), off("b")} == {"(all)"}


def test_worker_processes_add_up_in_the_metrics_directory(tmp_path: Path, settings: Settings) -> None:
    """Two worker-like processes (prometheus_client imported first, as `celery` does) write to the
    directory; the endpoint's registry sums them."""
    script = textwrap.dedent(
        """
        import sys
        import celery.bin.celery  # imports Flower's plugin, and with it prometheus_client
        from workers.observe.exposition import install_worker
        from workers.events import events
        from workers.settings import Settings
        metrics = install_worker(Settings(metrics_dir=sys.argv[1]))
        assert metrics is not None
        for _ in range(int(sys.argv[2])):
            events.job_finished("status-update", "acme", "applied", 0.3)
        events.rest_request("acme", "batch", 50, "ok", 0.2)
        events.refused_503("acme")
        """
    )
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", script, str(tmp_path), str(n)], check=True, timeout=60)
    s = settings.model_copy(update={"metrics_dir": str(tmp_path)})
    registry = build_registry(s, workers=True, redis=False)
    v = registry.get_sample_value
    assert v("b24q_jobs_total", {"kind": "status-update", "outcome": "applied"}) == 7
    assert v("b24q_job_latency_seconds_bucket", {"kind": "status-update", "le": "0.5"}) == 7
    assert v("b24q_rest_commands_total", {"method": "batch"}) == 100
    assert v("b24q_query_limit_exceeded_total", {"portal": "acme"}) == 2
    assert v("b24q_redis_up") is None


def seed(rt: Runtime) -> None:
    r = rt.redis
    q = rt.settings.queue
    rt.registry.add_oauth("acme", "https://acme.bitrix24.com/rest/", "A0", "R0", time.time() + 1800)
    rt.registry.add_oauth("globex", "https://globex.bitrix24.com/rest/", "A1", "R1", time.time() + 3600)
    rt.registry.add_webhook("hooli", "https://hooli.bitrix24.com/rest/1/abcdefsecret/")
    rt.registry.mark_reauth("globex", "invalid_grant: refresh token expired")
    for i in range(5):
        rt.ledger.enqueued(f"a{i}", "mark-unread", "acme")
    rt.ledger.enqueued("g1", "mark-unread", "globex")
    for i in range(3):
        rt.parking.park("globex", f"p{i}", "b24q.mark_unread", {"portal": "globex"})
    for i, code in enumerate(["ERROR_MESSAGE_NOT_FOUND"] * 2 + ["OVERLOAD_LIMIT"]):
        rt.dead.add(f"d{i}", "b24q.status_update", "status-update", "acme", {}, code, "x", 1)
    r.rpush(q, *[b"m"] * 4)
    r.rpush(keys.queue(q, 6), *[b"m"] * 7)
    r.rpush(keys.queue(q, 9), b"m")
    r.hset(keys.UNACKED, mapping={"t1": "x", "t2": "x"})
    rt.holds.hold("acme", "im.dialog.unread", time.time() + 30)
    for job_id in ("h1", "h2", "h3"):  # jobs that ended (the backlog is back to 0)
        rt.ledger.enqueued(job_id, "mark-unread", "hooli")
    rt.ledger.finish("h1", "hooli", "applied")
    rt.ledger.finish("h2", "hooli", "superseded", by="h3")
    rt.ledger.finish("h3", "hooli", "superseded", by="h4")
    rt.ledger.finish("h3", "hooli", "superseded", by="h4")  # a second finish of the same job counts once
    for i in range(2):  # calls waiting for acme's next slot
        rt.calls.submit("acme", Call("im.dialog.unread", {"DIALOG_ID": "chat1", "MESSAGE_ID": i + 1}))
    for _ in range(10):
        rt.limiter.reserve("acme", rt.registry.get("acme").limits(rt.settings), max_wait=60)  # type: ignore[union-attr]


def test_the_collector_reads_the_pool_from_redis(runtime: Runtime) -> None:
    seed(runtime)
    registry = build_registry(runtime.settings, runtime, workers=False)
    v = registry.get_sample_value
    assert v("b24q_redis_up") == 1
    assert v("b24q_queue_depth", {"queue": "b24q", "priority": "0"}) == 4
    assert v("b24q_queue_depth", {"queue": "b24q", "priority": "6"}) == 7
    assert v("b24q_queue_depth", {"queue": "b24q", "priority": "9"}) == 1
    assert v("b24q_queue_depth", {"queue": "b24q", "priority": "3"}) == 0
    assert v("b24q_queue_unacked") == 2
    assert v("b24q_dead_letters", {"reason": "ERROR_MESSAGE_NOT_FOUND"}) == 2
    assert v("b24q_dead_letters", {"reason": "OVERLOAD_LIMIT"}) == 1
    assert v("b24q_portals", {"state": "active"}) == 2 and v("b24q_portals", {"state": "reauth"}) == 1
    assert v("b24q_portal_backlog_jobs", {"portal": "acme"}) == 5
    assert v("b24q_portal_parked_jobs", {"portal": "globex"}) == 3
    assert v("b24q_portal_reauth", {"portal": "globex"}) == 1 and v("b24q_portal_reauth", {"portal": "acme"}) == 0
    assert v("b24q_portal_held_methods", {"portal": "acme"}) == 1
    assert 8 <= v("b24q_portal_limiter_level", {"portal": "acme"}) <= 10  # type: ignore[operator]
    assert v("b24q_portal_token_expiry_timestamp_seconds", {"portal": "hooli"}) is None  # webhooks have none
    assert abs(v("b24q_portal_token_expiry_timestamp_seconds", {"portal": "acme"}) - time.time() - 1800) < 60  # type: ignore[operator]
    text = generate_latest(registry).decode()
    assert "A0" not in text and "abcdefsecret" not in text

    capped = CollectorRegistry()
    capped.register(RedisCollector(runtime, portal_labels=1))
    assert capped.get_sample_value("b24q_portal_backlog_jobs", {"portal": "(other)"}) == 1  # globex, hooli
    assert capped.get_sample_value("b24q_portal_parked_jobs", {"portal": "(other)"}) == 3
    off = CollectorRegistry()
    off.register(RedisCollector(runtime, portal_labels=0))
    assert off.get_sample_value("b24q_portal_backlog_jobs", {"portal": "(all)"}) == 6


def test_the_collector_survives_redis_being_down(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    rt = Runtime(down, redis.Redis.from_url(down.redis_url, socket_connect_timeout=0.5))
    registry = build_registry(down, rt, workers=False)
    assert registry.get_sample_value("b24q_redis_up") == 0


def test_status_snapshot_and_render(runtime: Runtime) -> None:
    seed(runtime)
    snap = status.snapshot(runtime)
    assert snap["queues"] == [{"name": "b24q", "depth": 12, "by_priority": {"0": 4, "3": 0, "6": 7, "9": 1}}]
    by_key = {p["key"]: p for p in snap["portals"]}
    assert by_key["globex"]["state"] == "reauth" and by_key["globex"]["parked"] == 3
    assert list(by_key["acme"]["held"]) == ["im.dialog.unread"]
    assert by_key["hooli"]["token_expires"] is None
    assert by_key["acme"]["waiting_calls"] == 2 and by_key["globex"]["waiting_calls"] == 0
    assert by_key["hooli"]["outcomes"] == {"applied": 1, "superseded": 2}  # what the ledger saw end
    assert by_key["acme"]["outcomes"] == {}
    assert "1/2/0" in status.render(snap)
    assert snap["dead_letters"] == {"total": 3, "by_reason": {"ERROR_MESSAGE_NOT_FOUND": 2, "OVERLOAD_LIMIT": 1}}
    snap["workers"] = {"answered": [], "timeout": 1.0}
    text = status.render(snap)
    assert "none answered" in text and "invalid_grant" in text and "OVERLOAD_LIMIT 1" in text
    assert "A0" not in text and "R1" not in text and "abcdefsecret" not in text
    assert redaction.redis_url("rediss://:pw@redis.example:6380/0") == "rediss://:***@redis.example:6380/0"
    assert status.snapshot(runtime, portals=["acme"])["portals"][0]["backlog"] == 5


@pytest.mark.parametrize(
    ("kwargs", "shown", "hidden"),
    [
        (
            {"portal": "acme", "connector": "wa", "line": 7, "messages": [{"im": {"chat_id": 1}}] * 30},
            ["'portal': 'acme'", "<30 messages>"],
            ["chat_id"],
        ),
        (
            {"portal": "acme", "code": "sms", "handler": "https://user:pw@sms.example.com/h/SECRETPATH?key=K"},
            ["https://sms.example.com/…"],
            ["SECRETPATH", "pw", "key=K"],
        ),
        ({"portal": "acme", "access_token": "TOKEN123", "auth": {"x": 1}}, ["'access_token': '***'"], ["TOKEN123"]),
        ({"portal": "acme", "description": "x" * 5000}, ["xxx…"], ["x" * 100]),
    ],
)
def test_published_arguments_are_masked(kwargs: dict[str, Any], shown: list[str], hidden: list[str]) -> None:
    headers = {"task": "b24q.sender_update", "argsrepr": "()", "kwargsrepr": repr(kwargs)}
    redaction.mask_published_arguments(sender="b24q.sender_update", body=((), kwargs, {}), headers=headers)
    text = headers["kwargsrepr"]
    assert len(text) <= redaction.MAX_REPR
    for s in shown:
        assert s in text
    for h in hidden:
        assert h not in text
    other = {"task": "myapp.task", "argsrepr": "()", "kwargsrepr": "{'token': 'T'}"}
    redaction.mask_published_arguments(sender="myapp.task", body=((), {"token": "T"}, {}), headers=other)
    assert other["kwargsrepr"] == "{'token': 'T'}"  # not b24q's to rewrite


def test_a_published_message_carries_the_masked_repr(settings: Settings, rclient: redis.Redis) -> None:
    from tasks.definitions import TASKS
    from workers.celery import app, configure
    from workers.settings import get_settings

    configure(settings)
    try:
        messages = [{"im": {"chat_id": 1, "message_id": 2}, "message": {"id": ["x"], "date": 1}, "chat": {"id": "c"}}]
        TASKS["delivery-confirmation"].apply_async(
            kwargs={"portal": "acme", "connector": "wa", "line": 7, "messages": messages * 10}, queue=settings.queue
        )
        raw = json.loads(rclient.lpop(settings.queue))  # type: ignore[arg-type]
        assert raw["headers"]["task"] == "b24q.delivery_confirmation"
        assert (
            raw["headers"]["kwargsrepr"]
            == "{'portal': 'acme', 'connector': 'wa', 'line': 7, 'messages': '<10 messages>'}"
        )
        assert raw["headers"]["argsrepr"] == "()"
        assert status.workers(app, timeout=0.2)["answered"] == []
    finally:
        configure(get_settings())
