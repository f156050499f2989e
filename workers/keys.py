"""The Redis key layout: every key b24q writes, and the broker keys it reads, named in one place.

Stores (`records/`, `portals/`, `delivery/`) take a `Keys` and never format a key themselves; status
views, the CLI, the demo, benchmarks and tests ask a store, or this layout, never build one by hand.
Per-portal keys carry the portal in a `{hash tag}` so that a Lua script touching one portal's keys
stays on one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: kombu's Redis transport: the hash of messages delivered to a worker and not yet acknowledged
#: (scheduled retries wait there until their countdown ends), and the priority sub-queue separator.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
PRIORITY_SEP = "\x06\x16"
#: The broker's priority steps (kombu's Redis transport serves 0 first; `priority_steps` in its configuration).
PRIORITY_STEPS = (0, 3, 6, 9)
#: What a portal key may be made of: it names Redis keys (the job schemas say the same of `portal`).
PORTAL_KEY_CHARS = r"^[A-Za-z0-9.\-_:]+$"
PORTAL_KEY_MAX = 255


def queue(name: str, priority: int) -> str:
    """The broker's Redis list of queue `name` for one priority step (kombu: `name` itself for step 0)."""
    return f"{name}{PRIORITY_SEP}{priority}" if priority else name


@dataclass(frozen=True)
class Keys:
    """b24q's own keys under `prefix` (`B24Q_KEY_PREFIX`)."""

    prefix: str = "b24q"

    # records: the job ledger, dead letters, parked jobs
    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def job_payload(self, job_id: str) -> str:
        """An unfinished job's message kwargs (apart from its record: a long value there would turn the
        record's hash from Redis's compact encoding into a table several times its size, for good)."""
        return f"{self.prefix}:job:{job_id}:payload"

    def job_pattern(self) -> str:
        """A SCAN pattern matching every job record (and its event list)."""
        return f"{self.prefix}:job:*"

    def ledger_packed(self) -> str:
        """The common prefix of the packed records of jobs applied on their first run (`records/packed.py`):
        per generation GEN, buckets `{prefix}:ledger:GEN:b:PATH` (PATH: bits of a job's digest), the set of
        split paths `:GEN:split` and the table of names `:GEN:names`; the scripts append the rest."""
        return f"{self.prefix}:ledger"

    def ledger_bucket_pattern(self) -> str:
        """A SCAN pattern matching every bucket of packed records."""
        return f"{self.prefix}:ledger:*:b:*"

    def backlog(self, portal: str) -> str:
        return f"{self.prefix}:backlog:{{{portal}}}"

    def outcomes(self, portal: str) -> str:
        """How many of a portal's jobs ended in each terminal state (applied, superseded, dead, parked)."""
        return f"{self.prefix}:outcomes:{{{portal}}}"

    def recent(self, portal: str) -> str:
        """The ids of a portal's last finished jobs, newest first (`Ledger.RECENT` of them)."""
        return f"{self.prefix}:recent:{{{portal}}}"

    def open_jobs(self) -> str:
        return f"{self.prefix}:open"

    def dead_index(self) -> str:
        return f"{self.prefix}:dead"

    def dead(self, job_id: str) -> str:
        return f"{self.prefix}:dead:{job_id}"

    def parked(self, portal: str) -> str:
        return f"{self.prefix}:parked:{{{portal}}}"

    # portals: records, tokens
    def portal(self, portal: str) -> str:
        return f"{self.prefix}:portal:{{{portal}}}"

    def portal_pattern(self) -> str:
        """A SCAN pattern matching every portal record."""
        return f"{self.prefix}:portal:*"

    def portal_index(self) -> str:
        return f"{self.prefix}:portals"

    def alias(self, name: str) -> str:
        """Another name of a portal (its member_id or domain) → its registry key."""
        return f"{self.prefix}:alias:{name.lower()}"

    def refresh_lock(self, portal: str) -> str:
        return f"{self.prefix}:lock:refresh:{{{portal}}}"

    def token_stats(self) -> str:
        return f"{self.prefix}:stats:tokens"

    # delivery: the limiter, operating holds, the pool-wide call queue
    def bucket(self, portal: str) -> str:
        return f"{self.prefix}:rl:{{{portal}}}"

    def refusals(self) -> str:
        """QUERY_LIMIT_EXCEEDED answers so far, a hash by portal (the console's live counts)."""
        return f"{self.prefix}:refused_503"

    def hold(self, portal: str, method: str) -> str:
        return f"{self.prefix}:hold:{{{portal}}}:{method}"

    def operating_reset(self, portal: str) -> str:
        return f"{self.prefix}:opreset:{{{portal}}}"

    def held_methods(self, portal: str) -> str:
        """The methods that were ever held for a portal (their hold keys expire; this set names them)."""
        return f"{self.prefix}:held:{{{portal}}}"

    def order_counter(self, portal: str) -> str:
        """A portal's sequence of recorded jobs (the producer's order)."""
        return f"{self.prefix}:seq:{{{portal}}}"

    def order_states(self, portal: str) -> str:
        """The common prefix of a portal's ordering buckets (`{prefix}:ord:{{portal}}:GENERATION`): hashes of
        its state keys (a message's status, a sender's field) → the versions recorded and sent."""
        return f"{self.prefix}:ord:{{{portal}}}"

    def calls(self, portal: str) -> str:
        return f"{self.prefix}:calls:{{{portal}}}"

    def replies(self, worker: str) -> str:
        return f"{self.prefix}:replies:{worker}"

    def alive(self, worker: str) -> str:
        return f"{self.prefix}:alive:{worker}"

    # broker: the reconciler's round, dead-worker recovery
    def reconcile_lock(self) -> str:
        return f"{self.prefix}:lock:reconcile"

    def recovery_lock(self) -> str:
        return f"{self.prefix}:lock:recover"

    def worker_beats(self) -> str:
        """Every worker seen: its name → the time of its last heartbeat (Redis server clock)."""
        return f"{self.prefix}:workers"

    def worker_holds(self, worker: str) -> str:
        """The delivery tags a live worker holds; the key lives as long as its heartbeat."""
        return f"{self.prefix}:holds:{worker}"

    def orphans(self) -> str:
        """Unacknowledged messages no live worker holds: tag → when first seen so (Redis server clock)."""
        return f"{self.prefix}:orphans"

    # the application side: what unproven events may cost a portal host (workers/delivery/verification.py)
    def verify_bucket(self, host: str) -> str:
        return f"{self.prefix}:verify:rl:{host.lower()}"

    def verify_lock(self, host: str) -> str:
        return f"{self.prefix}:verify:lock:{host.lower()}"

    def verify_failed(self, host: str, token_digest: str) -> str:
        """A token the portal refused (its digest, never the token)."""
        return f"{self.prefix}:verify:failed:{host.lower()}:{token_digest}"

    # the HTTP intake: request buckets and idempotency keys, per API key (its digest's prefix, never the key)
    def api_bucket(self, key_id: str) -> str:
        return f"{self.prefix}:rl-api:{key_id}"

    def idempotency(self, key_id: str, idempotency_key: str) -> str:
        """What a POST with this `Idempotency-Key` got; the client's key is hashed (any length, any bytes)."""
        digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.prefix}:idem:{key_id}:{digest}"


#: The layout under the default prefix (`b24q`).
DEFAULT_KEYS = Keys()
