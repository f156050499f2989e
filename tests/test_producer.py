"""The producer's bulk enqueue: how it feeds the broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

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
