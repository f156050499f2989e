"""kombu's ack emulation on the Redis broker, written in b24q's lean round trips.

On Redis, kombu keeps every message a worker holds in an `unacked` hash and an `unacked_index` sorted set
(the messages a dead worker held go back to the queue from there), and writes both when a message is
delivered and again when it is acknowledged: a MULTI/EXEC transaction each, through a new redis-py client
and a redis-py pipeline. For a busy portal's job that pair cost more of a worker's CPU than anything b24q
does itself (`perf record` on Python 3.13 with its perf trampoline: 22 % of the workers' samples;
docs/benchmarks.md, session 30). `lean_unacked_writes` makes kombu's `QoS` send the same transactions (the same
commands, keys and values, the same atomicity) as `workers.roundtrip` batches on kombu's own connection pool.
Errors are raised as the pipeline raised them: a connection error from the client's retry policy, a command's
error (a refused command, a wrong type) as redis-py's `ResponseError`. Everything else of the transport
(restoring a dead worker's messages, `reject` with requeue, publishing) is kombu's own, and so are these writes
when kombu prefixes its keys (`global_keyprefix`: its client names them).
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import ResponseError

from workers.roundtrip import Batch, pool_round_trip

#: connections a channel's acks keep between round trips, out of kombu's pool (10 by default): what the
#: hand-off of a message and the acks of the jobs that end together need at once, leaving kombu the rest
KEEP = 4


def lean_unacked_writes() -> None:
    """Make kombu's Redis `QoS` write its unacked entries in lean round trips (once per process)."""
    from kombu.transport import redis as kombu_redis
    from kombu.transport.virtual import QoS as VirtualQoS

    qos: Any = kombu_redis.QoS
    if getattr(qos, "b24q_lean", False):
        return
    kombus = qos.append, qos.ack, qos.reject

    def append(self: Any, message: Any, delivery_tag: Any) -> None:
        if self.channel.global_keyprefix:  # kombu's prefixing client names the keys: kombu writes them
            return kombus[0](self, message, delivery_tag)
        delivery = message.delivery_info
        entry = kombu_redis.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        trip = _trip(self)
        trip.command("ZADD", self.unacked_index_key, time.time(), delivery_tag)
        trip.command("HSET", self.unacked_key, delivery_tag, entry)
        _transaction(trip)
        VirtualQoS.append(self, message, delivery_tag)

    def ack(self: Any, delivery_tag: Any) -> None:
        if self.channel.global_keyprefix:
            return kombus[1](self, delivery_tag)
        _remove(self, delivery_tag)
        VirtualQoS.ack(self, delivery_tag)

    def reject(self: Any, delivery_tag: Any, requeue: bool = False) -> None:
        if self.channel.global_keyprefix:
            return kombus[2](self, delivery_tag, requeue)
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            _remove(self, delivery_tag)
        VirtualQoS.ack(self, delivery_tag)

    qos.append = append
    qos.ack = ack
    qos.reject = reject
    qos.b24q_lean = True


def _trip(qos: Any) -> Batch:
    """A batch opened with MULTI on the channel's connection pool (as `conn_or_acquire` would use)."""
    return pool_round_trip(qos.channel.pool, KEEP).command("MULTI")


def _remove(qos: Any, delivery_tag: Any) -> None:
    trip = _trip(qos)
    trip.command("ZREM", qos.unacked_index_key, delivery_tag)
    trip.command("HDEL", qos.unacked_key, delivery_tag)
    _transaction(trip)


def _transaction(trip: Batch) -> list[Any]:
    """EXEC the batch's transaction; its commands' replies, or the first error raised as redis-py raises it."""
    replies = trip.command("EXEC").execute()  # MULTI's and each QUEUED reply, then EXEC's (an error is raised)
    results = replies[-1]
    if results is None:  # (EXEC answers nil only after a WATCH, which these never send)
        raise ResponseError("the transaction was discarded")
    for result in results:
        if isinstance(result, Exception):
            raise result
    return list(results)
