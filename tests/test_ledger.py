"""The job ledger's own contract, on a real Redis: what a record keeps, for how long, and the backlog."""

from __future__ import annotations

import pytest
import redis

from tests.roundtrips import sent_to_redis
from workers.keys import DEFAULT_KEYS
from workers.records.ledger import Failures, Ledger

DAY, WEEK = 86400, 7 * 86400


def ledger(rclient: redis.Redis) -> Ledger:
    return Ledger(rclient, ttl=WEEK, ttl_applied=DAY, clock=lambda: 1_700_000_000.0)


def test_a_job_applied_on_its_first_run_keeps_a_compact_record_for_the_shorter_ttl(rclient: redis.Redis) -> None:
    book = ledger(rclient)
    book.enqueued("j1", "status-update", "acme", payload={"message_id": "m1"})
    book.mark_open(["j1"])
    run = book.started("j1", "status-update", "acme", worker="w1")
    assert (run.created, run.runs, run.version) == (1_700_000_000.0, 1, "")
    book.finish("j1", "acme", "applied")

    keys = DEFAULT_KEYS
    assert not rclient.exists(keys.job_events("j1"))  # its history is what the record says
    assert not rclient.exists(keys.job_payload("j1"))  # the payload goes with the job's end
    assert not rclient.exists(keys.job("j1"))  # packed into a bucket (tests/test_ledger_packed.py)
    record = book.record("j1")
    assert (record["state"], record["runs"], record["worker"]) == ("applied", "1", "w1")
    assert book.backlog("acme") == 0
    assert rclient.zscore(keys.open_jobs(), "j1") is None
    assert rclient.hget(keys.outcomes("acme"), "applied") == b"1"


def test_a_job_with_a_story_keeps_it_for_the_longer_ttl(rclient: redis.Redis) -> None:
    book = ledger(rclient)
    book.enqueued("j2", "status-update", "acme")
    book.started("j2", "status-update", "acme")
    assert book.failure("j2") == Failures(1, 0.0)
    book.note("j2", "retrying", "ERROR_CORE: portal said 500", failures=1)
    assert book.started("j2", "status-update", "acme").runs == 2
    book.finish("j2", "acme", "applied")

    keys = DEFAULT_KEYS
    assert DAY < rclient.ttl(keys.job("j2")) <= WEEK
    assert DAY < rclient.ttl(keys.job_events("j2")) <= WEEK
    found = book.get("j2")
    assert found is not None
    assert [e["state"] for e in found["events"]] == ["queued", "running", "retrying", "running", "applied"]


def test_an_outcome_is_counted_once_however_often_a_job_finishes(rclient: redis.Redis) -> None:
    book = ledger(rclient)
    for job in ("a", "b"):
        book.enqueued(job, "status-update", "acme")
    book.finish("a", "acme", "superseded", by="b")
    book.finish("a", "acme", "superseded", by="b")  # a redelivered job ends again
    assert book.backlog("acme") == 1
    assert rclient.hget(DEFAULT_KEYS.outcomes("acme"), "superseded") == b"1"
    book.finish("b", "acme", "dead", error="WRONG_CODE: no such provider")
    assert book.backlog("acme") == 0
    assert book.record("b")["last_error"] == "WRONG_CODE: no such provider"
    assert DAY < rclient.ttl(DEFAULT_KEYS.job("b")) <= WEEK  # a dead letter is no clean success


def test_a_job_no_producer_recorded_gets_its_record_and_payload_at_first_sight(rclient: redis.Redis) -> None:
    book = ledger(rclient)
    run = book.started("raw", "mark-unread", "acme", payload=lambda: {"dialog_id": "chat1"})
    assert run.runs == 1
    assert book.backlog("acme") == 1
    assert book.payload("raw") == {"dialog_id": "chat1"}


def test_jobs_finished_together_are_recorded_applied_and_an_unreachable_redis_says_which_were_not(
    rclient: redis.Redis,
) -> None:
    led = ledger(rclient)
    for job_id in ("a", "b"):
        led.enqueued(job_id, "mark-unread", "acme")
    rclient.script_flush()  # a Redis restarted since: the script is loaded again
    assert led.finish_applied("acme", ["a", "b"]) == [True, True]
    assert [led.get(j)["state"] for j in ("a", "b")] == ["applied", "applied"]  # type: ignore[index]
    assert led.backlog("acme") == 0
    gone = Ledger(redis.Redis(port=1, socket_connect_timeout=0.2), DEFAULT_KEYS)
    assert gone.finish_applied("acme", ["c", "d"]) == [False, False]


def test_records_are_read_in_one_round_trip_also_after_redis_lost_its_scripts(
    rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = ledger(rclient)
    book.enqueued("j1", "status-update", "acme", payload={"message_id": "m1"})
    book.enqueued("j2", "status-update", "acme")
    book.started("j2", "status-update", "acme", worker="w1")
    assert book.get("j1") is not None  # the read script loaded
    with sent_to_redis(monkeypatch) as sent:
        found = book.get_many(["j1", "j2", "unknown"])
    assert len(sent) == 1
    assert (found["j1"] or {})["state"] == "queued" and (found["j2"] or {})["state"] == "running"
    assert found["unknown"] is None
    rclient.script_flush()  # a Redis restarted since: the read is sent again, loading its script
    assert book.get_many(["j1", "j2", "unknown"]) == found
