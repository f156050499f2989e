"""`workers.roundtrip`: a batch answers as redis-py's pipeline does, on connections of its own (made with the
client's credentials) that are reused, never crossed between threads, and outlive a Redis restart."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError, ResponseError

from tests.threads import in_threads
from workers.localdev.redisserver import RedisSentinel, RedisServer
from workers.redisurl import connect
from workers.roundtrip import Batch, pool_round_trip, round_trip
from workers.runtime import Runtime
from workers.settings import Settings


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(appendonly=False, password="round-trip-pw") as s:  # its connections must authenticate
        yield s


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = server.client()
    yield c
    c.close()


def _comparable(reply: Any) -> Any:
    if isinstance(reply, Exception):
        return type(reply), str(reply)
    return reply


def test_a_batch_answers_as_a_pipeline_does(client: redis.Redis) -> None:
    client.set("present", "v")
    client.rpush("list", "a", "b")
    client.set("forever", "x")
    client.hset("hash", mapping={"f": "1", "g": "2"})
    sha = client.script_load("return {KEYS[1], ARGV[1], 3}")

    def queue(p: Any) -> None:
        p.evalsha(sha, 1, "k", "arg")
        p.get("present")
        p.get("absent")
        p.llen("list")
        p.pttl("forever")
        p.pttl("absent")
        p.hgetall("hash")
        p.hgetall("absent")
        p.evalsha("0" * 40, 0)  # no such script
        p.llen("present")  # the wrong type

    pipe = client.pipeline(transaction=False)
    queue(pipe)
    expected = pipe.execute(raise_on_error=False)
    batch = round_trip(client)
    queue(batch)
    got = batch.execute(raise_on_error=False)
    assert [_comparable(r) for r in got] == [_comparable(r) for r in expected]
    assert got[1] == b"v" and got[6] == {b"f": b"1", b"g": b"2"} and got[7] == {}
    assert isinstance(got[8], NoScriptError) and isinstance(got[9], ResponseError)


def test_the_first_error_is_raised_when_asked_and_the_connection_stays_in_step(client: redis.Redis) -> None:
    client.set("a", "1")
    with pytest.raises(NoScriptError):
        round_trip(client).evalsha("0" * 40, 0).get("a").execute()
    assert round_trip(client).get("a").llen("none").execute() == [b"1", 0]


def _at_once(monkeypatch: pytest.MonkeyPatch, batches: list[Batch]) -> tuple[list[Any], set[int]]:
    """Run the batches in threads of their own, all of them in flight at once (each holding its connection
    until every one does); what each returned or raised, and the connections they went on."""
    together = threading.Barrier(len(batches))
    used: set[int] = set()
    real_send = Batch._send

    def send(batch: Batch, conn: Any) -> list[Any]:
        used.add(id(conn))
        together.wait(30)
        return real_send(batch, conn)

    monkeypatch.setattr(Batch, "_send", send)
    replies = in_threads([b.execute for b in batches])
    monkeypatch.undo()
    return replies, used


def test_batches_in_flight_together_go_on_connections_of_their_own(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.mset({"a": "1", "b": "2"})
    replies, used = _at_once(monkeypatch, [round_trip(client).get(k).llen("none") for k in ("a", "b")])
    assert replies == [[b"1", 0], [b"2", 0]]
    assert len(used) == 2


def test_connections_are_kept_between_batches(client: redis.Redis) -> None:
    round_trip(client).get("x").execute()
    before = client.info("stats")["total_connections_received"]
    for _ in range(50):
        round_trip(client).get("x").execute()
    assert client.info("stats")["total_connections_received"] == before


def test_a_batch_after_a_redis_restart_reconnects(server: RedisServer, client: redis.Redis) -> None:
    """A kept connection is dead after a restart; the client's retry policy reconnects and sends again."""
    round_trip(client).get("x").execute()  # a connection is kept
    server.kill()
    server.start()
    client.set("x", "after")
    assert round_trip(client).get("x").execute() == [b"after"]


def test_behind_a_sentinel_a_batch_reaches_the_master_also_after_a_reconnect() -> None:
    """A Sentinel's connection finds the master only through its own `connect`; a batch goes there, also on a
    kept connection that was closed since."""
    with RedisServer(appendonly=False, password="round-trip-pw") as master:
        sentinel = RedisSentinel(master.port, password="round-trip-pw").start()
        try:
            client = connect(f"sentinel://:round-trip-pw@127.0.0.1:{sentinel.port}/0", "mymaster")
            client.set("where", "the master")
            assert round_trip(client).get("where").execute() == [b"the master"]
            client.connection_pool.disconnect()
            for kept in list(_kept(client)):
                kept.disconnect()
            assert round_trip(client).get("where").execute() == [b"the master"]
            client.close()
        finally:
            sentinel.close()


def _kept(client: redis.Redis) -> Any:
    return round_trip(client)._trips._idle


def test_many_batches_in_flight_again_and_again_stay_within_the_pools_limit(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More batches at once than connections are kept: the extra ones go back to the client's pool, which
    counts them as returned, so rounds of them never run into its `max_connections`."""
    client = redis.Redis(host="127.0.0.1", port=server.port, password=server.password, max_connections=40)
    client.set("a", "1")
    for _ in range(3):
        replies, _ = _at_once(monkeypatch, [round_trip(client).get("a") for _ in range(38)])
        assert replies == [[b"1"]] * 38
    assert client.get("a") == b"1"
    client.close()


def test_a_workers_client_takes_every_job_thread_in_a_round_trip_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker runs `worker_concurrency` job threads (128 by default) beside its lanes' senders; redis-py's pool
    allows 100 connections unless told otherwise, and the 101st round trip at once would fail."""
    rt = Runtime(settings)
    at_once = settings.worker_concurrency + 22
    replies, _ = _at_once(monkeypatch, [round_trip(rt.redis).llen("none") for _ in range(at_once)])
    assert replies == [[0]] * at_once
    rt.redis.close()


def test_a_batch_sends_the_bytes_redis_py_would(client: redis.Redis) -> None:
    """Packed by hiredis: every kind of argument the stores pass arrives as redis-py's packer would send it
    (a float as its repr, text as UTF-8); one hiredis does not take (a memoryview) goes through redis-py's."""
    sha = client.script_load("return ARGV")
    args = ("text", "ünïcødé ✓", b"\x00\xffbytes", 7, -1, 12345678901234567890, 0.1, 1733591234.123456, 1e-07, 1e20)
    (echoed,) = round_trip(client).evalsha(sha, 0, *args).execute()
    assert echoed == [client.get_encoder().encode(a) for a in args]
    (viewed,) = round_trip(client).evalsha(sha, 0, memoryview(b"view")).execute()
    assert viewed == [b"view"]


def test_a_pools_batches_keep_its_connections_only_as_long_as_the_pool_lives(server: RedisServer) -> None:
    """A pool someone else replaces (kombu's, at every reconnect) takes the connections its batches kept with it."""
    pool = redis.ConnectionPool.from_url(server.url)
    assert pool_round_trip(pool, 2).command("PING").execute() == [b"PONG"]
    kept = weakref.ref(pool)
    del pool
    gc.collect()
    assert kept() is None
