"""The producer's bulk enqueue: how it feeds the broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tasks import producer
from tests.roundtrips import sent_to_redis
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
@pytest.mark.parametrize("portals", [1, 3])
def test_an_enqueue_costs_the_ledger_two_round_trips(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, flushed: bool, portals: int
) -> None:
    """The jobs' records with their order stamps (one transaction, the stamp script's text in it once), then
    their mark as open once the broker has them; also when Redis lost its scripts (a restart) since the last
    enqueue, when every stamp is still written."""
    names = ["acme", *(f"p{i}" for i in range(1, portals))]
    for name in names[1:]:
        rt.registry.add_oauth(name, f"http://127.0.0.1:9/{name}/rest/", "acc", "ref", 4102444800.0)
    # connections up, the portals' records cached (a producer reads a portal's once in a while)
    producer.enqueue_many([("mark-unread", {"portal": name, "dialog_id": "chat1", "message_id": 1}) for name in names])
    if flushed:
        rt.redis.script_flush()
    jobs = [("mark-unread", {"portal": name, "dialog_id": "chat1", "message_id": 2}) for name in names]
    with sent_to_redis(monkeypatch) as sent:
        ids = producer.enqueue_many(jobs)
    ledger = [s for s in sent if b"LPUSH" not in s and b"_kombu" not in s]  # kombu's publish on the Redis broker
    assert len(ledger) == 2, [s[:120] for s in sent]
    assert ledger[0].count(b"\r\nEVAL\r\n") == 1 and ledger[0].count(b"\r\nEVALSHA\r\n") == portals - 1
    assert all(rt.ledger.record(i)["ver"] for i in ids)
