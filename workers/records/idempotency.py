"""Idempotency keys of the HTTP intake: a POST retried with the same `Idempotency-Key` gets the job ids the
first one got, instead of enqueuing its jobs twice.

One string per (API key, Idempotency-Key): a `pending` marker while the first request runs (SET NX, so of
two concurrent requests exactly one enqueues), then the ids it got and a hash of its body, kept as long as
the ledger keeps jobs (`ledger_ttl`). A request that is refused or fails releases its marker, so a corrected
retry may use the same key. The marker expires after `pending_ttl`: a crashed request does not hold its
key forever (a retry after that enqueues again).

Examples:
    >>> store = IdempotencyKeys(redis_client, ttl=604800)                  # doctest: +SKIP
    >>> store.claim("9f86d081a1b2c3d4", "order-17", "t1") is None          # doctest: +SKIP
    True
    >>> store.done("9f86d081a1b2c3d4", "order-17", body_sha256, ids)        # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from workers.keys import DEFAULT_KEYS, Keys

PENDING = "pending:"


@dataclass(frozen=True)
class Earlier:
    """What holds an Idempotency-Key: a request still running (`ids` None), or the ids one got for `body`."""

    ids: list[str] | None
    body: str = ""


class IdempotencyKeys:
    """Idempotency-Key → job ids, per API key.

    Parameters:
        client: a redis-py client.
        keys: the Redis key layout (`B24Q_KEY_PREFIX`).
        ttl: seconds a finished request's ids are kept (`ledger_ttl`).
        pending_ttl: seconds a running request holds its key at most.
    """

    def __init__(
        self, client: redis.Redis, keys: Keys = DEFAULT_KEYS, ttl: float = 7 * 86400, pending_ttl: float = 60.0
    ) -> None:
        self._client = client
        self._keys = keys
        self._ttl = max(1, int(ttl))
        self._pending_ms = max(1, int(pending_ttl * 1000))

    def claim(self, owner: str, key: str, token: str) -> Earlier | None:
        """Take `key` for a new request identified by `token` (None), or learn what holds it."""
        name = self._keys.idempotency(owner, key)
        for _ in range(3):  # the holder may finish or release between our SET and GET
            if self._client.set(name, PENDING + token, nx=True, px=self._pending_ms):
                return None
            raw = self._client.get(name)
            if raw is None:
                continue
            text = raw.decode()
            if text.startswith(PENDING):
                return Earlier(None)
            data = json.loads(text)
            return Earlier([str(i) for i in data["ids"]], str(data["body"]))
        return Earlier(None)

    def done(self, owner: str, key: str, body: str, ids: list[str]) -> None:
        """The request enqueued `ids`: later requests with `key` get them (if their body hashes to `body`)."""
        self._client.set(self._keys.idempotency(owner, key), json.dumps({"ids": ids, "body": body}), ex=self._ttl)

    def release(self, owner: str, key: str, token: str) -> None:
        """The request enqueued nothing: free `key`, unless its marker expired and another request took it."""
        name = self._keys.idempotency(owner, key)

        def free(pipe: redis.client.Pipeline) -> None:
            if pipe.get(name) == (PENDING + token).encode():
                pipe.multi()
                pipe.delete(name)

        self._client.transaction(free, name)
