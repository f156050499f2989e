"""How a lane fills a request: the calls it stages, gathering companions for a lone call, waiting for a full
batch that is on its way (a pool lane before it books its slot, claiming a whole batch from the pool; a lane
of this process alone at a booked slot), and taking up to a batch's worth of calls (merged calls count as one
command).

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
from workers.delivery.wire import FRESH, LaneConfig, Look, Wire

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
    _backlog_read: tuple[float, int] | None = None  # (monotonic time, the portal's backlog then)
    _look: Look | None = None  # the last reading of the portal's traffic a job's start passed in

    def depth(self) -> int:
        with self._cond:
            staged = len(self._queue)
        return staged + (self.pool.depth(self.key) if self.pool is not None else 0)

    def _gather(self) -> bool:
        """Let calls that arrive together share the request: wait one window, and another while the
        batch is still growing, up to `gather_max`. A lone call under light load sees no growth and leaves
        after one window. A lane of this process alone (no pool) also keeps gathering through quiet windows
        while the portal's backlog says a full batch more is coming, and fills the request after booking
        (`_fill`); a pool lane waits for a whole batch before it books while the pool holds less than one and
        the backlog says it is coming (`_await_batch`). False when a pool lane is left with nothing to send
        (other lanes took the calls): it books no slot."""
        if self._config.gather <= 0:
            return True
        deadline = time.monotonic() + self._config.gather_max
        seen = self.depth()
        if self.pool is None and self._wire.backlog is not None and self._backlog() <= seen:
            return True  # nothing of this portal is unfinished beyond these calls: no companion is coming
        expecting = self._expecting(seen)
        if expecting and self.pool is not None:
            return self._await_batch(seen)
        while seen < self._config.batch_max:
            time.sleep(self._config.gather)
            depth = self.depth()
            if (depth == seen and not expecting) or time.monotonic() >= deadline:
                return True
            seen = depth
        return True

    def _await_batch(self, depth: int) -> bool:
        """A pool lane, before it books: wait for a whole batch while the backlog says one is coming, and take
        it from the pool in one check-and-pop (`CallPool.claim`). At the start of a backlog (a free burst, a
        pool still taking the first messages from the broker) calls arrive over a few hundred milliseconds;
        lanes that booked first and then read the pool's depth all saw the same 50 and split them (50 and 10,
        13 and 39, each request a unit of the bucket), and one whose slack ran out sent what the others had
        left. Here a lane books once it holds its own batch, and the slot goes at once; no slot is held past
        its slack (held later, slots of several lanes could reach the portal together with those sent on
        time). The wait ends when no new call came for `gather_max` (the pool may hold no more of them: its
        threads all busy, or the jobs behind other portals' in the broker) or after `fill_max`; the calls
        there are then sent as they are."""
        start = grew_at = time.monotonic()
        step = max(self._config.gather, 0.02)
        while not self._closing and self._expecting(depth):
            time.sleep(step)
            now = time.monotonic()
            before, depth = depth, self._poll()
            if depth > before:  # (other lanes' claims may shrink it meanwhile)
                grew_at = now
            if now - grew_at >= self._config.gather_max or now - start >= self._config.fill_max:
                break
        return depth > 0

    def _sendable(self) -> int:
        """The calls this lane could send now (a pool lane claims a whole batch when the pool holds one)."""
        return self._poll() if self.pool is not None else self.depth()

    def _poll(self) -> int:
        """A pool lane's staged calls and the pool's, having claimed a whole batch if the pool holds one."""
        assert self.pool is not None
        with self._cond:
            staged = len(self._queue)
        need = self._config.batch_max - staged
        if need <= 0 or self._closing:  # (a stopping worker takes no other worker's calls)
            return staged + (0 if self._closing else self.pool.depth(self.key))
        claimed, depth = self.pool.claim(self.key, need, need)
        if not claimed:
            return staged + depth
        with self._cond:
            self._queue.extend(claimed)
        return staged + len(claimed)

    def _expecting(self, depth: int) -> bool:
        """More of this portal's jobs are on their way: its pool-wide backlog (which counts the calls already
        here and jobs on the wire too) holds a full batch more than `depth`."""
        return depth < self._config.batch_max and self._backlog() >= depth + self._config.batch_max

    def note(self, look: Look | None = None, backlog: int | None = None) -> None:
        """Readings of the portal's traffic taken just now: a job's start's (`look`), or the dispatcher's
        backlog, read to route the call. Used while `FRESH` instead of reading again."""
        if look is not None:
            self._look = look
            self._backlog_read = (look.at, look.backlog)
        elif backlog is not None:
            self._backlog_read = (time.monotonic(), backlog)

    def _backlog(self) -> int:
        """The portal's pool-wide backlog, as read within `FRESH` s (0 when no source is wired)."""
        if self._wire.backlog is None:
            return 0
        now, read = time.monotonic(), self._backlog_read
        if read is not None and now - read[0] < FRESH:
            return read[1]
        backlog = self._wire.backlog(self.key)
        self._backlog_read = (now, backlog)
        return backlog

    def _fill(self, longest: float) -> None:
        """Spend the booked slot on a full batch when one is coming. A slot booked while the bucket is in use
        may go up to its slack later at no cost (the bucket keeps draining), so while the backlog says a full
        batch more is on its way and calls keep arriving, wait for it (a wait that sees no new call for
        `gather_max` ends). A pool lane takes the batch as soon as the pool holds one (`_poll`): lanes whose
        slots came together, each reading the depth, saw the same 50 and split them."""
        if self._config.gather <= 0 or longest <= 0 or self._closing:
            return
        now = time.monotonic()
        deadline, step = now + longest, max(self._config.gather, 0.02)
        seen, grew_at = self._sendable(), now
        while self._expecting(seen):
            time.sleep(step)
            now = time.monotonic()
            depth = self._sendable()
            if depth > seen:
                seen, grew_at = depth, now
            if now + step > deadline or now - grew_at >= self._config.gather_max:
                return

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
        self._return_staged()  # others may send them before this lane's next slot
        return calls

    def _return_staged(self) -> None:
        """A pool lane's staged calls go back to the head of the pool's list, in order."""
        assert self.pool is not None
        with self._cond:
            surplus = list(self._queue)
            self._queue.clear()
        try:
            self.pool.put_back(self.key, surplus)
        except Exception as exc:  # then this lane keeps them and sends them itself
            log.warning("lane %s: could not return calls to the pool (%s)", self.key, exc)
            with self._cond:
                self._queue.extendleft(reversed(surplus))

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

    def _staged(self) -> list[Call]:
        """The calls staged here now, left staged (a job may still withdraw one)."""
        with self._cond:
            return [c for c in self._queue if not c.cancelled]

    def _claim(self, calls: list[Call]) -> list[Call]:
        """Take those of `calls` still staged and not withdrawn, for the request being sent."""
        with self._cond:
            claimed = [c for c in calls if not c.cancelled and c in self._queue]
            for call in claimed:
                self._queue.remove(call)
                call.sent = True
            return claimed

    def _put_back(self, calls: list[Call]) -> None:
        with self._cond:
            for call in reversed(calls):
                call.sent = False
                self._queue.appendleft(call)
