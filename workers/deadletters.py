"""Dead letters: jobs that will not succeed by retrying, kept with their reason until an operator acts.

Redis has no dead-letter exchange and Celery drops a failed message, so b24q keeps its own: one hash
per job (payload, portal, error code and description, attempts, first and last seen) and a sorted
index by time. `b24q dead list|show|replay|purge` works on them; replay re-validates and enqueues
through the normal producer path (`tasks.producer.replay`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis


@dataclass(frozen=True)
class DeadLetter:
    id: str
    task: str
    kind: str
    portal: str
    payload: dict[str, Any]
    code: str
    description: str
    attempts: int
    first_seen: float
    last_seen: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeadLetters:
    """The dead-letter store."""

    def __init__(self, client: redis.Redis, prefix: str = "b24q", clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock

    def _index(self) -> str:
        return f"{self._prefix}:dead"

    def _key(self, job_id: str) -> str:
        return f"{self._prefix}:dead:{job_id}"

    def add(
        self,
        job_id: str,
        task: str,
        kind: str,
        portal: str,
        payload: Any,
        code: str,
        description: str,
        attempts: int,
    ) -> DeadLetter:
        now = self._clock()
        key = self._key(job_id)
        first = self._client.hget(key, "first_seen")
        letter = DeadLetter(
            job_id,
            task,
            kind,
            portal,
            payload if isinstance(payload, dict) else {"raw": payload},
            code,
            description[:2000],
            attempts,
            float(first) if first else now,
            now,
        )
        record = letter.as_dict()
        record["payload"] = json.dumps(record["payload"], ensure_ascii=False, default=str)
        pipe = self._client.pipeline()
        pipe.hset(key, mapping={k: str(v) for k, v in record.items()})
        pipe.zadd(self._index(), {job_id: now})
        pipe.execute()
        return letter

    def get(self, job_id: str) -> DeadLetter | None:
        raw = self._client.hgetall(self._key(job_id))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return DeadLetter(
            d["id"],
            d["task"],
            d["kind"],
            d["portal"],
            json.loads(d["payload"]),
            d["code"],
            d["description"],
            int(d["attempts"]),
            float(d["first_seen"]),
            float(d["last_seen"]),
        )

    def ids(self) -> list[str]:
        return [i.decode() for i in self._client.zrange(self._index(), 0, -1)]

    def iter(self, portal: str | None = None, code: str | None = None, kind: str | None = None) -> Iterator[DeadLetter]:
        for job_id in self.ids():
            letter = self.get(job_id)
            if letter is None:
                self._client.zrem(self._index(), job_id)
                continue
            if (portal and letter.portal != portal) or (code and letter.code != code) or (kind and letter.kind != kind):
                continue
            yield letter

    def remove(self, job_id: str) -> bool:
        pipe = self._client.pipeline()
        pipe.delete(self._key(job_id))
        pipe.zrem(self._index(), job_id)
        return bool(pipe.execute()[0])

    def count(self) -> int:
        return int(self._client.zcard(self._index()))

    def counts(self) -> dict[str, int]:
        """Dead letters per reason (error code)."""
        pipe = self._client.pipeline()
        for job_id in self.ids():
            pipe.hget(self._key(job_id), "code")
        return dict(Counter(c.decode() for c in pipe.execute() if c is not None))
