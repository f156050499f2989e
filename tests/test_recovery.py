"""Dead-worker recovery's bookkeeping on a real redis-server: which unacknowledged messages are orphans."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from types import SimpleNamespace

import redis

from workers import keys
from workers.broker.recovery import Presence, held_tags
from workers.keys import Keys
from workers.settings import Settings


def deliver(client: redis.Redis, tag: str, job_id: str, queue: str = "b24q") -> None:
    """What kombu writes when it delivers a message to a worker."""
    envelope = {"headers": {"id": job_id, "task": "b24q.mark_unread"}, "properties": {"delivery_tag": tag}}
    client.zadd(keys.UNACKED_INDEX, {tag: time.time()})
    client.hset(keys.UNACKED, tag, json.dumps([envelope, queue, queue]))


def due_within(presence: Presence, seconds: float) -> list[tuple[str, str]]:
    """Look every 50 ms until something is due (or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    while True:
        found = presence.orphans()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_an_unheld_message_is_due_only_after_dead_after(rclient: redis.Redis, settings: Settings) -> None:
    presence = Presence(rclient, Keys(settings.key_prefix), dead_after=0.5)
    deliver(rclient, "t1", "job-1")
    started = time.monotonic()
    assert presence.orphans() == []  # first look: remembered, not due
    assert due_within(presence, 5) == [("t1", "job-1")]
    assert time.monotonic() - started >= 0.45
    presence.forget(["t1"])
    assert rclient.hlen(Keys(settings.key_prefix).orphans()) == 0


def test_a_live_workers_messages_are_never_due(rclient: redis.Redis, settings: Settings) -> None:
    presence = Presence(rclient, Keys(settings.key_prefix), dead_after=0.3)
    deliver(rclient, "t1", "job-1")
    deliver(rclient, "t2", "job-2")
    deadline = time.monotonic() + 1.0
    found: list[tuple[str, str]] = []
    while time.monotonic() < deadline:  # longer than dead_after, beating all along
        presence.beat("w1@host", ["t1"])
        found += presence.orphans()
        time.sleep(0.05)
    assert set(found) == {("t2", "job-2")}  # t2 nobody holds; t1 its live worker does
    assert presence.alive("w1@host") and presence.last_beat("w1@host") is not None


def test_a_message_held_again_starts_over(rclient: redis.Redis, settings: Settings) -> None:
    presence = Presence(rclient, Keys(settings.key_prefix), dead_after=0.4)
    deliver(rclient, "t1", "job-1")
    assert presence.orphans() == []  # seen unheld
    presence.beat("w1@host", ["t1"])  # then its worker published it
    assert presence.orphans() == []  # forgotten as an orphan
    rclient.delete(Keys(settings.key_prefix).worker_holds("w1@host"))  # the worker dies
    started = time.monotonic()
    assert due_within(presence, 5) == [("t1", "job-1")]
    assert time.monotonic() - started >= 0.35  # a full dead_after from when it was unheld again


def test_other_queues_messages_are_left_alone(rclient: redis.Redis, settings: Settings) -> None:
    presence = Presence(rclient, Keys(settings.key_prefix), dead_after=0.2, queue="b24q")
    deliver(rclient, "theirs", "their-job", queue="another-app")
    deliver(rclient, "ours", "our-job")
    assert due_within(presence, 5) == [("ours", "our-job")]
    presence.forget(["ours"])
    rclient.zrem(keys.UNACKED_INDEX, "ours")
    assert due_within(presence, 0.5) == []


def test_a_workers_held_tags_come_from_its_channel() -> None:
    delivered = OrderedDict([("t1", object()), ("t2", object())])
    consumer = SimpleNamespace(
        task_consumer=SimpleNamespace(channel=SimpleNamespace(qos=SimpleNamespace(_delivered=delivered)))
    )
    assert held_tags(consumer) == ["t1", "t2"]
    assert held_tags(SimpleNamespace(task_consumer=None)) == []  # not consuming yet
