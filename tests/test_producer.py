"""The producer's bulk enqueue: how it feeds the broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tasks import producer
from workers import keys
from workers.celery import configure
from workers.runtime import Runtime
from workers.settings import Settings, get_settings


@pytest.fixture
def rt(runtime: Runtime, settings: Settings) -> Iterator[Runtime]:
    """The shared test Runtime, the Celery producer pointed at the same private Redis, one portal."""
    configure(settings)
    runtime.registry.add_oauth("acme", "http://127.0.0.1:9/acme/rest/", "acc-token-1", "ref-token-1", 4102444800.0)
    yield runtime
    configure(get_settings())


def test_a_bulk_enqueue_reaches_the_broker_first_in_small_chunks(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk's messages reach the broker only once the whole chunk is recorded: the first ones are small, so
    that workers start on a big enqueue's first jobs while the rest is still being published."""
    chunks: list[int] = []
    publish = producer.publish

    def counting(runtime: Runtime, jobs: list[Any], *args: Any) -> list[str]:
        chunks.append(len(jobs))
        return publish(runtime, jobs, *args)

    monkeypatch.setattr(producer, "publish", counting)
    jobs = [("mark-unread", {"portal": "acme", "dialog_id": "chat1", "message_id": i}) for i in range(1, 2601)]
    ids = producer.enqueue_many(jobs)
    assert chunks == [100, 200, 400, 800, 1000, 100]
    assert len(set(ids)) == 2600 and rt.ledger.count() == 2600
    queued = sum(int(rt.redis.llen(keys.queue(rt.settings.queue, step))) for step in keys.PRIORITY_STEPS)
    assert queued == 2600


@pytest.mark.parametrize("flushed", [False, True], ids=["scripts loaded", "scripts flushed"])
def test_an_enqueue_costs_the_ledger_two_round_trips(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, flushed: bool
) -> None:
    """The jobs' records with their order stamp (one transaction), then their mark as open once the broker has
    them; also when Redis lost its scripts (a restart) since the last enqueue, when the stamp is still written."""
    producer.enqueue("mark-unread", {"portal": "acme", "dialog_id": "chat1", "message_id": 1})  # connections up
    if flushed:
        rt.redis.script_flush()
    sent: list[bytes] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def counted(conn: redis.connection.AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else command)
        real_send(conn, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    job_id = producer.enqueue("mark-unread", {"portal": "acme", "dialog_id": "chat1", "message_id": 2})
    monkeypatch.undo()
    ledger = [s for s in sent if b"LPUSH" not in s and b"_kombu" not in s]  # kombu's publish on the Redis broker
    assert len(ledger) == 2, [s[:120] for s in sent]
    assert rt.ledger.record(job_id)["ver"]
