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


class Parking:
    def __init__(self, client: redis.Redis, prefix: str = "b24q") -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, portal: str) -> str:
        return f"{self._prefix}:parked:{{{portal}}}"

    def park(self, portal: str, job_id: str, task: str, kwargs: dict[str, Any]) -> None:
        envelope = {"id": job_id, "task": task, "kwargs": kwargs}
        self._client.hset(self._key(portal), job_id, json.dumps(envelope, ensure_ascii=False))

    def parked(self, portal: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self._client.hvals(self._key(portal))]

    def count(self, portal: str) -> int:
        return int(self._client.hlen(self._key(portal)))

    def release(self, portal: str, job_id: str) -> None:
        """Forget a parked job once it is back in the queue."""
        self._client.hdel(self._key(portal), job_id)
