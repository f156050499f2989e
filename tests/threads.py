"""Calls run each in a thread of its own, all at once, for tests of what happens when they meet."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def in_threads(calls: list[Callable[[], Any]], timeout: float = 40.0) -> list[Any]:
    """Start every call in a thread of its own, wait for all (each up to `timeout` s); what each returned or
    raised, in the calls' order."""
    out: list[Any] = [None] * len(calls)

    def one(i: int) -> None:
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return out
