"""The operator's console with a big pool: 1,000 portals and 10,000 dead letters, written straight through the
stores (registry, parking, ledger, dead letters) into a private redis-server; then `b24q serve` (a child
process, as production runs it) and one signed-in httpx client timing each page, one request after another.
The promise: every page answers within 300 ms at the 99th percentile."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx

from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.scenarios.intake import serve
from bench.stack import log
from edges.http import apikeys
from workers.localdev.redisserver import RedisServer, free_port
from workers.runtime import Runtime
from workers.settings import Settings

PORTALS = 1000
DEAD = 10_000
LIMIT_MS = 300.0
REASONS = ("ERROR_MESSAGE_NOT_FOUND", "INVALID_PAYLOAD", "APP_UNINSTALLED", "ACCESS_DENIED")


def fill(rt: Runtime) -> None:
    """The portals (every tenth in reauth, with parked jobs), finished jobs, and the dead letters."""
    for n in range(PORTALS):
        key = f"portal-{n:04}"
        # loopback endpoints: no DNS here, and the console never calls a portal
        rt.registry.add_oauth(key, f"http://127.0.0.1:9/{key}/rest/", "acc", "ref", time.time() + 3600, f"m{n}", key)
        rt.registry.set_aliases(key, f"{key}.bitrix24.com", f"m{n}")
        if n % 10 == 0:
            rt.registry.mark_reauth(key, "invalid_grant: the refresh token was revoked")
            for j in range(5):
                rt.parking.park(key, f"park-{n}-{j}", "b24q.status_update", {"portal": key, "message_id": f"{j}"})
        for j in range(3):
            rt.ledger.enqueued(f"job-{n}-{j}", "status-update", key)
            rt.ledger.finish(f"job-{n}-{j}", key, ("applied", "superseded", "dead")[j])
    for n in range(DEAD):
        key = f"portal-{n % PORTALS:04}"
        payload = {"portal": key, "code": "smsgw", "message_id": f"d{n}", "status": "delivered"}
        rt.dead.add(f"dead-{n}", "b24q.status_update", "status-update", key, payload, REASONS[n % 4], "refused", 1)


def run(opts: Options) -> list[Table]:
    requests = 30 if opts.quick else 100
    admin, entry = apikeys.new(admin=True)
    with RedisServer(appendonly=False) as server, tempfile.TemporaryDirectory(prefix="b24q-console-") as tmp:
        fields = {
            "redis_url": server.url,
            "api_keys": entry,
            "http_rate": 0.0,
            "client_secret": "bench-secret",
            "allow_private_portals": True,
        }
        rt = Runtime(Settings(**fields))  # type: ignore[arg-type]
        try:
            started = time.monotonic()
            fill(rt)
            log(f"console: {PORTALS} portals, {DEAD} dead letters written in {time.monotonic() - started:.1f}s")
        finally:
            rt.close()
        env = {**os.environ, **{f"B24Q_{k.upper()}": str(v) for k, v in fields.items()}}
        env.pop("REDIS_URL", None)
        pages = {
            "portals, page 1": "/console/portals",
            "portals, page 20 (last)": "/console/portals?page=20",
            "portals, search by domain": "/console/portals?q=portal-0500.bitrix24.com",
            "one portal (reauth, parked, dead)": "/console/portals/portal-0500",
            "dead letters, page 1": "/console/dead",
            "dead letters by reason, page 50": "/console/dead?reason=INVALID_PAYLOAD&page=50",
            "dead letters of a portal": "/console/dead?portal=portal-0007",
            "a job": "/console/jobs?id=dead-77",
            "live counts (JSON)": "/console/live.json",
        }
        table = Table(
            f"console: {PORTALS} portals, {DEAD} dead letters; {requests} requests per page, one at a time",
            ("page", "limit p99 ms", "p50 ms", "p99 ms", "ratio"),
        )
        port = str(free_port())
        with (
            serve({**env, "B24Q_HTTP_PORT": port}, Path(tmp) / "serve.log"),
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            signed = client.post("/console/login", data={"key": admin})
            assert signed.status_code == 303, signed.text
            for name, path in pages.items():
                assert client.get(path).status_code == 200, path  # warm: templates compiled, connection open
                took = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    answer = client.get(path)
                    took.append((time.perf_counter() - t0) * 1000)
                    assert answer.status_code == 200, path
                p99 = percentile(took, 99)
                table.add(name, fmt(LIMIT_MS, 0), fmt(percentile(took, 50)), fmt(p99), ratio(p99, LIMIT_MS))
                log(f"console: {name}: p99 {p99:.1f} ms")
        table.note("ratio: p99 / limit (below 1 keeps the promise); `b24q serve` with its access log, as deployed")
    return [table]
