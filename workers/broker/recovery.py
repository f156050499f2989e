"""Dead-worker recovery: a killed worker's messages go back to the queue in seconds, not after visibility_timeout.

kombu's Redis transport keeps every message delivered to a worker and not yet acknowledged in its
`unacked` hash (running jobs and countdown retries alike) and restores one only when a sweep finds it
older than `visibility_timeout` (600 s: it must exceed the longest countdown, so it cannot be short).
b24q knows sooner. Every worker publishes, every `worker_heartbeat` seconds, the delivery tags it holds
(its channel's unacknowledged deliveries) under a key that lives `worker_dead_after` seconds. A message
that stays unacknowledged while no live worker holds it, for `worker_dead_after` seconds on end, belongs
to a worker that is gone: one worker of the pool at a time (a Redis lock) restores it with kombu's own
`restore_by_tag`, exactly as kombu would after the visibility timeout, and notes it in the job's ledger
record. A killed worker's jobs are thus back in the queue about 2 x `worker_dead_after` after the kill.

The rule for a worker that is slow, paused or cut off: it is alive while its heartbeat key lives. The
heartbeat is a thread of its own, so a long portal call or a busy pool does not stop it. A worker that
cannot reach Redis, or is frozen, for longer than `worker_dead_after` loses its messages to the pool:
they run elsewhere, and whatever it finishes afterwards is applied a second time (at-least-once, never
a loss). A worker that stops gracefully hands its messages back itself (kombu restores them when its
channel closes), so nothing is left for the sweep.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from workers import keys
from workers.keys import Keys
from workers.runtime import Runtime

log = logging.getLogger(__name__)

_BEAT = """
-- a worker's heartbeat: the tags it holds (the key lives as long as the worker counts as alive), and the
-- time of the beat on the server's clock
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1000000))
"""


@dataclass(frozen=True)
class Recovered:
    """A message restored to the queue: its delivery tag, the job it carries, and the worker that held it."""

    tag: str
    job_id: str
    worker: str


class Presence:
    """The pool's workers as Redis knows them: their heartbeats and the messages each holds.

    Parameters:
        client: the Redis of the pool (the broker's).
        keys: the key layout.
        dead_after: seconds a worker's heartbeat lives; silent for longer, it is gone.
        queue: b24q's queue (`B24Q_QUEUE`): messages of other queues on the same Redis are never touched.
    """

    def __init__(self, client: redis.Redis, keys: Keys, dead_after: float, queue: str = "b24q") -> None:
        self._client = client
        self._keys = keys
        self.dead_after = dead_after
        self.queue = queue
        self._beat = client.register_script(_BEAT)

    def beat(self, worker: str, tags: Iterable[str]) -> None:
        self._beat(
            keys=[self._keys.worker_holds(worker), self._keys.worker_beats()],
            args=[json.dumps(sorted(tags)), int(self.dead_after * 1000), worker],
        )

    def alive(self, worker: str) -> bool:
        return bool(self._client.exists(self._keys.worker_holds(worker)))

    def last_beat(self, worker: str) -> float | None:
        raw = self._client.hget(self._keys.worker_beats(), worker)
        return float(raw) if raw is not None else None

    def held(self) -> set[str]:
        """Every tag a live worker holds."""
        names = [n.decode() for n in self._client.hkeys(self._keys.worker_beats())]
        if not names:
            return set()
        tags: set[str] = set()
        for raw in self._client.mget([self._keys.worker_holds(n) for n in names]):
            if raw is not None:
                tags.update(json.loads(raw))
        return tags

    def orphans(self) -> list[tuple[str, str]]:
        """Messages that no live worker has held for `dead_after` seconds on end: (delivery tag, job id).

        Each call is one look: a tag first seen unheld is remembered (on the server's clock) and is due
        only if it is still unheld `dead_after` seconds later; one held again meanwhile is forgotten."""
        seconds, micros = self._client.time()
        now = seconds + micros / 1e6
        unacked = [t.decode() for t in self._client.zrange(keys.UNACKED_INDEX, 0, -1)]
        held = self.held()
        orphans = {t for t in unacked if t not in held}
        first_seen = {k.decode(): float(v) for k, v in self._client.hgetall(self._keys.orphans()).items()}
        pipe = self._client.pipeline(transaction=False)
        gone = [t for t in first_seen if t not in orphans]  # acknowledged or held again meanwhile
        if gone:
            pipe.hdel(self._keys.orphans(), *gone)
        new = {t: f"{now:.3f}" for t in orphans if t not in first_seen}
        if new:
            pipe.hset(self._keys.orphans(), mapping=new)
        pipe.execute()
        due = sorted(t for t in orphans if t in first_seen and now - first_seen[t] >= self.dead_after)
        if not due:
            return []
        entries = dict(zip(due, self._client.hmget(keys.UNACKED, due), strict=True))
        found = [(t, _unacked(entry)) for t, entry in entries.items() if entry is not None]
        # kombu keeps one `unacked` hash for every app on this Redis: only our queue's messages are ours
        return [(t, job_id) for t, (job_id, queue) in found if queue == self.queue]

    def forget(self, tags: list[str]) -> None:
        """These orphans went back to the queue."""
        if tags:
            self._client.hdel(self._keys.orphans(), *tags)


def _unacked(entry: bytes) -> tuple[str, str]:
    """The task id and the routing key (the queue) of an `unacked` entry: [envelope, exchange, routing key]."""
    try:
        envelope, _exchange, routing_key = json.loads(entry)
    except (ValueError, TypeError):
        return "", ""
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    job_id = headers.get("id") if isinstance(headers, dict) else None
    return str(job_id or ""), str(routing_key)


def held_tags(consumer: Any) -> list[str]:
    """The delivery tags a Celery worker's consumer holds now (delivered, not yet acknowledged)."""
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    delivered = getattr(getattr(channel, "qos", None), "_delivered", None)
    if delivered is None:
        return []
    for _ in range(10):  # the consumer and the pool threads change it while we read
        with contextlib.suppress(RuntimeError):
            return [str(tag) for tag in list(delivered)]
    return []


class Recovery:
    """The heartbeat of one worker, and the pool's sweep whenever this worker holds the lock."""

    def __init__(
        self, rt: Runtime, worker: str, holding: Callable[[], list[str]], restore: Callable[[list[str]], None]
    ) -> None:
        self.rt = rt
        self.worker = worker
        self._holding = holding
        self._restore = restore
        self.presence = Presence(rt.redis, rt.keys, rt.settings.worker_dead_after, rt.settings.queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner = uuid.uuid4().hex

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="b24q-recovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        every = self.rt.settings.worker_heartbeat
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.presence.beat(self.worker, self._holding())
                if self.rt.redis.set(self.rt.keys.recovery_lock(), self._owner, nx=True, px=int(every * 1000)):
                    self.sweep()
            except Exception as exc:  # Redis away: the next beat tries again
                log.warning("recovery: %s: %s", type(exc).__name__, exc)
            self._stop.wait(max(0.0, every - (time.monotonic() - started)))

    def sweep(self) -> list[Recovered]:
        """Put the orphaned messages back in the queue, each job's ledger record told first (so that the
        note never lands after the job has run again)."""
        found = [
            Recovered(t, job_id, self._last_worker(job_id) if job_id else "") for t, job_id in self.presence.orphans()
        ]
        for one in found:
            self._note(one)
        tags = [one.tag for one in found]
        if tags:
            self._restore(tags)
            self.presence.forget(tags)
        return found

    def _last_worker(self, job_id: str) -> str:
        record = self.rt.ledger.get(job_id) or {}
        runs = [e.get("worker", "") for e in record.get("events", []) if e.get("state") == "running"]
        return str(runs[-1]) if runs else ""

    def _note(self, found: Recovered) -> None:
        who = found.worker or "its worker"
        last = self.presence.last_beat(found.worker) if found.worker else None
        since = f" (last heartbeat {time.strftime('%H:%M:%S', time.localtime(last))})" if last else ""
        why = f"{who} stopped{since}; its message went back to the queue"
        log.warning("recovery: job %s: %s", found.job_id or found.tag, why)
        if found.job_id:
            self.rt.ledger.recovered(found.job_id, why)


def start(consumer: Any, rt: Runtime, restore: Callable[[list[str]], None]) -> Recovery | None:
    """Start this worker's heartbeat and share of the sweep (`workers.celery`, at worker_ready). None on
    RabbitMQ: the broker itself puts a closed connection's unacknowledged messages back at once."""
    if rt.settings.on_rabbitmq:
        return None
    recovery = Recovery(rt, str(consumer.hostname), lambda: held_tags(consumer), restore)
    recovery.start()
    return recovery
