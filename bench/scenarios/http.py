"""A REST request's cost to the worker: `RestClient` next to a plain `httpx.Client.post` of the same JSON body,
same sitting, against the emulator in its own process.

One thread sends one request after another to one portal (no rate limit, no latency, so the figure is the
client's and not the wait); the CPU it uses (`time.thread_time`: the socket waits do not count, their wake-ups
do) per request is the figure. One call, and a `batch` of four commands (a busy portal's request). Each variant
runs three times, alternating; the table gives the median.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.report import Table, fmt, ratio
from bench.scenarios import Options
from bench.stack import log, thread_cpu_ms
from workers.bitrix import querystring
from workers.bitrix.client import Credentials, RestClient
from workers.localdev.processes import Emulator

METHOD = "messageservice.message.status.update"
PARAMS = {"CODE": "sms", "MESSAGE_ID": "m1", "STATUS": "delivered"}


def run(opts: Options) -> list[Table]:
    n = 500 if opts.quick else 3000
    table = Table(
        f"http: worker CPU per REST request, one thread, {n:,} requests a run (median of 3)",
        ("request", "httpx.Client.post ms", "RestClient ms", "ratio"),
    )
    with tempfile.TemporaryDirectory(prefix="b24q-bench-http-") as tmp:
        emulator = Emulator(Path(tmp), ["--rate", "0", "--auto"])
        try:
            info = emulator.add_portal("http.bench.test", senders=["sms"])
            creds = Credentials(info["client_endpoint"], info["access_token"])
            url = creds.endpoint.rstrip("/") + "/"
            plain = httpx.Client(headers={"User-Agent": "b24q/0.1", "Accept": "application/json"})
            client = RestClient()
            commands = {f"j{i}": (METHOD, PARAMS) for i in range(4)}
            cmd = {key: f"{method}?{querystring.encode(params)}" for key, (method, params) in commands.items()}
            shapes: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
                (
                    "1 call",
                    lambda: plain.post(url + METHOD, json={**PARAMS, "auth": creds.access_token}).json(),
                    lambda: client.call(creds, METHOD, PARAMS),
                ),
                (
                    "batch of 4",
                    lambda: plain.post(url + "batch", json={"halt": 0, "cmd": cmd, "auth": creds.access_token}).json(),
                    lambda: client.batch(creds, commands),
                ),
            ]
            for name, baseline, ours in shapes:
                log(f"http: {name}")
                base: list[float] = []
                mine: list[float] = []
                for _ in range(3):
                    base.append(thread_cpu_ms(baseline, n, warmup=50))
                    mine.append(thread_cpu_ms(ours, n, warmup=50))
                b, m = statistics.median(base), statistics.median(mine)
                table.add(name, fmt(b, 3), fmt(m, 3), ratio(m, b))
            plain.close()
            client.close()
        finally:
            emulator.stop()
    table.note(
        "ratio: RestClient's CPU against httpx.Client.post's; RestClient also builds the batch's query strings and"
        " parses each answer into results"
    )
    return [table]
