"""Parked jobs: kept, not failed and not lost, while their portal needs re-authorisation.

When a refresh answers `invalid_grant` (or the portal refuses the app), retrying cannot help until
someone installs fresh tokens. Jobs for that portal are parked in a Redis hash keyed by job id, and
acknowledged; `tasks.producer.store_tokens` (or `b24q portal auth`) stores a new pair and resumes
them through the normal producer path, keeping their job ids.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from workers.keys import DEFAULT_KEYS, Keys


class Parking:
    def __init__(self, client: redis.Redis, keys: Keys = DEFAULT_KEYS) -> None:
        self._client = client
        self._keys = keys

    def park(self, portal: str, job_id: str, task: str, kwargs: dict[str, Any]) -> None:
        envelope = {"id": job_id, "task": task, "kwargs": kwargs}
        self._client.hset(self._keys.parked(portal), job_id, json.dumps(envelope, ensure_ascii=False))

    def parked(self, portal: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self._client.hvals(self._keys.parked(portal))]

    def get(self, portal: str, job_id: str) -> dict[str, Any] | None:
        raw = self._client.hget(self._keys.parked(portal), job_id)
        return json.loads(raw) if raw is not None else None

    def count(self, portal: str) -> int:
        return int(self._client.hlen(self._keys.parked(portal)))

    def release(self, portal: str, job_id: str) -> None:
        """Forget a parked job once it is back in the queue."""
        self._client.hdel(self._keys.parked(portal), job_id)
