"""An app release reaching every portal: 1,000 portals install the application through its install event,
8 at a time, as Bitrix24's servers post them (issue 21's target: all 1,000 in at most 20 s, none refused).

The emulator posts each ONAPPINSTALL to `b24q serve`'s /b24/install (a child process, access log on); b24q
verifies the token with one `app.info`, registers the portal, binds its two events and enqueues its SMS
provider (`messageservice.sender.add`, run by two workers at the default concurrency). Timed: the handler's
answers as the emulator sees them, and the moment every portal is ready (registered, its provider added).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from bench.report import Table, fmt, percentile, ratio
from bench.scenarios import Options
from bench.stack import log
from workers.localdev.localstack import LocalStack
from workers.runtime import get_runtime

PROVIDER = {"code": "benchsms", "name": "bench SMS", "handler": "https://sms.example.com/b24"}
CONCURRENT = 8
TARGET_SECONDS = 20.0


def run(opts: Options) -> list[Table]:
    count = 200 if opts.quick else 1000
    log_dir = opts.dir_for("installs")
    stack = LocalStack(settings={"providers": json.dumps([PROVIDER])}, log_dir=str(log_dir) if log_dir else None)
    stack.__enter__()
    try:
        stack.start_workers(2)
        stack.start_http()
        domains = [f"install-{i}.bitrix24.test" for i in range(count)]
        for domain in domains:
            stack.emulator.add_portal(domain, auto_messages=True)
        log(f"installs: {count} portals, {CONCURRENT} installs at a time")

        def install(domain: str) -> tuple[float, int]:
            start = time.monotonic()
            answer = stack.emulator.admin("POST", f"portals/{domain}/install", {})
            return time.monotonic() - start, int(answer.get("handler_status") or 0)

        start = time.monotonic()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(pool.map(install, domains))
        answered = time.monotonic() - start
        registry = get_runtime().registry
        pending = set(domains)
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            for domain in list(pending):
                key = registry.resolve(domain)
                portal = registry.get(key) if key else None
                if portal is not None and portal.state == "active" and not portal.providers_pending:
                    pending.discard(domain)
            if pending:
                time.sleep(0.2)
        ready = time.monotonic() - start
    finally:
        stack.__exit__(None, None, None)

    latencies = [seconds for seconds, _ in answers]
    refused = sum(status != 200 for _, status in answers)
    table = Table(f"installs: {count} portals install the app, {CONCURRENT} at a time")
    table.add(
        "handler answered all (s)",
        fmt(TARGET_SECONDS * count / 1000),
        fmt(answered),
        ratio(answered, TARGET_SECONDS * count / 1000),
    )
    table.add("every portal ready, provider added (s)", "", fmt(ready))
    table.add("installs/s", "", fmt(count / answered))
    table.add("handler p50 / p99 (s)", "", f"{fmt(percentile(latencies, 50), 3)} / {fmt(percentile(latencies, 99), 3)}")
    table.add("refused", "0", str(refused))
    table.add("not ready after 300 s", "0", str(len(pending)))
    table.note(f"limit: issue 21's target, {TARGET_SECONDS:g} s for 1,000 installs (scaled to {count})")
    return [table]
