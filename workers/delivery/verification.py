"""What an unproven application event may cost a portal: the `app.info` calls that verify its token.

`/b24/install` and `/b24/events` are open to the internet, and a portal's domain is public. An install, and
an update whose `application_token` does not match, are believed only once one `app.info` call with the
event's own access token succeeds (bitrix24-facts.md §7.3) — so anyone who knows a domain can make b24q call
that portal. This gate bounds that work per portal host, pool-wide (Redis), whoever sends the events:

- **single-flight**: one verification in flight per host; the others are refused at once, not queued;
- **a budget**: `B24Q_EVENT_VERIFY_PER_MINUTE` calls per host per minute (a GCRA bucket, burst
  `B24Q_EVENT_VERIFY_BURST`); an event over it is refused without a call;
- **a memory of failed tokens**: a token the portal refused is refused again locally for an hour (an access
  token lives one hour, §2.1), so replaying one costs nothing.

Nothing here waits: a refused turn says when to try again. It never touches the portal's own request bucket
either; the caller books a slot there without waiting for it (`OneOffCalls.book`), and a slot not due now
defers the event to it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from workers.delivery.ratelimit import RateLimiter
from workers.keys import Keys
from workers.portals.limits import Limits

#: How long a token the portal refused is refused again without a call: an access token's lifetime.
FAILED_TTL = 3600.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Busy(Exception):
    """No verification now for this host: one is in flight, or its budget is spent. `retry_after` seconds."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class VerificationGate:
    """Single-flight, budget and failed-token memory for event verification, per portal host.

    Parameters:
        client: the pool's redis-py client.
        keys: the key layout.
        per_minute, burst: the budget of verification calls per host.
        lock_ttl: seconds a verification may hold its host (a holder that dies frees it then): longer than
            one `app.info` call can take.
    """

    def __init__(self, client: redis.Redis, keys: Keys, per_minute: float, burst: int, lock_ttl: float) -> None:
        self._client = client
        self._keys = keys
        self._budget = RateLimiter(client, keys, bucket=keys.verify_bucket)
        self._limits = Limits(per_minute / 60.0, burst)
        self._lock_ttl = lock_ttl
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def failed_before(self, host: str, token: str) -> bool:
        """Did the portal at `host` refuse this token within the last hour?"""
        return bool(self._client.exists(self._keys.verify_failed(host, self._digest(token))))

    def remember_failure(self, host: str, token: str) -> None:
        self._client.set(self._keys.verify_failed(host, self._digest(token)), b"1", px=int(FAILED_TTL * 1000))

    @contextmanager
    def turn(self, host: str) -> Iterator[None]:
        """Hold `host`'s one verification slot for the block, after one unit of its budget; `Busy` if another
        verification holds it or the budget is spent (nothing spent then)."""
        lock = self._keys.verify_lock(host)
        owner = uuid.uuid4().hex
        if not self._client.set(lock, owner, nx=True, px=int(self._lock_ttl * 1000)):
            raise Busy("another verification for this portal is running", 1.0)
        try:
            if self._limits.rate > 0:
                permit = self._budget.reserve(host, self._limits, 0.0)
                if not permit.granted:
                    raise Busy("this portal's budget of event verifications is spent", permit.wait)
            yield
        finally:
            self._release(keys=[lock], args=[owner])
