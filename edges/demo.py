"""`b24q demo`: the main job on the embedded default, end to end, with visible progress.

Starts a private Redis (unless `B24Q_REDIS_URL`/`REDIS_URL` names one), the emulator portal, the HTTP app
and a pool of worker processes; installs the application on two portals (the emulator posts ONAPPINSTALL
to the app, which registers them and their SMS provider); shows bad input refused at enqueue time;
enqueues a realistic mix of all four job kinds; expires a portal's tokens mid-run so the pool heals
itself; prints progress while the jobs run and a table of outcomes at the end (`edges.demoreport`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

from edges.demoreport import Batch, report
from edges.http import apikeys
from tasks.producer import enqueue, enqueue_many
from workers import redaction
from workers.errors import JobRefused
from workers.localdev.localstack import LocalStack
from workers.runtime import Runtime, get_runtime

PORTALS = {"acme.bitrix24.test": 0.7, "globex.bitrix24.test": 0.3}
#: the names the README's examples use for the demo's portals (registered as aliases, next to the domain)
ALIASES = {"acme.bitrix24.test": "acme", "globex.bitrix24.test": "globex"}
SENDER = "smsgw"
#: the SMS provider every portal gets at install (B24Q_PROVIDERS), with messageservice.sender.add
PROVIDERS = [{"code": SENDER, "name": "SMS gateway", "handler": "https://sms.example.com/b24"}]


def _jobs(count: int, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """`count` jobs (a message's two reports are two jobs)."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    i = -1
    while len(jobs) < count:
        i += 1
        portal = rng.choices(list(PORTALS), weights=list(PORTALS.values()))[0]
        roll = rng.random()
        if roll < 0.5:
            # a gateway's delivery reports: often "sent" first, then the final status (README: Ordering)
            final = rng.choice(["delivered", "delivered", "undelivered", "failed"])
            reports = ["sent", final] if rng.random() < 0.5 else [final]
            for status in reports:
                jobs.append(
                    (
                        "status-update",
                        {"portal": portal, "code": SENDER, "message_id": f"sms-{i:06d}", "status": status},
                    )
                )
        elif roll < 0.75:
            messages = [
                {
                    "im": {"chat_id": 1000 + i % 50, "message_id": 50000 + i},
                    "message": {"id": [f"wa-{i}"], "date": int(time.time())},
                    "chat": {"id": f"chan-{i % 50}"},
                }
            ]
            jobs.append(
                (
                    "delivery-confirmation",
                    {"portal": portal, "connector": "waconnector", "line": 7, "messages": messages},
                )
            )
        elif roll < 0.78:
            # a sender this app never registered: the portal refuses it, so it ends as a dead letter
            code = SENDER if rng.random() < 0.7 else "smsgw.retired"
            jobs.append(
                ("sender-update", {"portal": portal, "code": code, "handler": f"https://sms.example.com/b24/{i}"})
            )
        else:
            jobs.append(
                (
                    "mark-unread",
                    {"portal": portal, "dialog_id": rng.choice(["chat12", "sg3", "42"]), "message_id": 9000 + i},
                )
            )
    return jobs[:count]


def _ideal_seconds(jobs: list[tuple[str, dict[str, Any]]], stack: LocalStack) -> float:
    """The fastest the portals' buckets allow: `batch_max` commands per request (delivery confirmations
    for one connector and line share a command), the burst at once, then `rate` requests per second."""
    s = stack.settings
    worst = 0.0
    for portal in {p["portal"] for _, p in jobs}:
        plain = 0
        merged: Counter[tuple[Any, ...]] = Counter()
        for kind, payload in jobs:
            if payload["portal"] != portal:
                continue
            if kind == "delivery-confirmation" and s.merge_max > 1:
                merged[(payload["connector"], payload["line"])] += len(payload["messages"])
            else:
                plain += 1
        commands = plain + sum(-(-n // s.merge_max) for n in merged.values())
        rt = stack_runtime()
        limits = rt.portals(rt.registry.resolve(portal) or portal).limits(s)
        requests = -(-commands // s.batch_max)
        worst = max(worst, (requests - limits.our_burst) / limits.our_rate)
    return max(worst, 0.0)


def _states(stack: LocalStack, ids: list[str]) -> Counter[str]:
    return Counter(s or "?" for (s,) in stack_runtime().ledger.states(ids).values())


def stack_runtime() -> Runtime:
    return get_runtime()


def run(args: argparse.Namespace) -> int:
    redis_url = os.environ.get("B24Q_REDIS_URL") or os.environ.get("REDIS_URL")
    broker: dict[str, Any] = {}
    if getattr(args, "broker", ""):
        # queues of the demo's own: a pool's `b24q` queues on the same RabbitMQ are never touched
        broker = {"broker_url": args.broker, "queue": f"b24q-demo-{os.getpid()}"}
    print(
        "b24q demo: starting",
        "Redis at " + redis_url if redis_url else "a private Redis",
        f"+ RabbitMQ at {redaction.redis_url(args.broker)} (queue {broker['queue']})" if broker else "",
        "+ the Bitrix24 emulator + worker processes…",
        flush=True,
    )
    api_key, api_entry = apikeys.new()
    admin_key, admin_entry = apikeys.new(admin=True)  # the operator's console's
    settings = {
        "gather_ms": 20,
        "providers": json.dumps(PROVIDERS),
        "api_keys": f"{api_entry},{admin_entry}",
        **broker,
    }
    with LocalStack(redis_url=redis_url, settings=settings) as stack:
        http_url = _start(stack, args)
        _install(stack)
        _show_refusals()
        batch = _enqueue(stack, args.jobs)
        elapsed = _watch(stack, batch)
        outcome = report(stack, stack_runtime(), batch, elapsed, list(PORTALS))
        if not args.keep:
            print(
                "The demo's Redis, emulator, HTTP app and workers stop now. `b24q demo --keep` keeps them up, starts "
                "Flower (127.0.0.1, with a login)\nand prints the lines to paste so that the README's examples run "
                "against them. Flower for a pool of your own (B24Q_REDIS_URL set):\n"
                "  FLOWER_BASIC_AUTH=ops:change-me celery -A workers flower --address=127.0.0.1 --port=5555"
            )
            return _exit_code(outcome)
        extra = {"B24Q_BROKER_URL": args.broker, "B24Q_QUEUE": broker["queue"]} if broker else {}
        _keep(
            stack,
            args.flower_port,
            http_url,
            admin_key,
            paste_block(stack.settings.redis_url, api_key, http_url, extra),
        )
    return _exit_code(outcome)


def _start(stack: LocalStack, args: argparse.Namespace) -> str:
    """The workers and the HTTP app started; the app's URL."""
    print(f"  emulator: {stack.emulator.url}   redis: {stack.settings.redis_url}   logs: {stack.dir}")
    stack.start_workers(args.workers, concurrency=stack.settings.worker_concurrency)
    print(
        f"  {args.workers} worker processes ready (celery -A workers worker, threads pool, "
        f"{stack.settings.worker_concurrency} threads each)"
    )
    http = stack.start_http(_free_or_any(args.http_port, "the HTTP app"))
    print(f"  HTTP app ready: {http.url} (uvicorn edges.http.app:app; install handler /b24/install)")
    return http.url


def _install(stack: LocalStack) -> None:
    """The application installed on each portal, as Bitrix24 installs it (the emulator posts ONAPPINSTALL)."""
    for domain in PORTALS:
        # auto_messages: the portal knows any message id of a registered sender (the README's too)
        installed = stack.install_portal(domain, token_ttl=3600, auto_connectors=True, auto_messages=True)
        stack_runtime().registry.set_aliases(installed["key"], ALIASES[domain])
        portal = stack_runtime().registry.get(installed["key"])
        assert portal is not None
        limits = portal.limits(stack.settings)
        print(
            f"  installed on {domain} (alias {ALIASES[domain]!r}): ONAPPINSTALL → member_id "
            f"{portal.key[:12]}…, plan {portal.plan} from app.info ({limits.rate:g} req/s, burst "
            f"{limits.burst}), SMS provider {SENDER} registered"
        )
    print()


def _show_refusals() -> None:
    print("Bad input is refused at enqueue time, before it reaches the queue:")
    for kind, payload in (
        ("status-update", {"portal": "acme.bitrix24.test", "code": SENDER, "message_id": "x1", "status": "read"}),
        ("mark-unread", {"portal": "acme.bitrix24.test", "dialog_id": "user5", "message_id": 0}),
        ("sender-update", {"portal": "nowhere.bitrix24.test", "code": SENDER, "name": "x"}),
    ):
        try:
            enqueue(kind, payload)
        except JobRefused as exc:
            print(f"  refused: {exc}")
    print()


def _enqueue(stack: LocalStack, count: int) -> Batch:
    jobs = _jobs(count, random.Random(7))
    start = time.monotonic()
    ids = enqueue_many(jobs)
    enqueue_s = time.monotonic() - start
    print(
        f"Enqueued {len(ids)} jobs in {enqueue_s:.1f}s "
        f"({', '.join(f'{n} {k}' for k, n in Counter(k for k, _ in jobs).most_common())})"
    )
    ideal = _ideal_seconds(jobs, stack)
    print(
        f"Ideal time at the portals' limits: {ideal:.1f}s (each portal: {stack.settings.batch_max} commands per "
        f"request, where delivery confirmations for one line share a command; 45 requests at once, then 2/s; "
        f"every job counted, though a job superseded by a newer report for the same state is never sent)\n"
    )
    return Batch(jobs, ids, start, enqueue_s, ideal)


def _watch(stack: LocalStack, batch: Batch) -> float:
    """A line of progress whenever it changes, until every job has an outcome (or 600 s); the seconds taken.
    Acme's tokens expire at the portal midway, so the pool is seen to heal itself."""
    ids, start = batch.ids, batch.start
    expired = False
    last = ""
    while True:
        states = _states(stack, ids)
        finished = states["applied"] + states["superseded"] + states["dead"] + states["parked"]
        elapsed = time.monotonic() - start
        if not expired and finished > len(ids) * 0.4:
            stack.emulator.expire("acme.bitrix24.test")  # tokens expire mid-run: the pool heals itself
            expired = True
            print("  (acme's access token just expired at the portal; watch the refresh count)")
        counters = {d: stack.emulator.state(d)["counters"] for d in PORTALS}
        line = (
            f"  {elapsed:5.1f}s  applied {states['applied']:>5}  superseded {states['superseded']:>5}  "
            f"dead {states['dead']:>3}  "
            f"parked {states['parked']:>3}  waiting {len(ids) - finished:>5}  | portal requests "
            f"{sum(c['accepted'] for c in counters.values()):>4}  503s "
            f"{sum(c['refused_503'] for c in counters.values())}  refreshes "
            f"{sum(c['refreshes'] for c in counters.values())}"
        )
        if line != last:
            print(line, flush=True)
            last = line
        if finished >= len(ids) or elapsed > 600:
            break
        time.sleep(1.0)
    return time.monotonic() - start


def _keep(stack: LocalStack, flower_port: int, http_url: str, admin_key: str, paste: str) -> None:
    """--keep: Flower started, the lines to use the stack printed, and everything up until Ctrl-C."""
    login = f"ops:{secrets.token_urlsafe(12)}"
    flower = stack.start_flower(_free_or_any(flower_port, "Flower"), login)
    print(f"\nFlower: {flower.url}  (user {login.split(':')[0]}, password {login.split(':', 1)[1]})")
    print(f"Operator's console: {http_url}/console  (sign in with the admin key {admin_key})")
    print("--keep: everything stays up until Ctrl-C. To use it from another shell, paste:\n")
    print(paste, flush=True)
    # Ctrl-C or a plain `kill`: either way the stack's processes are stopped, none left behind
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def _exit_code(outcome: dict[str, Counter[str]]) -> int:
    return 0 if outcome and sum(c["applied"] for c in outcome.values()) > 0 else 1


def paste_block(redis_url: str, api_key: str, http_url: str, extra: dict[str, str] | None = None) -> str:
    """The lines `b24q demo --keep` prints for another shell: the README's examples then run as written
    (`extra`: more variables, the broker's when the demo runs on RabbitMQ)."""
    lines = []
    if sys.prefix != sys.base_prefix:  # the venv this demo runs in: `b24q`, `celery` and the Python examples
        lines.append(f". {sys.prefix}/bin/activate")
    lines += [
        f"export B24Q_REDIS_URL={redis_url}",
        f"export B24Q_API_KEY={api_key}",
        f"export B24Q_HTTP_URL={http_url}",
        *(f"export {name}={value}" for name, value in (extra or {}).items()),
    ]
    return "\n".join(lines)


def _free_or_any(port: int, what: str) -> int:
    """`port` if it is free on 127.0.0.1, else 0 (any free port), saying so."""
    if port == 0:
        return 0
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            print(f"  (port {port} is taken: {what} listens on another, shown below)")
            return 0
    return port
