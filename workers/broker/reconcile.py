"""The lost-message reconciler: jobs whose message the broker lost are published again.

kombu's Redis transport takes a message with BRPOP and only then records it in its `unacked` hash. A
worker killed (or stopped) between the two loses that message for good (celery#7950, kombu#305);
tests/faults/test_worker_kill.py hit it about once in 25 SIGKILLs under load. The ledger knows every
open job and keeps its kwargs (`workers.records.ledger`); once per `reconcile_interval` one worker of
the pool looks for open jobs that made no progress for `reconcile_grace` seconds and whose message is
neither queued nor unacked, and publishes them again under the same job id.

Publishing is the producer's business: the reconciler is given a `Republish` (tasks/ wires the
producer's own publishing path), so the same ledger and masking rules apply to a republished job.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from workers import keys
from workers.records.ledger import TERMINAL
from workers.records.outcomes import JobRef
from workers.retries import DeadLetter
from workers.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

LOST = DeadLetter("LOST_MESSAGE", "the broker lost this job's message and the ledger has no payload to publish again")

#: Publish a job's message again: (runtime, kind name, job id, kwargs) → its task name, or None when the
#: kind is unknown (nothing published).
Republish = Callable[[Runtime, str, str, dict[str, Any]], str | None]

_TASK_ID = re.compile(rb'"id": ?"([^"]{1,200})"')


def broker_job_ids(
    rt: Runtime, steps: tuple[int, ...] = (0, 3, 6, 9), max_scan: int = 200_000, chunk: int = 5000
) -> set[str] | None:
    """Task ids of every message queued (all priority sub-queues) or unacked; None when the queue is too
    deep to scan this time (it is then read again at the next round)."""
    names = [keys.queue(rt.settings.queue, step) for step in steps]
    if sum(int(rt.redis.llen(n)) for n in names) > max_scan:
        return None
    ids: set[str] = set()
    for name in names:  # the queues first, then unacked: a message moving on is then seen in one of them
        start = 0
        while True:
            items = rt.redis.lrange(name, start, start + chunk - 1)
            for item in items:
                ids.update(m.decode(errors="replace") for m in _TASK_ID.findall(item))
            if len(items) < chunk:
                break
            start += chunk
    for value in rt.redis.hvals(keys.UNACKED):
        ids.update(m.decode(errors="replace") for m in _TASK_ID.findall(value))
    return ids


def reconcile(rt: Runtime, republish: Republish, grace: float | None = None) -> dict[str, int]:
    """One reconciliation round; returns counts (checked, republished, dead)."""
    grace = rt.settings.reconcile_grace if grace is None else grace
    cutoff = time.time() - grace
    candidates = rt.ledger.stale_open(cutoff)
    done = {"checked": len(candidates), "republished": 0, "dead": 0}
    if not candidates:
        return done
    missing = set(candidates)
    for look in range(2):  # a message between two places can be missed once; never twice a second apart
        seen = broker_job_ids(rt)
        if seen is None:
            log.info("reconcile: queue too deep to scan; next round")
            return done
        missing -= seen
        if not missing:
            return done
        if look == 0:
            time.sleep(1.0)
    for job_id in sorted(missing):
        record = rt.ledger.record(job_id)
        if not record or record.get("state") in TERMINAL:
            rt.ledger.forget_open(job_id)
            continue
        if float(record.get("updated") or 0) > cutoff:
            continue  # it moved on meanwhile
        kind = record.get("kind", "?")
        portal = record.get("portal", "?")
        payload = rt.ledger.payload(job_id)
        task = republish(rt, kind, job_id, payload) if payload is not None else None
        if task is None:
            rt.outcomes.unrun(JobRef(job_id, kind, "?", portal), payload or {}, LOST, int(record.get("runs") or 0))
            done["dead"] += 1
            continue
        rt.ledger.recovered(job_id, "the broker lost its message; published again by the reconciler")
        done["republished"] += 1
        log.warning(
            "reconcile: job %s (%s, portal %s) had no message in the broker; published again", job_id, kind, portal
        )
    return done


def _loop(republish: Republish) -> None:
    owner = uuid.uuid4().hex
    while True:
        rt = get_runtime()
        interval = rt.settings.reconcile_interval
        time.sleep(interval * random.uniform(0.8, 1.2))
        try:
            # one worker of the pool per interval (the lock expires; it is never released early)
            if rt.redis.set(rt.keys.reconcile_lock(), owner, nx=True, px=int(interval * 1000)):
                reconcile(rt, republish)
        except Exception:
            log.exception("reconcile: round failed; next round in %.0f s", interval)


def start(republish: Republish) -> threading.Thread | None:
    """Run reconciliation rounds in a daemon thread of this worker (none when the interval is 0, and none
    on RabbitMQ: a confirmed message is not lost between the queue and a worker there, and the queue
    cannot be read without consuming it)."""
    settings = get_runtime().settings
    if settings.reconcile_interval <= 0 or settings.on_rabbitmq:
        return None
    thread = threading.Thread(target=_loop, args=(republish,), name="b24q-reconciler", daemon=True)
    thread.start()
    return thread
