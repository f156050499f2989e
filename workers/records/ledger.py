"""The job ledger: one record per job, so "what happened to job X" has an answer.

Outcomes are not inferred from Celery's result backend (there is none): the producer writes the
record when it enqueues, the pipeline updates it at every step, and a short history of events is
kept with it. Finished records expire after `ledger_ttl`.

The ledger also keeps each portal's backlog (jobs enqueued and not yet finished): producers use it
to send a portal with a deep backlog to the bulk lane, so that other portals' jobs pass it.

Memory: a job that went straight through (one run, applied) keeps a record of a few short fields (its
history is what they say: queued, running on a worker, applied), packed into a shared bucket for one to two
`ledger_ttl_applied` (`workers.records.packed`: ~50 bytes, not a key of its own); any other keeps its hash and
event history for `ledger_ttl`. For every job not yet finished it also keeps its message's kwargs (the
`payload`, a key of its own, dropped when the job finishes) and an index of open jobs by last progress:
a worker killed right after kombu's BRPOP took a message and before kombu recorded it as unacked loses
that message for good (celery#7950, kombu#305), and `workers.broker.reconcile` publishes such jobs again
from here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError

from workers.keys import DEFAULT_KEYS, Keys
from workers.records.packed import SPLIT_AT, Packing, script
from workers.roundtrip import round_trip

log = logging.getLogger(__name__)

TERMINAL = ("applied", "dead", "parked", "superseded")
#: A portal's last finished jobs kept by id, for the operator's console.
RECENT = 20


@dataclass(frozen=True)
class Failures:
    """A job's transient failures so far: how many, and seconds since the first."""

    count: int
    since: float


@dataclass(frozen=True)
class Run:
    """What a worker needs to know of a job it starts: when it was enqueued and which run this is."""

    created: float
    runs: int
    #: the job's order version as recorded (`workers.delivery.ordering`), "" when it has none yet
    version: str = ""


class Ledger:
    """Job records: a Redis hash with a capped event list, or packed once applied on the first run (`packed`)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys = DEFAULT_KEYS,
        ttl: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
        ttl_applied: float | None = None,
        split_at: int = SPLIT_AT,
    ) -> None:
        self._client = client
        self._keys = keys
        self._ttl = int(ttl)
        self._ttl_applied = int(ttl if ttl_applied is None else ttl_applied)
        # timestamps to the millisecond: what any reader needs, and 4 bytes less per time field of every record
        self._clock: Callable[[], float] = lambda: round(clock(), 3)
        self._packing = Packing(client, keys, self._ttl_applied, split_at)
        self._finish = script(client, "finish")
        self._started = script(client, "started")
        self._recovered = script(client, "recovered")
        self._read = script(client, "read")

    def _key(self, job_id: str) -> str:
        return self._keys.job(job_id)

    def _events(self, job_id: str) -> str:
        return self._keys.job_events(job_id)

    def _backlog(self, portal: str) -> str:
        return self._keys.backlog(portal)

    def _open(self) -> str:
        return self._keys.open_jobs()

    def _payload_key(self, job_id: str) -> str:
        return self._keys.job_payload(job_id)

    @staticmethod
    def _payload(payload: Any) -> str:
        return json.dumps(payload, ensure_ascii=False, default=str)

    def _event(self, state: str, **detail: Any) -> str:
        return json.dumps({"t": round(self._clock(), 3), "state": state, **detail}, ensure_ascii=False)

    def enqueued(self, job_id: str, kind: str, portal: str, pipe: Any = None, payload: Any = None) -> None:
        """Record a new job (producer side) and count it in its portal's backlog.

        `payload` (the message's kwargs) is kept until the job finishes, so a message the broker
        loses can be published again (see the module docstring)."""
        now = self._clock()
        p = pipe if pipe is not None else self._client.pipeline(transaction=False)
        mapping: dict[str, Any] = {"kind": kind, "portal": portal, "state": "queued", "created": now, "updated": now}
        p.hset(self._key(job_id), mapping=mapping)
        if payload is not None:
            p.set(self._payload_key(job_id), self._payload(payload), ex=self._ttl)
        # (the producer adds the job to the open index once its message is published: `mark_open`)
        p.rpush(self._events(job_id), self._event("queued"))
        p.incr(self._backlog(portal))
        if pipe is None:
            p.execute()

    def backlog(self, portal: str) -> int:
        raw = self._client.get(self._backlog(portal))
        return int(raw) if raw else 0

    def outcomes(self, portals: Iterable[str]) -> dict[str, int]:
        """How many jobs of these portals ended in each terminal state, summed (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        for portal in portals:
            pipe.hgetall(self._keys.outcomes(portal))
        totals: dict[str, int] = {}
        for counts in pipe.execute():
            for state, n in counts.items():
                totals[state.decode()] = totals.get(state.decode(), 0) + int(n)
        return totals

    def recent(self, portal: str) -> list[dict[str, Any]]:
        """The portal's last finished jobs, newest first, with their histories (those whose records expired
        are left out)."""
        ids = [i.decode() for i in self._client.lrange(self._keys.recent(portal), 0, RECENT - 1)]
        return [record for record in self.get_many(ids).values() if record is not None]

    def read_backlog(self, portal: str, pipe: Any) -> None:
        """Queue the read of `backlog(portal)` in a pipeline (its reply: the count, or None for 0)."""
        pipe.get(self._backlog(portal))

    def started(
        self, job_id: str, kind: str, portal: str, worker: str = "", payload: Callable[[], Any] | None = None
    ) -> Run:
        """A worker picked the job up (one script call). A job no producer recorded (a non-Python
        producer's raw message) gets its record here, with `payload()` kept for the reconciler."""
        keys, args = self._started_call(job_id, kind, portal, worker)
        return self.run_from(job_id, self._started(keys=keys, args=args), payload)

    def queue_started(self, pipe: Any, job_id: str, kind: str, portal: str, worker: str = "") -> None:
        """Queue `started` in a pipeline (its reply goes to `run_from`; a pipeline's NoScriptError to `started`)."""
        keys, args = self._started_call(job_id, kind, portal, worker)
        pipe.evalsha(self._started.sha, len(keys), *keys, *args)

    def run_from(self, job_id: str, reply: Any, payload: Callable[[], Any] | None = None) -> Run:
        """The run `started`'s script replied (keeping the payload of a job seen for the first time)."""
        first, created, runs, version = reply
        if first and payload is not None:
            self._client.set(self._payload_key(job_id), self._payload(payload()), ex=self._ttl, nx=True)
        return Run(float(created), int(runs), version.decode() if isinstance(version, bytes) else str(version))

    def _started_call(self, job_id: str, kind: str, portal: str, worker: str) -> tuple[list[str], list[Any]]:
        event = self._event("running", worker=worker) if worker else self._event("running")
        keys = [self._key(job_id), self._events(job_id), self._open(), self._backlog(portal)]
        return keys, [*self._packing.args, self._clock(), job_id, kind, portal, event, worker, self._ttl]

    def note(self, job_id: str, state: str, error: str = "", **detail: Any) -> None:
        """A non-terminal step: retrying, deferred."""
        pipe = self._client.pipeline(transaction=False)
        mapping: dict[str, Any] = {"state": state, "updated": self._clock()}
        if error:
            mapping["last_error"] = error
        pipe.hset(self._key(job_id), mapping=mapping)
        pipe.zadd(self._open(), {job_id: self._clock()})
        pipe.rpush(
            self._events(job_id),
            self._event(state, error=error, **detail) if error else self._event(state, **detail),
        )
        pipe.ltrim(self._events(job_id), -50, -1)
        pipe.execute()

    def failure(self, job_id: str) -> Failures:
        """Count one transient failure (the first one's time is kept with the count)."""
        now = self._clock()
        pipe = self._client.pipeline(transaction=True)
        pipe.hincrby(self._key(job_id), "failures", 1)
        pipe.hsetnx(self._key(job_id), "first_failure", now)
        pipe.hget(self._key(job_id), "first_failure")
        count, _, first = pipe.execute()
        return Failures(int(count), max(0.0, now - float(first or now)))

    def finish(self, job_id: str, portal: str, state: str, error: str = "", **detail: Any) -> None:
        """applied, superseded, dead or parked."""
        if error:
            self._client.hset(self._key(job_id), "last_error", error)
        event = self._event(state, error=error, **detail) if error else self._event(state, **detail)
        keys, args = self._finish_call(job_id, portal, state, event)
        # every job's last round trip: the lean one (`workers.roundtrip`), the script loaded if Redis lost it
        trip = round_trip(self._client).evalsha(self._finish.sha, len(keys), *keys, *args)
        (reply,) = trip.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError):
            self._finish(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply

    def finish_applied(self, portal: str, job_ids: Sequence[str]) -> list[bool]:
        """Jobs of one portal applied, in one round trip (the lane that sent them, with their answer); for
        each, whether its record is finished (not when Redis lost the script or could not be reached: the
        job's own `finish` then records it)."""
        calls = [self._finish_call(job_id, portal, "applied", self._event("applied")) for job_id in job_ids]
        try:
            replies = self._finish_all(calls)
            if any(isinstance(reply, NoScriptError) for reply in replies):  # a Redis restarted: loaded, once more
                self._client.script_load(self._finish.script)
                replies = self._finish_all(calls)
        except redis.RedisError as exc:
            log.warning("portal %s: %d applied jobs not recorded by their lane (%s)", portal, len(job_ids), exc)
            return [False] * len(job_ids)
        return [not isinstance(reply, Exception) for reply in replies]

    def _finish_all(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        trip = round_trip(self._client)
        for keys, args in calls:
            trip.evalsha(self._finish.sha, len(keys), *keys, *args)
        return trip.execute(raise_on_error=False)

    def _finish_call(self, job_id: str, portal: str, state: str, event: str) -> tuple[list[str], list[Any]]:
        """The finish script's keys and arguments."""
        keys = [
            self._key(job_id),
            self._events(job_id),
            self._backlog(portal),
            self._open(),
            self._keys.outcomes(portal),
            self._payload_key(job_id),
            self._keys.recent(portal),
        ]
        args = [*self._packing.args, state, self._clock(), event, self._ttl, job_id, self._ttl_applied, RECENT]
        return keys, args

    def requeued(self, job_id: str, portal: str, why: str, pipe: Any = None, payload: Any = None) -> None:
        """A parked or dead job goes back to the queue (replay, re-authorisation)."""
        own = pipe is None
        pipe = pipe if pipe is not None else self._client.pipeline(transaction=False)
        now = self._clock()
        mapping: dict[str, Any] = {"state": "queued", "failures": 0, "updated": now}
        pipe.hset(self._key(job_id), mapping=mapping)
        pipe.hdel(self._key(job_id), "first_failure")  # a replayed job gets its whole budget again
        if payload is not None:
            pipe.set(self._payload_key(job_id), self._payload(payload), ex=self._ttl)
        pipe.persist(self._key(job_id))
        pipe.persist(self._events(job_id))
        pipe.rpush(self._events(job_id), self._event("queued", why=why))
        pipe.incr(self._backlog(portal))
        if own:
            pipe.execute()

    def mark_open(self, job_ids: list[str]) -> None:
        """The producer published these jobs' messages: from now on the reconciler watches them. (A job
        whose enqueue failed never enters the index, so a failed call is never delivered behind the
        caller's back.)"""
        if job_ids:
            now = self._clock()
            self._client.zadd(self._open(), dict.fromkeys(job_ids, now))

    def unpublished(self, job_id: str, portal: str) -> None:
        """Roll back the record of a new job whose message could not be published."""
        pipe = self._client.pipeline(transaction=False)
        pipe.delete(self._key(job_id), self._events(job_id), self._payload_key(job_id))
        pipe.decr(self._backlog(portal))
        pipe.execute()

    def stale_open(self, before: float, limit: int = 500) -> list[str]:
        """Open jobs with no progress since `before` (candidates for the reconciler)."""
        return [i.decode() for i in self._client.zrangebyscore(self._open(), "-inf", before, start=0, num=limit)]

    def recovered(self, job_id: str, why: str) -> None:
        """A lost job's message was published again (the reconciler; a dead worker's message requeued)."""
        self._recovered(
            keys=[self._key(job_id), self._events(job_id), self._open()],
            args=[*self._packing.args, self._clock(), job_id, self._event("queued", why=why), self._ttl],
        )

    def forget_open(self, job_id: str) -> None:
        """Drop a job from the open index (its record expired or is gone)."""
        self._client.zrem(self._open(), job_id)

    def record(self, job_id: str) -> dict[str, str]:
        """The job's record without its history ({} when unknown)."""
        return self._records([job_id])[0]

    def _records(self, job_ids: list[str], pipe: Any = None) -> Any:
        """The records of these jobs (hashes or packed), each a dict ({} when unknown); with a pipeline the
        read is queued there and its raw reply (or NoScriptError) is left to the caller."""
        keys = [self._key(job_id) for job_id in job_ids]
        if pipe is not None:  # by its hash: redis-py's registered script would ask SCRIPT EXISTS first
            return pipe.evalsha(self._read.sha, len(keys), *keys, *self._packing.args, *job_ids)
        return _decoded(self._read(keys=keys, args=[*self._packing.args, *job_ids]) if job_ids else [])

    def payload(self, job_id: str) -> dict[str, Any] | None:
        """The kwargs kept for an open job (None once it finished, or for a job without)."""
        raw = self._client.get(self._payload_key(job_id))
        data = json.loads(raw) if raw else None
        return data if isinstance(data, dict) else None

    def states(self, job_ids: Iterable[str], *fields: str) -> dict[str, list[str | None]]:
        """For each job, the given fields of its record (`state` by default), in one round trip."""
        names = list(fields or ("state",))
        ids = list(job_ids)
        return {
            job_id: [record.get(name) for name in names] for job_id, record in zip(ids, self._records(ids), strict=True)
        }

    def count(self) -> int:
        """Job records held now, hashes and packed (a SCAN: for tests and tools, not for a hot path)."""
        found = self._client.scan_iter(self._keys.job_pattern(), count=1000)
        hashes = sum(1 for key in found if not key.endswith((b":events", b":payload")))
        return hashes + self._packing.count()

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record with its history (`events`), or None when unknown."""
        return self.get_many([job_id])[job_id]

    def get_many(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """`get` for many jobs in one round trip."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        pipe = self._client.pipeline(transaction=False)
        self._records(ids, pipe)
        for job_id in ids:
            pipe.lrange(self._events(job_id), 0, -1)
        raws, *histories = pipe.execute(raise_on_error=False)
        for reply in histories:
            if isinstance(reply, Exception):
                raise reply
        if isinstance(raws, NoScriptError):  # Redis lost its scripts (a restart): read again, loading it
            records = self._records(ids)
        elif isinstance(raws, Exception):
            raise raws
        else:
            records = _decoded(raws)
        found: dict[str, dict[str, Any] | None] = {}
        for job_id, raw, events in zip(ids, records, histories, strict=True):
            if not raw:
                found[job_id] = None
                continue
            record: dict[str, Any] = {"id": job_id, "failures": "0", "last_error": ""} | raw
            record["events"] = [json.loads(e) for e in events] or _history(record)
            found[job_id] = record
        return found


def _decoded(replies: list[list[bytes]]) -> list[dict[str, str]]:
    """`lua/read.lua`'s replies (flat field, value lists) as dicts."""
    return [{k.decode(): v.decode() for k, v in zip(flat[::2], flat[1::2], strict=True)} for flat in replies]


def _history(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The history of a job that went straight through, as its record tells it (no event list is kept)."""
    if record.get("state") != "applied":
        return []
    running: dict[str, Any] = {"t": float(record.get("started") or record["updated"]), "state": "running"}
    if record.get("worker"):
        running["worker"] = record["worker"]
    return [
        {"t": float(record["created"]), "state": "queued"},
        running,
        {"t": float(record["updated"]), "state": "applied"},
    ]
