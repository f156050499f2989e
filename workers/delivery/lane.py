"""A lane: one portal's queue of calls in this process, and the thread that sends them as batches.

The thread lives while the lane has calls of this process to send (it ends when the lane is empty), so
lanes' threads never outnumber the jobs waiting on them: at most the worker's concurrency, whatever the
number of portals.

Every worker thread running a job hands its call to the portal's lane and waits for the outcome. The
lane's sender thread reserves a slot from the pool-wide limiter, and while it waits for that slot more
calls arrive, so each slot carries up to 50 of them in one `batch` (one unit of the portal's bucket).
Under light load the slot is free at once, and a call that is all its portal has unfinished pool-wide goes
out without gathering (`Sending._send_alone`); under saturation every request is a full batch. That is how
a pool reaches rate x 50 jobs per second per portal.

The lane's parts: the staged calls and how a request is filled (`packing`), how a slot is spent and what a
failed request means (`sending`), and, here, the lane's life: taking calls, its sender thread, a caller
leading a round, withdrawing a call, draining at a stop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque

from workers.delivery.callpool import CallPool
from workers.delivery.calls import Call
from workers.delivery.sending import Sending
from workers.delivery.wire import LaneConfig, LaneStats, Wire

log = logging.getLogger(__name__)


class Lane(Sending):
    """One portal's queue of calls and the thread that sends them.

    With a `pool` (a rate-limited portal, see `workers.delivery.callpool`), the calls of every worker
    process wait in one Redis list and the local queue only stages what this lane has taken from it; the
    lane runs while this process has calls of its own waiting."""

    def __init__(self, portal_key: str, wire: Wire, config: LaneConfig, pool: CallPool | None = None) -> None:
        self.key = portal_key
        self._wire = wire
        self._config = config
        self.pool = pool
        self._cond = threading.Condition()
        self._queue: deque[Call] = deque()
        self._own = 0  # calls of this process submitted through the pool and not yet finished
        self._thread: threading.Thread | None = None
        self._busy = False  # a round is under way: calls taken, maybe other workers' (see `drain`)
        self._leading = False  # a caller sends a round in its own thread (`offer`, `lead`)
        self._closing = False
        self.stats = LaneStats()
        self._resets: dict[str, float] = {}

    def submit(self, call: Call) -> None:
        """Queue a call for the lane's sender thread (started if there is none)."""
        if self.pool is not None:
            self.pool.submit(self.key, call)
        with self._cond:
            if self.pool is not None:
                self._own += 1
            else:
                self._queue.append(call)
            self._start_sender()
            self._cond.notify()

    def offer(self, call: Call) -> bool:
        """Queue a call; True when the caller is to send it itself (`lead`): a lane of this process alone with
        no sender at work, as a quiet portal's is. Its call then costs no thread and no hand-off."""
        if self.pool is not None:
            self.submit(call)
            return False
        with self._cond:
            self._queue.append(call)
            if not self._leading and (self._thread is None or not self._thread.is_alive()) and not self._closing:
                self._leading = True
                return True
            self._start_sender()
            self._cond.notify()
            return False

    def lead(self, within: float) -> None:
        """One round in the caller's thread (after `offer` said so), with a slot no further than `within` s
        away; calls left then go to a sender thread."""
        with self._cond:
            self._busy = True
        try:
            if self._gather():
                self._send_round(within)
        except Exception as exc:  # never leave calls without an outcome
            log.exception("lane %s: unexpected error", self.key)
            self._fail_all(exc)
        finally:
            with self._cond:
                self._busy = False
                self._leading = False
                if self._queue:
                    self._start_sender()
                self._cond.notify_all()

    def _start_sender(self) -> None:
        """(Under the lock.) A sender thread, unless one is at work or a caller leads a round."""
        if not self._leading and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._run, name=f"b24q-lane-{self.key}", daemon=True)
            self._thread.start()

    def release(self, call: Call) -> None:
        """The owner is done with a call submitted through the pool."""
        if self.pool is not None:
            self.pool.done(call)
            with self._cond:
                self._own -= 1

    def cancel(self, call: Call) -> bool:
        """Withdraw a call that has not been sent; False if it is already on the wire (or a sender of
        the pool has it)."""
        with self._cond:
            if call.sent or call.done.is_set():
                return False
            if call in self._queue or self.pool is None:
                call.cancelled = True
                with contextlib.suppress(ValueError):
                    self._queue.remove(call)
                return True
        if self.pool.withdraw(self.key, call):
            call.cancelled = True
            return True
        return False

    def drain(self, timeout: float) -> bool:
        """Take no more calls from the pool and wait until the round under way (if any) has its answer and
        has delivered it, also to other workers' jobs it carries; False if `timeout` s were not enough.
        For a stopping worker: its own jobs are done, but a request it is sending may carry calls of jobs
        other workers run, which would otherwise be retried (and applied twice) once its heartbeat expires."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._busy, timeout=timeout)

    # -- sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._wait_for_work(self._config.idle_exit):
                return
            with self._cond:
                if self._closing and not self._queue:
                    self._thread = None
                    return
                self._busy = True
            try:
                if self._gather():  # (reads the pool's depth: Redis may fail here too)
                    self._send_round()
            except Exception as exc:  # never let the lane die with calls in it
                log.exception("lane %s: unexpected error", self.key)
                self._fail_all(exc)
            finally:
                self._flush()
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _wait_for_work(self, idle_exit: float) -> bool:
        """Block until there is something to send; False (the thread ends) after `idle_exit` idle s."""
        while True:
            with self._cond:
                if self._queue:
                    return True
                if self.pool is None or self._own <= 0:
                    if not self._cond.wait_for(lambda: bool(self._queue) or self._own > 0, timeout=idle_exit):
                        self._thread = None
                        return False
                    if self._queue or self.pool is None:
                        return True
            # calls of ours are in the pool (or with another sender): help while the list holds any
            try:
                if self.pool.depth(self.key) > 0:
                    return True
            except Exception as exc:  # Redis trouble: the owners' own waits handle it
                log.warning("lane %s: call pool unavailable (%s)", self.key, exc)
                time.sleep(0.5)
            with self._cond:
                self._cond.wait(0.1)  # our calls are with another sender; a new one of ours wakes us at once

    def _flush(self) -> None:
        if self.pool is not None:
            try:
                self.pool.flush()
            except Exception as exc:  # the owners see the sender alive but silent: their bound applies
                log.warning("lane %s: replies not delivered (%s)", self.key, exc)
