"""The HTTP intake next to the Python producer, in one sitting, on one private redis-server (no worker, no
emulator): what posting a job over HTTP costs a producer compared with calling `tasks.producer` in-process.

- HTTP: `b24q serve` (uvicorn, a child process, access log on, as production runs it) on loopback, one
  keep-alive httpx client here; POST /v1/jobs of one job, one request after another (latency as the client
  sees it), and of 1,000-job arrays (jobs/s). Bodies are encoded before the clock starts: turning one's own
  objects into JSON is the producer's cost in any language.
- Python: `enqueue` of one job (latency) and `enqueue_many` of 1,000 jobs (jobs/s), in this process.

Both paths validate, look the portal up, write ledger records and publish through the same bulk path
(`enqueue_many`); the HTTP one adds parsing, the API key check and one GCRA reservation in Redis per
request (at a rate no request reaches: paid, never refusing). The two are interleaved, request by request
and array by array, so that both see the same machine.

Last, the same single POST to `b24q serve --workers 2`: uvicorn binds that socket itself, and only b24q's
protocol class (`edges.http.server`) keeps each small answer from waiting for the client's delayed ACK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.stack import CpuMeter, log
from edges.http import apikeys
from tasks.producer import enqueue, enqueue_many
from workers.celery import configure
from workers.localdev.redisserver import RedisServer, free_port
from workers.runtime import Runtime, set_runtime
from workers.settings import Settings

PORTAL = "intake.bitrix24.test"
ARRAY = 1000


@contextmanager
def serve(env: Mapping[str, str], log_path: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`b24q serve` on a free loopback port (env carries B24Q_HTTP_PORT), until it answers /healthz."""
    url = f"http://127.0.0.1:{env['B24Q_HTTP_PORT']}"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edges.cli", "serve", "--host", "127.0.0.1", *extra],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"b24q serve exited; see {log_path}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"b24q serve did not answer in 30 s; see {log_path}") from None
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _job(tag: str, i: int) -> dict[str, Any]:
    return {"portal": PORTAL, "code": "smsgw", "message_id": f"{tag}-{i}", "status": "delivered"}


def _one(tag: str, i: int) -> bytes:
    return json.dumps({"kind": "status-update", **_job(tag, i)}).encode()


def _array(tag: str) -> tuple[bytes, list[tuple[str, dict[str, Any]]]]:
    """The same 1,000 jobs as a POST body and as `enqueue_many`'s argument (distinct message ids per call, so
    ordering never supersedes anything)."""
    jobs = [_job(tag, i) for i in range(ARRAY)]
    return json.dumps([{"kind": "status-update", **j} for j in jobs]).encode(), [("status-update", j) for j in jobs]


def _post(client: httpx.Client, body: bytes) -> list[str]:
    answer = client.post("/v1/jobs", content=body)
    if answer.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:500]}")
    ids: list[str] = answer.json()["ids"]
    return ids


def _client(port: str, key: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)


def run(opts: Options) -> list[Table]:
    singles = 200 if opts.quick else 500
    arrays = 4 if opts.quick else 10
    multi = 50 if opts.quick else 100
    key, entry = apikeys.new()
    with RedisServer(appendonly=False) as server, tempfile.TemporaryDirectory(prefix="b24q-intake-") as tmp:
        log_dir = opts.dir_for("intake") or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        fields = {
            "redis_url": server.url,
            "client_id": "bench",
            "client_secret": "bench",
            "allow_private_portals": True,  # its portal is a name no DNS knows
            "api_keys": entry,
            "http_rate": 1_000_000.0,
            "http_burst": 1_000_000,
        }
        settings = Settings(**fields)  # type: ignore[arg-type]
        configure(settings)
        rt = Runtime(settings)
        set_runtime(rt)
        # the app gets the same settings as B24Q_* variables, as LocalStack passes them
        env = {**os.environ, **{f"B24Q_{k.upper()}": str(v) for k, v in fields.items()}}
        env.pop("REDIS_URL", None)
        try:
            rt.registry.add_oauth(PORTAL, f"https://{PORTAL}/rest/", "a", "r", time.time() + 3600)
            port = str(free_port())
            with (
                serve({**env, "B24Q_HTTP_PORT": port}, log_dir / "serve.log") as app,
                _client(port, key) as client,
            ):
                assert server.process is not None
                meter = CpuMeter({"app": app.pid, "redis": server.process.pid, "here": os.getpid()})
                # connections, scripts, imports, caches on both sides
                _post(client, _array("warm-http")[0])
                enqueue_many(_array("warm-py")[1])
                for i in range(20):
                    _post(client, _one("warm-http", ARRAY + i))
                    enqueue("status-update", _job("warm-py", ARRAY + i))

                log(f"intake: {singles} single jobs, POST and enqueue interleaved")
                http_lat: list[float] = []
                py_lat: list[float] = []
                for i in range(singles):
                    body = _one("http", i)
                    t0 = time.perf_counter()
                    _post(client, body)
                    http_lat.append((time.perf_counter() - t0) * 1000)
                    job = _job("py", i)
                    t0 = time.perf_counter()
                    enqueue("status-update", job)
                    py_lat.append((time.perf_counter() - t0) * 1000)

                log(f"intake: {arrays} arrays of {ARRAY} jobs, POST and enqueue_many interleaved")
                spent = {"http": 0.0, "py": 0.0}
                cpu = {side: {"app": 0.0, "redis": 0.0, "here": 0.0} for side in spent}

                def timed(side: str, call: Callable[[], list[str]]) -> None:
                    before = meter.sample()
                    t0 = time.perf_counter()
                    assert len(call()) == ARRAY
                    spent[side] += time.perf_counter() - t0
                    for name, used in meter.delta(before, meter.sample()).items():
                        cpu[side][name] += used

                for b in range(arrays):
                    tag = uuid.uuid4().hex[:8]
                    body, jobs = _array(f"{tag}-http")[0], _array(f"{tag}-py")[1]
                    # each side goes first every other time: neither always meets the other's leftovers
                    turns = [("http", partial(_post, client, body)), ("py", partial(enqueue_many, jobs))]
                    for side, call in turns if b % 2 == 0 else turns[::-1]:
                        timed(side, call)

            log(f"intake: {multi} single jobs to b24q serve --workers 2")
            port = str(free_port())
            with (
                serve({**env, "B24Q_HTTP_PORT": port}, log_dir / "serve-workers.log", "--workers", "2"),
                _client(port, key) as client,
            ):
                for i in range(10):
                    _post(client, _one("warm-multi", i))
                multi_lat = []
                for i in range(multi):
                    body = _one("multi", i)
                    t0 = time.perf_counter()
                    _post(client, body)
                    multi_lat.append((time.perf_counter() - t0) * 1000)
            recorded = rt.ledger.count()
        finally:
            rt.close()
            set_runtime(None)

    total = arrays * ARRAY
    http_bulk, py_bulk = total / spent["http"], total / spent["py"]
    http_cpu, py_cpu = cpu["http"], cpu["py"]
    per_job = 1000 / total  # CPU seconds over all arrays -> ms per job
    t = Table(
        f"HTTP intake (b24q serve) vs Python producer: status jobs into a private redis-server, no worker "
        f"running ({singles} single jobs, {arrays} x {ARRAY}-job arrays, interleaved)",
        ("metric", "HTTP: POST /v1/jobs", "Python: tasks.producer", "HTTP / Python"),
    )
    for q in (50, 99):
        h, p = percentile(http_lat, q), percentile(py_lat, q)
        t.add(f"one job, p{q} (ms)", fmt(h, 2), fmt(p, 2), ratio(h, p))
    t.add(f"{ARRAY}-job arrays (jobs/s)", fmt(http_bulk, 0), fmt(py_bulk, 0), ratio(http_bulk, py_bulk))
    h_cpu, p_cpu = (http_cpu["app"] + http_cpu["here"]) * per_job, py_cpu["here"] * per_job
    t.add("  CPU ms per job: app + client / producer", fmt(h_cpu, 3), fmt(p_cpu, 3), ratio(h_cpu, p_cpu))
    h_redis, p_redis = http_cpu["redis"] * per_job, py_cpu["redis"] * per_job
    t.add("  CPU ms per job: redis-server", fmt(h_redis, 3), fmt(p_redis, 3), ratio(h_redis, p_redis))
    py_p50 = percentile(py_lat, 50)
    m50 = percentile(multi_lat, 50)
    t.add(f"one job, p50, b24q serve --workers 2 (ms; {multi})", fmt(m50, 2), fmt(py_p50, 2), ratio(m50, py_p50))
    t.note(
        "HTTP latency is the client's (request written to answer read, loopback, one keep-alive connection); "
        f"the arrays' CPU: the app's process {http_cpu['app'] * per_job:.3f} ms per job, the client "
        f"{http_cpu['here'] * per_job:.3f} (psutil counts 10 ms ticks). Ledger records at the end: {recorded}."
    )
    return [t]
