"""A few Redis commands in one round trip, at a fraction of what redis-py's pipeline costs the worker.

A job's start, a quiet portal's slot with its ordering gate, and a job's finish are each one round trip, and
they are most of what b24q adds to a job (docs/benchmarks.md: issue 21). redis-py 8's `Pipeline` spends
more CPU around a round trip than on it: its connection pool records observability counters and polls the
socket on every checkout and return, and the pipeline builds its own command stack and retry closures. A
`Batch` sends the commands the stores queue (the few a pipeline offers that they use: `evalsha`, `get`,
`llen`, `pttl`, `hgetall`) on a connection this module keeps, checked out of the client's own pool once (its
address, credentials, TLS or Sentinel master, and its `max_connections`), and answers as
`pipeline(transaction=False).execute()` does: a reply per command, a command's error in its place
(`NoScriptError` included), redis-py's reply types. A connection error is retried as the client's own policy
says (`retry_on_timeout`, its `Retry`), the whole batch again, as redis-py's pipeline does.

Measured on this machine (one thread, `time.thread_time`): a one-command round trip 0.016 ms against the
pipeline's 0.035, five commands 0.034 against 0.064.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis
from redis.connection import AbstractConnection
from redis.exceptions import ResponseError

#: idle connections kept per client; more go back to the client's pool (they stay checked out of it while kept)
MAX_IDLE = 32


def _pairs(reply: Any) -> dict[Any, Any]:
    """HGETALL's reply as redis-py gives it: a dict (RESP2 answers a flat list of fields and values)."""
    if isinstance(reply, dict):
        return reply
    items = iter(reply or ())
    return dict(zip(items, items, strict=False))


def _packed(conn: AbstractConnection, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The commands in Redis's protocol, packed by hiredis in C: the same bytes as redis-py's packer, which
    encodes each argument in Python (a fifth of the CPU for a finish's twenty arguments)."""
    encoder = conn.encoder
    if encoder.encoding.lower().replace("-", "") != "utf8" or encoder.encoding_errors != "strict":
        return list(conn.pack_commands(commands))
    try:
        return [b"".join([hiredis.pack_command(command) for command in commands])]
    except TypeError:  # an argument hiredis does not take (a memoryview, a bool): redis-py's packer decides
        return list(conn.pack_commands(commands))


class RoundTrips:
    """The connections one connection pool's batches go out on (`round_trip(client)` finds its client's): up to
    `max_idle` kept between batches, checked out of the pool."""

    def __init__(self, pool: redis.ConnectionPool, max_idle: int = MAX_IDLE) -> None:
        self._pool = pool
        self._max_idle = max_idle
        self._idle: deque[AbstractConnection] = deque()
        self._pid = os.getpid()

    def batch(self) -> Batch:
        return Batch(self)

    def _acquire(self) -> AbstractConnection:
        if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours to use
            self._idle = deque()
            self._pid = os.getpid()
        try:
            return self._idle.pop()
        except IndexError:  # checked out of the client's pool: counted against its max_connections
            return self._pool.get_connection()

    def _release(self, conn: AbstractConnection) -> None:
        if len(self._idle) < self._max_idle and not conn.should_reconnect():
            self._idle.append(conn)
        else:  # the pool closes or keeps it, and counts it as returned
            self._pool.release(conn)


class Batch:
    """Commands queued for one round trip; `execute` sends them (see the module's docstring)."""

    __slots__ = ("_commands", "_converts", "_trips")

    def __init__(self, trips: RoundTrips) -> None:
        self._trips = trips
        self._commands: list[tuple[Any, ...]] = []
        self._converts: list[Callable[[Any], Any] | None] = []

    def __len__(self) -> int:
        return len(self._commands)

    def _queue(self, command: tuple[Any, ...], convert: Callable[[Any], Any] | None = None) -> Batch:
        self._commands.append(command)
        self._converts.append(convert)
        return self

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Batch:
        return self._queue(("EVALSHA", sha, numkeys, *keys_and_args))

    def get(self, key: str) -> Batch:
        return self._queue(("GET", key))

    def llen(self, key: str) -> Batch:
        return self._queue(("LLEN", key))

    def pttl(self, key: str) -> Batch:
        return self._queue(("PTTL", key))

    def hgetall(self, key: str) -> Batch:
        return self._queue(("HGETALL", key), _pairs)

    def command(self, *args: Any) -> Batch:
        """Any other command, its reply as Redis gives it (bytes, ints, lists; EXEC's list of replies)."""
        return self._queue(args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """A reply per command, in order; a command's error in its place (raised, the first one, unless
        `raise_on_error` is False). Connection trouble is raised once the client's retry policy gives up."""
        if not self._commands:
            return []
        trips = self._trips
        conn = trips._acquire()
        try:
            replies = conn.retry.call_with_retry(lambda: self._send(conn), lambda _error: conn.disconnect())
        except BaseException:
            conn.disconnect()  # whatever is left on its socket must not reach the next batch
            trips._release(conn)
            raise
        trips._release(conn)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def _send(self, conn: AbstractConnection) -> list[Any]:
        # connected through its own `connect`: a Sentinel's connection asks the sentinels for the master there
        # (sending on a closed one would connect to its default address instead)
        conn.connect()
        conn.send_packed_command(_packed(conn, self._commands))
        replies: list[Any] = []
        for convert in self._converts:
            try:
                reply = conn.read_response()
            except ResponseError as exc:  # this command's error; the others' replies follow it
                replies.append(exc)
                continue
            replies.append(reply if convert is None else convert(reply))
        return replies


_trips: weakref.WeakKeyDictionary[redis.Redis, RoundTrips] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def round_trip(client: redis.Redis) -> Batch:
    """An empty batch for `client`'s server."""
    trips = _trips.get(client)
    if trips is None:
        with _lock:
            trips = _trips.get(client)
            if trips is None:
                trips = _trips[client] = RoundTrips(client.connection_pool)
    return trips.batch()


def pool_round_trip(pool: redis.ConnectionPool, max_idle: int) -> Batch:
    """An empty batch on `pool`'s connections, keeping at most `max_idle` of them between batches (a pool
    someone else sizes and replaces: kombu's). Its connections are kept on the pool itself, so that they go
    when it goes."""
    trips: RoundTrips | None = getattr(pool, _ON_POOL, None)
    if trips is None:
        with _lock:
            trips = getattr(pool, _ON_POOL, None)
            if trips is None:
                trips = RoundTrips(pool, max_idle)
                setattr(pool, _ON_POOL, trips)
    return trips.batch()


_ON_POOL = "_b24q_round_trips"
