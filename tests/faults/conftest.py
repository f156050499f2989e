"""Fault-suite helpers: stacks tuned for fast recovery, a mixed workload whose every job the emulator can
count, and a figures file that docs/reliability.md quotes.

Each fault test builds its own LocalStack (it kills workers, Redis or the OAuth server, so stacks are not
shared) and bounds every wait, so the suite stays within its CI budget (4 minutes on 2 cores).

`B24Q_FAULTS_AT_DEFAULTS=1` runs the same tests at the production defaults instead (docs/reliability.md
quotes both figures): FAULT's shortcuts are replaced by the `Settings` defaults, a setting a test passes is
kept only when the test's mechanism needs it (`MECHANISM`), waits follow the stack's settings
(`settle_bound`), and the figures are recorded under "<test> [defaults]". Not for CI: it takes minutes a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks import producer
from tests.integration.conftest import FAST, RABBITMQ_URL
from workers import rabbitmq
from workers.localdev.localstack import LocalStack
from workers.records.ledger import TERMINAL
from workers.runtime import get_runtime
from workers.settings import Settings

#: B24Q_FAULTS_AT_DEFAULTS=1: the fault tests run at the production defaults (see the module's docstring).
AT_DEFAULTS = os.environ.get("B24Q_FAULTS_AT_DEFAULTS", "") == "1"

#: Settings of every fault stack: short backoffs, and a visibility timeout short enough that a killed
#: worker's jobs come back within the test (kombu restores unacked messages older than it; b24q sweeps
#: every visibility_timeout / 5 s, see workers.broker.configuration._restore_interval). backoff_max stays well below it.
FAULT_SHORTCUTS: dict[str, Any] = {
    **FAST,
    "visibility_timeout": 10,
    "backoff_max": 2.0,
    "permit_wait": 4.0,
    "request_timeout": 5.0,
    "reconcile_interval": 3.0,
    "reconcile_grace": 8.0,
}

#: Settings a test may pass that only shorten the run (FAULT's and `oauth_timeout`): at defaults they are
#: the `Settings` defaults, whatever the test passes, unless `MECHANISM` keeps them.
SHORTCUTS = (*FAULT_SHORTCUTS, "oauth_timeout")
DEFAULTS: dict[str, Any] = {name: Settings.model_fields[name].default for name in SHORTCUTS}

#: Settings kept at defaults when a test passes them, because the fault the test makes needs them (name →
#: the values kept, and why). Every other shortcut a test passes falls back to its default.
MECHANISM: dict[str, tuple[tuple[Any, ...], str]] = {
    # test_graceful_stop: no redelivery may help a stopping worker, so the reconciler is off; and retries still
    # wait for their countdown (5 s, 10 s, ...) when SIGTERM comes, so the stop has messages to hand back
    "reconcile_interval": ((0, 0.0), "0 turns the reconciler off"),
    "backoff_base": ((5.0,), "retries wait long enough to be held by the stopping worker"),
    # test_portal_faults: the emulator's late answers (2.5 s) must come after the client's read timeout
    "request_timeout": ((1.0,), "below the emulator's late answers, so they are timeouts"),
}

#: The settings of every fault stack: FAULT's shortcuts, or the defaults under B24Q_FAULTS_AT_DEFAULTS=1.
FAULT: dict[str, Any] = dict(DEFAULTS if AT_DEFAULTS else FAULT_SHORTCUTS)

#: The defaults a production pool runs with, for the tests of redelivery itself: no shortcut there.
PRODUCTION: dict[str, Any] = {
    name: Settings.model_fields[name].default
    for name in ("visibility_timeout", "worker_heartbeat", "worker_dead_after")
}

#: Where the figures of the last run go (docs/reliability.md quotes them).
FIGURES = Path(os.environ.get("B24Q_FAULT_FIGURES", ".b24q/fault-figures.json"))

SENDER = "smsgw"
CONNECTOR = "faultconn"
LINE = 7
#: without mingle/gossip a worker is ready a second sooner, and the fault suite starts many
QUICK = ["--without-mingle", "--without-gossip"]


#: The settings of the last stack make_fault_stack built (recorded with the figures at defaults).
_last_stack_settings: dict[str, Any] | None = None


def stack_settings(**settings: Any) -> dict[str, Any]:
    """FAULT with what a test passes; at defaults, only what `MECHANISM` keeps of the shortcuts it passes."""
    if AT_DEFAULTS:
        settings = {
            name: value
            for name, value in settings.items()
            if name not in SHORTCUTS or (name in MECHANISM and value in MECHANISM[name][0])
        }
    return {**FAULT, **settings}


def make_fault_stack(workers: int = 2, concurrency: int = 16, **settings: Any) -> LocalStack:
    """A stack with FAULT settings (or the defaults: B24Q_FAULTS_AT_DEFAULTS=1); B24Q_FAULT_LOGS=DIR keeps
    its logs (one subdirectory per stack)."""
    keep = os.environ.get("B24Q_FAULT_LOGS")
    log_dir = os.path.join(keep, f"{time.strftime('%H%M%S')}-{os.getpid()}-{random.randrange(10**6)}") if keep else None
    global _last_stack_settings
    _last_stack_settings = stack_settings(**settings)
    stack = LocalStack(settings=_last_stack_settings, log_dir=log_dir)
    stack.__enter__()
    try:
        if workers:
            stack.start_workers(workers, concurrency=concurrency, extra=QUICK)
    except Exception:
        stack.__exit__(None, None, None)
        raise
    return stack


@pytest.fixture
def domain(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:32]
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]
    return f"{name}-{digest}.bitrix24.test"


def add_portal(stack: LocalStack, domain: str, **options: Any) -> dict[str, Any]:
    """An OAuth portal that accepts every kind of the mixed workload."""
    info = stack.add_portal(domain, auto_messages=True, auto_connectors=True, **options)
    stack.emulator.admin("POST", f"portals/{domain}/senders", {"code": SENDER, "name": "SMS"})
    return info


def mixed_jobs(domain: str, n: int, start: int = 0, seed: int = 1) -> list[tuple[str, dict[str, Any]]]:
    """`n` jobs of the four kinds (about 40/25/10/25 %), each with a unique key the emulator records."""
    rng = random.Random(f"{seed}:{domain}:{start}")
    jobs: list[tuple[str, dict[str, Any]]] = []
    for i in range(start, start + n):
        roll = rng.random()
        if roll < 0.4:
            jobs.append(
                (
                    "status-update",
                    {
                        "portal": domain,
                        "code": SENDER,
                        "message_id": f"sms-{i}",
                        "status": rng.choice(["sent", "delivered", "failed"]),
                    },
                )
            )
        elif roll < 0.65:
            message = {
                "im": {"chat_id": 1000 + i % 50, "message_id": 50_000 + i},
                "message": {"id": [f"ext-{i}"], "date": 1_738_065_600},
                "chat": {"id": f"chan-{i % 50}"},
            }
            jobs.append(
                (
                    "delivery-confirmation",
                    {"portal": domain, "connector": CONNECTOR, "line": LINE, "messages": [message]},
                )
            )
        elif roll < 0.75:
            jobs.append(
                ("sender-update", {"portal": domain, "code": SENDER, "handler": f"https://sms.example.com/h/{i}"})
            )
        else:
            jobs.append(("mark-unread", {"portal": domain, "dialog_id": f"chat{i + 1}", "message_id": i + 1}))
    return jobs


def job_key(kind: str, payload: dict[str, Any]) -> str:
    """What the emulator records for one job (see `applied_counts`)."""
    portal = payload["portal"]
    if kind == "status-update":
        return f"{portal}/status:{payload['message_id']}"
    if kind == "delivery-confirmation":
        return f"{portal}/delivery:{payload['messages'][0]['im']['message_id']}"
    if kind == "sender-update":
        return f"{portal}/sender:{payload['handler']}"
    return f"{portal}/unread:{payload['dialog_id']}:{payload['message_id']}"


def applied_counts(state: dict[str, Any]) -> Counter[str]:
    """How many times the portal applied each job key."""
    portal = state["domain"]
    counts: Counter[str] = Counter()
    for record in state["statuses"]:
        counts[f"{portal}/status:{record['message_id']}"] += record["count"]
    for record in state["deliveries"]:
        counts[f"{portal}/delivery:{record['message_id']}"] += record["count"]
    for record in state["sender_updates"]:
        for update in record["updates"]:
            counts[f"{portal}/sender:{update.get('HANDLER')}"] += 1
    for record in state["unread"]:
        for message_id in record["message_ids"]:
            counts[f"{portal}/unread:{record['dialog_id']}:{message_id}"] += 1
    return counts


def states(ids: Iterable[str]) -> dict[str, str]:
    rt = get_runtime()
    ids = list(ids)
    out: dict[str, str] = {}
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        out.update({i: s or "" for i, (s,) in rt.ledger.states(chunk).items()})
    return out


def wait_terminal(ids: Iterable[str], timeout: float, terminal: tuple[str, ...] = TERMINAL) -> dict[str, str]:
    """Wait (bounded) until every job is in a terminal state; returns {id: state}."""
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        found = states(ids)
        if all(s in terminal for s in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def outcome(
    jobs: list[tuple[str, dict[str, Any]]], ids: list[str], found: dict[str, str], counts: Counter[str]
) -> dict[str, Any]:
    """The figures of a run: every job applied (at least once at the portal), superseded by a newer job for
    the same portal state (README: Ordering), or dead-lettered; else lost."""
    applied = [i for i in ids if found[i] == "applied"]
    dead = [i for i in ids if found[i] == "dead"]
    superseded = [i for i in ids if found[i] == "superseded"]
    keys = {i: job_key(kind, payload) for i, (kind, payload) in zip(ids, jobs, strict=True)}
    not_terminal = [i for i in ids if found[i] not in ("applied", "dead", "superseded")]
    applied_but_unseen = [i for i in applied if counts[keys[i]] == 0]
    rt = get_runtime()
    return {
        "lost_records": [rt.ledger.get(i) for i in (not_terminal + applied_but_unseen)[:3]],
        "jobs": len(ids),
        "applied": len(applied),
        "superseded": len(superseded),
        "dead_lettered": len(dead),
        "lost": len(not_terminal) + len(applied_but_unseen),
        "applied_twice_or_more": sum(1 for i in ids if counts[keys[i]] > 1),
        "extra_applications": sum(max(0, counts[keys[i]] - 1) for i in ids),
        "not_terminal": not_terminal[:5],
        "applied_but_unseen": applied_but_unseen[:5],
    }


def settle_bound(normal: float, *, retries: int = 0, reconciler: bool = False, refresh: bool = False) -> float:
    """A wait bound that follows the running stack's settings: `normal` (the test's bound at FAULT settings)
    unless these settings need longer: 20 s of work, plus `retries` transient retries (their countdowns at
    their caps: backoff_base doubling up to backoff_max; and the transient_window they must outlast), a
    reconciler round (reconcile_grace, then up to two rounds of reconcile_interval +20 %), a refresh lock
    left to expire (2 x oauth_timeout + 5 s). At FAULT
    settings that is below every bound the tests use, so a normal run keeps its own."""
    s = get_runtime().settings
    need = 20.0 + sum(min(s.backoff_max, s.backoff_base * 2 ** (n - 1)) for n in range(1, retries + 1))
    if retries:  # a job that keeps failing retries until transient_window has passed, then one countdown more
        need += s.transient_window + s.backoff_max
    if reconciler:
        need += s.reconcile_grace + 2.4 * s.reconcile_interval
    if refresh:
        need += 2 * s.oauth_timeout + 5
    return max(normal, need)


def record_figures(test: str, figures: dict[str, Any]) -> None:
    """Merge one test's figures into the figures file (and print them: `pytest tests/faults -s` shows them; `make
    test`'s two processes do not). At defaults they go under "<test> [defaults]", with the settings the stack ran
    with."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        data = {}
    if AT_DEFAULTS:
        test = f"{test} [defaults]"
        ran_with = _last_stack_settings or FAULT  # (a test that builds its LocalStack itself uses FAULT)
        figures = {**figures, "settings": {name: ran_with.get(name, DEFAULTS[name]) for name in SHORTCUTS}}
    data[test] = {**figures, "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"\n[figures] {test}: {json.dumps(figures, sort_keys=True)}")


def enqueue(jobs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return producer.enqueue_many(jobs)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills; written to the figures file when the test ends (even when it fails)."""
    data: dict[str, Any] = {}
    yield data
    if data:
        record_figures(request.node.name, data)


def broker_backlog() -> dict[str, int]:
    """Messages still in the broker: queued (every priority sub-queue, or both lanes and the dead queue on
    RabbitMQ) and delivered but not acknowledged."""
    rt = get_runtime()
    queue = rt.settings.queue
    if rt.settings.on_rabbitmq:
        return rabbitmq_backlog(queue)
    names = [queue] + [f"{queue}\x06\x16{p}" for p in (3, 6, 9)]
    return {"queued": sum(int(rt.redis.llen(n)) for n in names), "unacked": int(rt.redis.hlen("unacked"))}


def rabbitmqctl(listing: str, *columns: str) -> list[list[str]]:
    """The rows of a `rabbitmqctl list_*` command (the machine's RabbitMQ runs here), columns split."""
    out = subprocess.run(
        ["rabbitmqctl", listing, "-q", "--no-table-headers", *columns],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.split("\t") for line in out.splitlines()]


def rabbitmq_backlog(queue: str) -> dict[str, int]:
    """Ready and unacknowledged messages of b24q's queues for `queue`, as RabbitMQ counts them (AMQP tells
    only the ready ones, so `rabbitmqctl` it is: the machine's RabbitMQ runs here)."""
    names = set(rabbitmq.depths(RABBITMQ_URL, queue))
    rows = rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged")
    ours = [(int(ready), int(unacked)) for name, ready, unacked in (r for r in rows if len(r) == 3) if name in names]
    return {"queued": sum(r for r, _ in ours), "unacked": sum(u for _, u in ours)}


def wait_drained(ids: list[str], timeout: float) -> tuple[dict[str, str], dict[str, int]]:
    """Wait (bounded) until every job is terminal and the broker holds none of their messages."""
    deadline = time.monotonic() + timeout
    while True:
        found = wait_terminal(ids, max(0.0, deadline - time.monotonic()))
        backlog = broker_backlog()
        if (
            backlog == {"queued": 0, "unacked": 0} and all(s in TERMINAL for s in found.values())
        ) or time.monotonic() > deadline:
            return found, backlog
        time.sleep(0.5)


class KeepEnqueueing:
    """A producer thread that enqueues batches of 20 mixed jobs until stopped, and retries after an error
    as callers do (Redis down, no master yet). `acked` holds (time, ids, jobs) of every enqueue that
    returned; `failures` (time, exception type) of every one that raised, so nothing was acknowledged."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.acked: list[tuple[float, list[str], list[tuple[str, dict[str, Any]]]]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            batch = mixed_jobs(self.domain, 20, start=n)
            try:
                ids = producer.enqueue_many(batch)
            except Exception as exc:
                self.failures.append((time.monotonic(), type(exc).__name__))
                time.sleep(0.2)
                continue
            self.acked.append((time.monotonic(), ids, batch))
            n += 20
            time.sleep(0.05)

    def wait_acked_after(self, moment: float, timeout: float = 30) -> None:
        """Until an enqueue returned after `moment` (the producer recovered by itself), or `timeout`."""
        deadline = time.monotonic() + timeout
        while not [t for t, _, _ in self.acked if t > moment] and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
        """Stop; every acknowledged id and its job."""
        self._stop.set()
        self._thread.join(10)
        ids = [i for _, batch_ids, _ in self.acked for i in batch_ids]
        jobs = [job for _, _, batch in self.acked for job in batch]
        return ids, jobs

    def ids_between(self, after: float, until: float = float("inf")) -> list[str]:
        return [i for t, batch_ids, _ in self.acked if after < t <= until for i in batch_ids]
