"""Dead letters: jobs that will not succeed by retrying, kept with their reason until an operator acts.

Redis has no dead-letter exchange and Celery drops a failed message, so b24q keeps its own: one hash
per job (payload, portal, error code and description, attempts, first and last seen) and a sorted
index by time. `b24q dead list|show|replay|purge` works on them; replay re-validates and enqueues
through the normal producer path (`tasks.producer.replay`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from workers.keys import DEFAULT_KEYS, Keys

_LUA = Path(__file__).parent / "lua"

#: A dead letter keeps at most this much of an invalid payload (raw messages can be megabytes).
MAX_STORED_PAYLOAD = 64 * 1024


def _utf8(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8(str(k)): _utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8(v) for v in value]
    return value


def storable(payload: Any, limit: int = MAX_STORED_PAYLOAD) -> dict[str, Any]:
    """A payload that Redis can store as UTF-8 JSON and that is not huge.

    A raw message's strings can hold a lone surrogate (`"\\ud800"`: valid JSON, not UTF-8), which
    would make writing its record raise; and a 5 MB payload would be stored whole.
    """
    clean = _utf8(payload if isinstance(payload, dict) else {"raw": payload})
    text = json.dumps(clean, ensure_ascii=False, default=str)
    if len(text) > limit:
        return {"raw": text[:2000], "truncated": f"payload of {len(text)} characters cut to 2000"}
    return dict(clean)


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


@dataclass(frozen=True)
class DeadPage:
    """A page of dead letters: how many match its filter, its letters, and all letters' counts by reason."""

    total: int
    letters: list[DeadLetter]
    by_reason: dict[str, int]


class DeadLetters:
    """The dead-letter store."""

    def __init__(self, client: redis.Redis, keys: Keys = DEFAULT_KEYS, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._keys = keys
        self._clock = clock
        self._counts = client.register_script((_LUA / "dead_counts.lua").read_text())
        self._page = client.register_script((_LUA / "dead_page.lua").read_text())

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
        key = self._keys.dead(job_id)
        first = self._client.hget(key, "first_seen")
        letter = DeadLetter(
            job_id,
            task,
            kind,
            portal,
            storable(payload),
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
        pipe.zadd(self._keys.dead_index(), {job_id: now})
        pipe.execute()
        return letter

    def get(self, job_id: str) -> DeadLetter | None:
        return self._letter(self._client.hgetall(self._keys.dead(job_id)))

    @staticmethod
    def _letter(raw: dict[bytes, bytes]) -> DeadLetter | None:
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
        return [i.decode() for i in self._client.zrange(self._keys.dead_index(), 0, -1)]

    def iter(self, portal: str | None = None, code: str | None = None, kind: str | None = None) -> Iterator[DeadLetter]:
        for job_id in self.ids():
            letter = self.get(job_id)
            if letter is None:
                self._client.zrem(self._keys.dead_index(), job_id)
                continue
            if (portal and letter.portal != portal) or (code and letter.code != code) or (kind and letter.kind != kind):
                continue
            yield letter

    def remove(self, job_id: str) -> bool:
        pipe = self._client.pipeline()
        pipe.delete(self._keys.dead(job_id))
        pipe.zrem(self._keys.dead_index(), job_id)
        return bool(pipe.execute()[0])

    def count(self) -> int:
        return int(self._client.zcard(self._keys.dead_index()))

    def page(self, portal: str | None = None, code: str | None = None, offset: int = 0, limit: int = 50) -> DeadPage:
        """The letters matching the filter, newest first (`limit` of them from `offset`), how many match, and
        every letter's count by reason: one pass inside Redis, then the page's letters, so a page stays fast
        with tens of thousands of letters."""
        reply = self._page(
            keys=[self._keys.dead_index()], args=[self._keys.dead(""), portal or "", code or "", offset, limit]
        )
        total, count = int(reply[0]), int(reply[1])
        ids, flat = reply[2 : 2 + count], reply[2 + count :]
        pipe = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._keys.dead(job_id.decode()))
        letters = [letter for letter in map(self._letter, pipe.execute()) if letter is not None]
        reasons = {value.decode(): int(n) for value, n in zip(flat[::2], flat[1::2], strict=True)}
        return DeadPage(total, letters, dict(sorted(reasons.items())))

    def _count_by(self, field: str, values: Sequence[str] = ()) -> dict[str, int]:
        flat = self._counts(keys=[self._keys.dead_index()], args=[self._keys.dead(""), field, *values])
        return {value.decode(): int(n) for value, n in zip(flat[::2], flat[1::2], strict=True)}

    def counts_by_portal(self, portals: Sequence[str] = ()) -> dict[str, int]:
        """Dead letters per portal (of these portals only, if any are named)."""
        return self._count_by("portal", portals)

    def counts(self) -> dict[str, int]:
        """Dead letters per reason (error code)."""
        return self._count_by("code")
