"""How a lane fills a request: the calls it stages, gathering companions for a lone call, waiting at a booked
slot for a full batch that is on its way, and taking up to a batch's worth of calls (merged calls count as
one command).

Part of `Lane` (`workers.delivery.lane`), which owns the state declared here and its lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from workers.delivery.callpool import CallPool
from workers.delivery.calls import Call
from workers.delivery.wire import LaneConfig, Wire
from workers.portals.limits import Limits

log = logging.getLogger("workers.delivery.lane")  # the lane's parts log as the lane


class Packing:
    """A lane's staged calls and how a request is filled from them (and from the pool-wide list)."""

    key: str
    pool: CallPool | None
    _wire: Wire
    _config: LaneConfig
    _cond: threading.Condition  # guards the fields below
    _queue: deque[Call]
    _closing: bool

    def depth(self) -> int:
        with self._cond:
            staged = len(self._queue)
        return staged + (self.pool.depth(self.key) if self.pool is not None else 0)

    def _gather(self) -> None:
        """Let calls that arrive together share the request: wait one window, and another while the
        batch is still growing, up to `gather_max`. A lone call under light load sees no growth and leaves
        after one window. A lane of this process alone (no pool) also keeps gathering through quiet windows
        while the portal's backlog says a full batch more is coming; a pool lane then books its slot at once
        and fills the request after (`_fill`), so that the wait does not delay the portal's schedule (at the
        start of a backlog, gathering first put the whole schedule off by the time the first batch took)."""
        if self._config.gather <= 0:
            return
        deadline = time.monotonic() + self._config.gather_max
        seen = self.depth()
        expecting = self._expecting(seen)
        if self.pool is not None and expecting:
            return  # the slot first: the bucket's schedule starts at the first booking, not after a gather
        while seen < self._config.batch_max:
            time.sleep(self._config.gather)
            depth = self.depth()
            if (depth == seen and not expecting) or time.monotonic() >= deadline:
                return
            seen = depth

    def _expecting(self, depth: int) -> bool:
        """More of this portal's jobs are on their way: its pool-wide backlog (which counts the calls already
        here and jobs on the wire too) holds a full batch more than `depth`."""
        return depth < self._config.batch_max and self._wire.backlog(self.key) >= depth + self._config.batch_max

    def _fill(self, slack: float, limits: Limits) -> None:
        """Spend the slot on a full batch when one is coming. At the start of a backlog (a free burst, a pool
        still taking the first messages from the broker) slots are booked as soon as calls arrive, which would
        send the burst out in part-filled requests, each a whole unit of the portal's bucket. But a booked slot
        may go later at no cost while the bucket still holds requests (`RateLimiter.ahead`: `slack` at booking),
        so while the backlog says a full batch more is on its way, wait for it: up to `fill_max` once this lane
        holds calls (their latency), up to `max_reserve` while it holds none (other lanes' slots take the
        pool's calls meanwhile; sending the few left when this wait ended made a part-filled request). A wait
        that sees calls but no new one for `gather_max` ends: the pool may hold no more of them (its threads
        all busy, or the jobs behind other portals' in the broker)."""
        if self._config.gather <= 0 or slack <= 0 or self._closing:
            return
        start = time.monotonic()
        step = max(self._config.gather, 0.02)
        free = start + slack  # until then the wait costs the bucket nothing; then asked again
        depth, grew_at = self._poll(), start
        while not self._closing and self._expecting(depth):
            time.sleep(step)
            now = time.monotonic()
            before, depth = depth, self._poll()
            if depth > before:  # (other lanes' claims may shrink it meanwhile)
                grew_at = now
            if depth and now - grew_at >= self._config.gather_max:
                return
            bound = start + (self._config.fill_max if self._staged() else self._config.max_reserve)
            if now + step > min(free, bound):
                if now + step > bound:
                    return
                free = now + self._wire.limiter.ahead(self.key, limits)
                if now + step > free:
                    return

    def _staged(self) -> int:
        with self._cond:
            return len(self._queue)

    def _poll(self) -> int:
        """The calls this lane could send now. A pool lane takes a whole batch from the pool as soon as the pool
        holds one (`CallPool.claim`): lanes of several workers filling at once then each fill their own request,
        where reading the depth alone let them all see the same 50 and split them (50 and 10, 13 and 39)."""
        staged = self._staged()
        if self.pool is None or staged >= self._config.batch_max or self._closing:
            return staged
        claimed, depth = self.pool.claim(self.key, self._config.batch_max - staged, 2 * self._config.batch_max - staged)
        if not claimed:
            return staged + depth
        with self._cond:
            self._queue.extend(claimed)
        return staged + len(claimed)

    def _take(self, limit: int | None = None) -> list[Call]:
        """Up to `limit` (`batch_max`) commands' worth of calls; mergeable calls with the same key count as
        one command until their merged list reaches `merge_max` items."""
        if self.pool is None:
            return self._take_staged(limit)
        with self._cond:
            room = 2 * self._config.batch_max - len(self._queue)  # merging packs more than one call per command
            if self._closing:
                room = 0  # a stopping worker takes no other worker's calls
        if room > 0:
            taken = self.pool.take(self.key, room)
            with self._cond:
                self._queue.extend(taken)
        calls = self._take_staged(limit)
        with self._cond:
            surplus = list(self._queue)
            self._queue.clear()
        try:
            self.pool.put_back(self.key, surplus)  # others may send them before this lane's next slot
        except Exception as exc:  # then this lane keeps them and sends them itself
            log.warning("lane %s: could not return calls to the pool (%s)", self.key, exc)
            with self._cond:
                self._queue.extendleft(reversed(surplus))
        return calls

    def _take_staged(self, limit: int | None = None) -> list[Call]:
        limit = self._config.batch_max if limit is None else limit
        with self._cond:
            calls: list[Call] = []
            commands = 0
            groups: dict[tuple[Any, ...], int] = {}
            while self._queue:
                call = self._queue[0]
                if call.cancelled:
                    self._queue.popleft()
                    continue
                key = call.merge_key()
                size = call.size()
                joins = key is not None and key in groups and groups[key] + size <= self._config.merge_max
                if not joins and commands >= limit:
                    break
                self._queue.popleft()
                if joins:
                    groups[key] += size  # type: ignore[index]
                else:
                    commands += 1
                    if key is not None:
                        groups[key] = size
                call.sent = True
                calls.append(call)
            return calls

    def _put_back(self, calls: list[Call]) -> None:
        with self._cond:
            for call in reversed(calls):
                call.sent = False
                self._queue.appendleft(call)
