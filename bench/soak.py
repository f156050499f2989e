"""`python -m bench.soak [--minutes 10]`: a long soak under every fault at once (not part of CI).

A LocalStack (private redis-server with AOF, the emulator, real worker processes) runs a steady stream
of mixed jobs to several portals while a chaos loop, at random moments, SIGKILLs or SIGTERMs workers
(a supervisor starts replacements), crashes and restarts Redis, turns portal faults on and off (500s,
drops before/after applying, garbage bodies, answers after the client's timeout), expires tokens and
takes the OAuth server down. At the end the faults stop, the pool drains, and every job the producer
was told had been enqueued is checked against the emulator's own records: applied (how many times),
dead-lettered (why), or lost. The exit status is 1 if a job was lost.

    python -m bench.soak --minutes 10 --json soak.json --log-dir /tmp/soak
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

from tasks import producer
from tests.faults.conftest import FAULT, QUICK, add_portal, applied_counts, mixed_jobs, outcome, wait_drained
from workers.localdev.localstack import LocalStack
from workers.runtime import get_runtime


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Producer(threading.Thread):
    """Enqueues batches of mixed jobs at a steady rate; keeps what was acknowledged, retries errors."""

    def __init__(self, portals: list[str], rate: float, seed: int) -> None:
        super().__init__(daemon=True, name="soak-producer")
        self.portals, self.rate, self.rng = portals, rate, random.Random(seed)
        self.acked: list[tuple[list[str], list[tuple[str, dict[str, Any]]]]] = []
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()
        self.next = {p: 0 for p in portals}

    def run(self) -> None:
        batch = 50
        while not self.stop.is_set():
            portal = self.rng.choice(self.portals)
            jobs = mixed_jobs(portal, batch, start=self.next[portal], seed=7)
            started = time.monotonic()
            try:
                ids = producer.enqueue_many(jobs)
            except Exception as exc:  # Redis down: told, not acknowledged; the same batch is tried again
                self.errors[type(exc).__name__] += 1
                time.sleep(0.5)
                continue
            self.acked.append((ids, jobs))
            self.next[portal] += batch
            self.stop.wait(max(0.0, batch / self.rate - (time.monotonic() - started)))


TIMERS: list[threading.Timer] = []


def _later(seconds: float, stack: LocalStack, portal: str) -> None:
    timer = threading.Timer(seconds, lambda: _clear(stack, portal))
    timer.daemon = True
    timer.start()
    TIMERS.append(timer)


def chaos(stack: LocalStack, portals: list[str], rng: random.Random, workers: int, concurrency: int) -> str:
    """One fault, chosen at random; returns what it did."""
    event = rng.choice(["kill", "kill", "term", "redis", "portal", "portal", "oauth", "expire"])
    if event in ("kill", "term"):
        live = stack.live_workers()
        if live:
            victim = rng.choice(live)
            victim.kill(signal.SIGKILL if event == "kill" else signal.SIGTERM)
            victim.wait(60)
        while len(stack.live_workers()) < workers:
            stack.start_workers(1, concurrency=concurrency, extra=QUICK, wait=False)
        return f"{'SIGKILL' if event == 'kill' else 'SIGTERM'} a worker"
    if event == "redis":
        down = rng.uniform(1.0, 4.0)
        stack.restart_redis(down=down)
        return f"Redis SIGKILLed, {down:.1f} s down"
    portal = rng.choice(portals)
    if event == "portal":
        faults: dict[str, Any] = rng.choice(
            [
                {"error_500_rate": 0.2},
                {"drop_rate": 0.1},
                {"drop_rate": 0.1, "drop_phase": "after"},
                {"garbage_rate": 0.15},
                {"slow_rate": 0.1, "slow_seconds": FAULT["request_timeout"] + 1.0},
            ]
        )
        stack.emulator.set_faults(portal, **faults)
        _later(rng.uniform(5, 15), stack, portal)
        return f"faults {faults} on {portal}"
    stack.emulator.expire(portal)
    if event == "oauth":
        stack.emulator.set_faults(portal, oauth_down=rng.choice([True, "drop"]))
        _later(rng.uniform(5, 20), stack, portal)
        return f"tokens expired and OAuth down for {portal}"
    return f"tokens expired for {portal}"


def _clear(stack: LocalStack, portal: str) -> None:
    try:
        stack.emulator.set_faults(
            portal, error_500_rate=0, drop_rate=0, drop_phase="before", garbage_rate=0, slow_rate=0, oauth_down=False
        )
    except Exception as exc:  # the stack may be stopping
        say(f"could not clear faults on {portal}: {exc}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--portals", type=int, default=3)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=60.0, help="jobs enqueued per second")
    ap.add_argument("--chaos-every", type=float, default=10.0, help="mean seconds between faults")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log-dir", help="keep the stack's logs here")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    say(f"soak: {args.minutes:g} min, {args.portals} portals, {args.workers} workers, {args.rate:g} jobs/s")
    with LocalStack(settings=FAULT, log_dir=args.log_dir) as stack:
        stack.start_workers(args.workers, concurrency=args.concurrency, extra=QUICK)
        portals = [f"soak{i}.bitrix24.test" for i in range(args.portals)]
        for portal in portals:
            add_portal(stack, portal, rate=2.0, burst=20)
        prod = Producer(portals, args.rate, args.seed)
        prod.start()
        started = time.monotonic()
        events: list[tuple[float, str]] = []
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(rng.expovariate(1.0 / args.chaos_every))
            try:
                what = chaos(stack, portals, rng, args.workers, args.concurrency)
            except Exception as exc:
                what = f"chaos step failed: {type(exc).__name__}: {exc}"
            events.append((round(time.monotonic() - started, 1), what))
            say(what)
        prod.stop.set()
        prod.join(30)
        for timer in TIMERS:
            timer.cancel()
        for portal in portals:
            _clear(stack, portal)
        while len(stack.live_workers()) < args.workers:
            stack.start_workers(1, concurrency=args.concurrency, extra=QUICK, wait=False)
        ids = [i for batch_ids, _ in prod.acked for i in batch_ids]
        jobs = [job for _, batch in prod.acked for job in batch]
        say(f"faults off; draining {len(ids)} jobs")
        drain_start = time.monotonic()
        found, backlog = wait_drained(ids, timeout=600)
        counts: Counter[str] = Counter()
        for portal in portals:
            counts.update(applied_counts(stack.emulator.state(portal)))
        result = outcome(jobs, ids, found, counts)
        rt = get_runtime()
        dead = Counter(d.code for d in (rt.dead.get(i) for i in ids if found[i] == "dead") if d)
        figures = {k: v for k, v in result.items() if k != "lost_records"}
        figures.update(
            dead_by_reason=dict(dead),
            minutes=args.minutes,
            faults=len(events),
            fault_kinds=dict(Counter(e.split(" ")[0] for _, e in events)),
            producer_errors=dict(prod.errors),
            drained_after_faults_s=round(time.monotonic() - drain_start, 1),
            broker_left=backlog,
            lost_records=result["lost_records"],
        )
    print(json.dumps(figures, indent=2, default=str))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"figures": figures, "events": events}, out, indent=2, default=str)
    return 1 if figures["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
