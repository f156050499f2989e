"""kombu's ack emulation on Redis, written by `workers.broker.unacked`: the entries kombu itself reads back
(a held message, its restore when its worker is gone) and their removal by an ack or a reject."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection
from kombu.simple import SimpleQueue

from workers.broker import configuration
from workers.broker.unacked import lean_unacked_writes
from workers.localdev.redisserver import RedisServer
from workers.settings import Settings


@pytest.fixture
def queue(redis_server: RedisServer, rclient: redis.Redis) -> Iterator[SimpleQueue]:
    lean_unacked_writes()
    with Connection(redis_server.url) as conn:
        simple = conn.SimpleQueue("unacked-test")
        yield simple
        simple.close()


def _held(rclient: redis.Redis) -> tuple[dict[bytes, bytes], dict[bytes, float]]:
    return rclient.hgetall("unacked"), dict(rclient.zrange("unacked_index", 0, -1, withscores=True))


def test_a_held_message_is_kept_as_kombu_keeps_it_and_an_ack_removes_it(
    queue: SimpleQueue, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.put({"n": 1})

    def pipeline_used(*_: object, **__: object) -> None:
        raise AssertionError("kombu's pipeline wrote the unacked entry")

    monkeypatch.setattr(redis.client.Pipeline, "execute", pipeline_used)
    before = time.time()
    message = queue.get(timeout=5)
    entries, index = _held(rclient)
    tag = message.delivery_tag.encode()
    assert list(entries) == [tag] and list(index) == [tag]
    raw, exchange, routing_key = json.loads(entries[tag])
    assert raw == message._raw  # what kombu's restore publishes again
    assert (exchange, routing_key) == (message.delivery_info["exchange"], message.delivery_info["routing_key"])
    assert before - 1 <= index[tag] <= time.time() + 1  # the time the visibility timeout counts from

    message.ack()
    assert _held(rclient) == ({}, {})


def test_a_rejected_message_leaves_the_index_and_a_requeued_one_goes_back(
    queue: SimpleQueue, rclient: redis.Redis
) -> None:
    queue.put({"n": 1})
    queue.put({"n": 2})
    first, second = queue.get(timeout=5), queue.get(timeout=5)
    assert len(_held(rclient)[0]) == 2
    first.reject()
    second.requeue()
    assert _held(rclient) == ({}, {})
    again = queue.get(timeout=5)
    assert again.payload == {"n": 2}
    again.ack()


def test_kombu_restores_a_message_held_by_a_worker_that_is_gone(queue: SimpleQueue, rclient: redis.Redis) -> None:
    queue.put({"n": 1})
    queue.get(timeout=5)  # held, never acknowledged
    queue.channel.qos.restore_unacked()  # what a stopping worker (or the sweep of a dead one's) does
    assert _held(rclient) == ({}, {})
    back = queue.get(timeout=5)
    assert back.payload == {"n": 1}
    back.ack()


def test_a_transaction_redis_refuses_raises_as_the_pipeline_did(queue: SimpleQueue, rclient: redis.Redis) -> None:
    rclient.set("unacked", "not a hash")  # HSET fails inside EXEC (WRONGTYPE)
    queue.put({"n": 1})
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        queue.get(timeout=5)


def test_with_a_key_prefix_kombu_writes_its_own_entries(redis_server: RedisServer, rclient: redis.Redis) -> None:
    """kombu's prefixing client names the keys (`global_keyprefix`): the entries are kombu's own writes, under the
    prefix that its restore reads."""
    lean_unacked_writes()
    with Connection(redis_server.url, transport_options={"global_keyprefix": "p:"}) as conn:
        simple = conn.SimpleQueue("unacked-prefixed")
        simple.put({"n": 1})
        message = simple.get(timeout=5)
        assert rclient.hkeys("p:unacked") == [message.delivery_tag.encode()]
        assert not rclient.exists("unacked", "unacked_index")
        message.ack()
        assert not rclient.exists("p:unacked", "p:unacked_index")
        simple.close()


def test_every_job_thread_of_a_worker_can_acknowledge_at_once(settings: Settings) -> None:
    """The consumer channel's pool takes a connection per job thread acknowledging its message (kombu's own
    cap, 10, is less than a worker's threads)."""
    options = configuration.build(settings)["broker_transport_options"]
    with Connection(settings.redis_url, transport_options=options) as conn:
        assert conn.default_channel.pool.max_connections >= settings.worker_concurrency + 1
