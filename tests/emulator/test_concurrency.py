"""Many keep-alive clients at once: every call is recorded exactly once and the counters add up."""

from __future__ import annotations

import threading

import httpx

from emulator import Emulator

from .conftest import call


def test_parallel_clients_are_counted_exactly(emu: Emulator) -> None:
    info = emu.add_portal("par.bitrix24.test", rate=0, auto_messages=True, senders=["sms"])
    threads, per = 8, 40
    failures: list[str] = []

    def worker(k: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(per):
                r = call(
                    client,
                    info,
                    "messageservice.message.status.update",
                    {"CODE": "sms", "MESSAGE_ID": f"{k}-{i % 20}", "STATUS": "delivered"},
                )
                if r.status_code != 200:
                    failures.append(r.text)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert failures == []
    state = emu.state("par.bitrix24.test")
    assert state["counters"]["accepted"] == threads * per
    assert len(state["statuses"]) == threads * 20
    assert all(row["count"] == 2 for row in state["statuses"])  # each id was sent twice: duplicates visible
