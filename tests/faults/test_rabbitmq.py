"""RabbitMQ as the broker: an enqueue the producer saw succeed is on the broker (publisher confirms, tested by
cutting the connection), and a message that keeps killing workers ends as a dead letter."""

from __future__ import annotations

import contextlib
import gc
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from kombu import Connection

from tasks import producer
from tests.faults.conftest import add_portal, make_fault_stack, mixed_jobs, rabbitmqctl
from tests.integration.conftest import RABBITMQ_URL, on_broker
from workers import rabbitmq
from workers.observe.status import render, snapshot
from workers.runtime import get_runtime

pytestmark = pytest.mark.integration


def queued_ids(queue: str) -> list[str]:
    """The job ids of every message ready in b24q's lanes (taken off the queues: the test's own)."""
    ids: list[str] = []
    with Connection(RABBITMQ_URL) as conn:
        channel = conn.channel()
        for name in (queue, rabbitmq.bulk(queue)):
            while (message := channel.basic_get(name, no_ack=True)) is not None:
                ids.append(str(message.headers["id"]))
    return ids


def our_ports() -> set[int]:
    """The local ports of this process's open AMQP connections (the producer's: no worker runs in here)."""
    ports = set()
    for obj in gc.get_objects():
        if isinstance(obj, amqp.Connection) and obj.transport is not None and obj.transport.sock is not None:
            with contextlib.suppress(OSError):
                ports.add(obj.transport.sock.getsockname()[1])
    return ports


def close_at_broker(local_ports: set[int]) -> None:
    """RabbitMQ closes the connections whose client ends are `local_ports` (other connections are left alone)."""
    rows = rabbitmqctl("list_connections", "pid", "peer_port")
    pids = [row[0] for row in rows if len(row) == 2 and int(row[1]) in local_ports]
    assert pids, f"no connection from ports {local_ports}: {rows}"
    for pid in pids:
        subprocess.run(["rabbitmqctl", "close_connection", pid, "cut by a b24q test"], check=True, timeout=60)


@contextlib.contextmanager
def rabbitmq_stack(**settings: Any) -> Iterator[Any]:
    stack = make_fault_stack(workers=0, **{**on_broker("rabbitmq"), **settings})
    try:
        yield stack
    finally:
        stack.__exit__(None, None, None)


class HoldingProxy:
    """A TCP proxy to RabbitMQ that can stop passing the client's bytes on (it keeps reading and holds them,
    as a broker that has not taken messages yet) and then cut both connections: what the client wrote
    after the hold never reaches RabbitMQ."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hold = threading.Event()
        self.allowance = 0  # bytes still passed on after `hold` is set
        self.held = 0
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for source, sink, holds in ((client, server, True), (server, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, sink, holds), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, holds: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if holds and self.hold.is_set() and self.allowance <= 0:
                    self.held += len(data)
                elif holds and self.hold.is_set():
                    self.allowance -= len(data)
                    sink.sendall(data)
                else:
                    sink.sendall(data)

    def cut(self) -> None:
        """Cut the connections made so far; later ones pass everything again."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.sockets.clear()
        self.hold.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()
        for thread in self.threads:
            thread.join(10)


def test_an_enqueue_returns_only_once_rabbitmq_has_its_messages(domain: str) -> None:
    """The broker stops taking the producer's messages mid-batch, then the connection dies: an enqueue that
    returned has every message on RabbitMQ (publisher confirms). Without confirms, publish returns once the
    messages are written to the socket, and this enqueue returns with its messages lost."""
    proxy = HoldingProxy(("127.0.0.1", 5672))
    try:
        url = RABBITMQ_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        assert url != RABBITMQ_URL
        with rabbitmq_stack(broker_url=url) as stack:
            add_portal(stack, domain)
            producer.enqueue_many(mixed_jobs(domain, 1))  # connected, and the topology declared
            queue = get_runtime().settings.queue
            assert len(queued_ids(queue)) == 1
            returned: list[str] = []
            raised: list[str] = []

            def enqueue() -> None:
                try:
                    returned.extend(producer.enqueue_many(mixed_jobs(domain, 2000, start=1)))
                except Exception as exc:
                    raised.append(type(exc).__name__)

            proxy.allowance = 200_000  # the batch's channel opens and about 100 messages pass, then none
            proxy.hold.set()
            thread = threading.Thread(target=enqueue, daemon=True)
            thread.start()
            thread.join(5)  # returns early only when the enqueue did not wait for RabbitMQ
            assert proxy.held > 0
            proxy.cut()
            thread.join(60)
            assert not thread.is_alive()
            found = set(queued_ids(queue))
            missing = [i for i in returned if i not in found]
            assert not missing, (
                f"the enqueue returned, yet {len(missing)} of its {len(returned)} jobs are not on RabbitMQ"
            )
            assert raised, "the enqueue neither returned nor raised"
    finally:
        proxy.close()


def test_a_connection_cut_mid_batch_loses_no_acknowledged_enqueue(domain: str) -> None:
    """RabbitMQ closes the producer's connection while batches are being published: each enqueue either
    raised (the caller retries it) or is on the broker; the producer reconnects by itself."""
    with rabbitmq_stack() as stack:
        add_portal(stack, domain)
        queue = get_runtime().settings.queue
        acked: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def keep_enqueueing() -> None:
            n = 0
            while not stop.is_set():
                try:
                    acked.extend(producer.enqueue_many(mixed_jobs(domain, 500, start=n)))
                except Exception as exc:
                    failures.append(type(exc).__name__)
                n += 500

        thread = threading.Thread(target=keep_enqueueing, daemon=True)
        thread.start()
        try:
            cuts = 0
            deadline = time.monotonic() + 60
            while cuts < 3:
                assert time.monotonic() < deadline, f"cut {cuts} times only; enqueued {len(acked)}"
                before = len(acked)
                while len(acked) == before:  # the producer is publishing again
                    assert time.monotonic() < deadline, f"the producer did not recover: {failures[-3:]}"
                    time.sleep(0.01)
                close_at_broker(our_ports())
                cuts += 1
            after = len(acked)
            while len(acked) == after:
                assert time.monotonic() < deadline, f"the producer did not recover: {failures[-3:]}"
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join(30)
        assert failures, "no enqueue saw a cut: the test did not cut a batch"
        found = set(queued_ids(queue))
        missing = [i for i in acked if i not in found]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged jobs are not on the broker"


def test_a_message_no_worker_finishes_ends_as_a_dead_letter(domain: str) -> None:
    """Each delivery of this job ends without an outcome (here: handed back, as by a worker that dies holding
    it): after B24Q_BROKER_DELIVERY_LIMIT deliveries RabbitMQ moves it to the dead queue, and a worker
    records it as the dead letter DELIVERY_LIMIT instead of running it again."""
    with rabbitmq_stack(broker_delivery_limit=2) as stack:
        add_portal(stack, domain)
        (job_id,) = producer.enqueue_many(mixed_jobs(domain, 1))
        rt = get_runtime()
        queue = rt.settings.queue
        deliveries = 0
        with Connection(RABBITMQ_URL) as conn:
            channel = conn.channel()
            deadline = time.monotonic() + 30
            while True:
                message = channel.basic_get(queue, no_ack=False)
                if message is None:
                    if rabbitmq.depths(RABBITMQ_URL, queue)[rabbitmq.dead(queue)]:
                        break
                    assert time.monotonic() < deadline, f"never dead-lettered after {deliveries} deliveries"
                    time.sleep(0.05)
                    continue
                assert message.headers["id"] == job_id
                deliveries += 1
                channel.basic_reject(message.delivery_tag, requeue=True)
        assert deliveries == 3  # the first delivery and two more: then the limit is passed
        stack.start_workers(1, concurrency=4, extra=["--without-mingle", "--without-gossip"])
        deadline = time.monotonic() + 30
        while (rt.ledger.record(job_id) or {}).get("state") != "dead":
            assert time.monotonic() < deadline, rt.ledger.get(job_id)
            time.sleep(0.1)
        letter = rt.dead.get(job_id)
        assert letter is not None and letter.code == rabbitmq.DELIVERY_LIMIT, letter
        assert letter.portal == domain
        assert rabbitmq.depths(RABBITMQ_URL, queue) == {queue: 0, rabbitmq.bulk(queue): 0, rabbitmq.dead(queue): 0}


def test_status_shows_each_rabbitmq_queue(domain: str) -> None:
    """`b24q status` and the metrics' queue depth read RabbitMQ's queues, not Redis lists."""
    with rabbitmq_stack() as stack:
        add_portal(stack, domain)
        producer.enqueue_many(mixed_jobs(domain, 3))
        rt = get_runtime()
        queue = rt.settings.queue
        found = snapshot(rt)
        assert found["queues"] == [
            {"name": queue, "depth": 3, "by_priority": {"-": 3}},
            {"name": rabbitmq.bulk(queue), "depth": 0, "by_priority": {"-": 0}},
            {"name": rabbitmq.dead(queue), "depth": 0, "by_priority": {"-": 0}},
        ]
        assert found["unacked"] is None
        assert "not reported over AMQP" in render({**found, "workers": {"answered": []}})


def test_an_enqueue_on_a_connection_rabbitmq_no_longer_answers_fails_in_bounded_time(
    domain: str, figures: dict[str, Any]
) -> None:
    """The producer's pooled connection is open but RabbitMQ hears nothing more from it (a peer gone without
    a reset): opening the batch's channel gives up after CHANNEL_OPEN_TIMEOUT, a new connection is tried
    (its handshake bounded by the connect timeout), and the enqueue raises for the caller to retry, instead
    of hanging for good; once the broker answers again, the next enqueue goes through."""
    proxy = HoldingProxy(("127.0.0.1", 5672))
    try:
        url = RABBITMQ_URL.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        with rabbitmq_stack(broker_url=url) as stack:
            add_portal(stack, domain)
            try:
                producer.enqueue_many(mixed_jobs(domain, 1))  # connected, and the topology declared
                proxy.hold.set()  # from now on nothing the producer writes reaches RabbitMQ
                raised: list[BaseException] = []

                def enqueue() -> None:
                    try:
                        producer.enqueue_many(mixed_jobs(domain, 5, start=1))
                    except Exception as exc:
                        raised.append(exc)

                started = time.monotonic()
                thread = threading.Thread(target=enqueue, daemon=True)
                thread.start()
                thread.join(rabbitmq.CHANNEL_OPEN_TIMEOUT + 20)
                assert not thread.is_alive(), "the enqueue hangs on a connection RabbitMQ does not answer"
                figures.update(raised_after_s=round(time.monotonic() - started, 1), raised=repr(raised[:1]))
                assert raised, "the enqueue returned, yet RabbitMQ never heard of its messages"
                assert time.monotonic() - started >= rabbitmq.CHANNEL_OPEN_TIMEOUT
                proxy.cut()  # the broker answers again
                ids = producer.enqueue_many(mixed_jobs(domain, 5, start=10))
                assert set(ids) <= set(queued_ids(get_runtime().settings.queue))
            finally:
                proxy.cut()  # a failing run too: the stack's cleanup deletes its queues through the proxy
    finally:
        proxy.close()
