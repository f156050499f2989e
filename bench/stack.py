"""Running a scenario's stack: start and stop it, register portals, read the ledger, meter CPU.

Scenarios use `workers.localdev.localstack.LocalStack` as the tests and the demo do, so the numbers are
those of the real processes; this module only adds what measuring needs on top of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.workload import portal_options
from workers.localdev.localstack import LocalStack
from workers.runtime import Runtime, get_runtime

#: b24q has no "unlimited" portal (a registry rate of 0 means "the plan's rate"), so a portal the
#: emulator does not limit is registered with a bucket no workload can fill.
UNLIMITED_RATE = 1_000_000.0
UNLIMITED_BURST = 1_000_000

_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the tables."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def mono_offset() -> float:
    """wall clock - monotonic clock. CLOCK_MONOTONIC is system-wide on Linux, so the emulator's
    `accepted_times` (its monotonic clock) convert to wall time with this offset."""
    return time.time() - time.monotonic()


@contextmanager
def bench_stack(
    settings: Mapping[str, Any] | None = None, log_dir: Path | None = None, stop_also: Sequence[Any] = ()
) -> Iterator[LocalStack]:
    """A LocalStack that is always torn down, its workers stopped together (not one after another)."""
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(settings=dict(settings or {}), log_dir=str(log_dir) if log_dir else None)
    stack.__enter__()
    try:
        yield stack
    finally:
        for worker in stack.workers:
            worker.kill(signal.SIGTERM)  # all at once: each soft shutdown may take seconds
        stack.__exit__(None, None, None)


def add_portal(
    stack: LocalStack, domain: str, rate: float = 2.0, burst: int = 50, latency: float = 0.0
) -> dict[str, Any]:
    """Create a portal on the emulator (ready for every job kind of `bench.workload`) and register it.

    `rate=0` makes a portal the emulator does not limit; b24q gets a bucket it cannot fill.
    """
    info = stack.emulator.add_portal(domain, rate=rate, burst=burst, **portal_options())
    our_rate, our_burst = (rate, burst) if rate > 0 else (UNLIMITED_RATE, UNLIMITED_BURST)
    get_runtime().registry.add_oauth(
        domain,
        info["client_endpoint"],
        info["access_token"],
        info["refresh_token"],
        float(info["expires"]),
        info.get("member_id", ""),
        domain,
        None,
        our_rate,
        our_burst,
    )
    if latency:
        stack.emulator.set_faults(domain, latency=latency)
    return info


@dataclass(frozen=True)
class Record:
    """A job's ledger record, as far as timing goes (wall-clock seconds)."""

    id: str
    state: str
    created: float
    updated: float
    runs: int  # times a worker started it (more than 1: deferred for a slot, retried, or redelivered)

    @property
    def latency(self) -> float:
        return self.updated - self.created


#: Jobs the pool has done with: applied, or superseded by a newer job for the same portal state (the
#: workload's sender updates share a code; README: Ordering).
DONE = ("applied", "superseded")


def records(ids: Sequence[str], rt: Runtime | None = None, chunk: int = 2000) -> list[Record]:
    """Ledger records of `ids` (missing ones get state '?')."""
    rt = rt or get_runtime()
    out: list[Record] = []
    for start in range(0, len(ids), chunk):
        found = rt.ledger.states(ids[start : start + chunk], "state", "created", "updated", "runs")
        for job_id, (state, created, updated, runs) in found.items():
            out.append(Record(job_id, state or "?", float(created or "nan"), float(updated or "nan"), int(runs or 0)))
    return out


def backlog(portals: Iterable[str], rt: Runtime | None = None) -> int:
    """Jobs enqueued for `portals` and not finished yet (the ledger's per-portal counter)."""
    rt = rt or get_runtime()
    return sum(rt.ledger.backlog(p) for p in portals)


def wait_backlog(portals: Sequence[str], timeout: float, what: str = "jobs", every: float = 5.0) -> bool:
    """Wait until every job of `portals` is finished (True) or `timeout` s pass (False)."""
    start = time.monotonic()
    last = start
    while True:
        left = backlog(portals)
        now = time.monotonic()
        if left <= 0:
            return True
        if now - start > timeout:
            log(f"timeout: {left} {what} still unfinished after {timeout:.0f}s")
            return False
        if now - last >= every:
            log(f"  {left} {what} left")
            last = now
        time.sleep(0.1)


class MachineLoad:
    """CPU the rest of the machine used meanwhile: all CPUs' busy time minus this process and its
    (finished, waited-for) children. Other work on a 2-core machine skews every number here, so each
    scenario reports it."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        busy += getattr(t, "steal", 0.0)
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        return time.monotonic(), busy, mine

    def others(self) -> float:
        """Average CPU cores used by other processes since construction."""
        now, busy, mine = self._sample()
        wall = now - self._start[0]
        return max(0.0, (busy - self._start[1]) - (mine - self._start[2])) / wall if wall > 0 else 0.0


def thread_cpu_ms(call: Callable[[], object], n: int, warmup: int) -> float:
    """CPU this thread spends per `call()` (`time.thread_time`: waits do not count, their wake-ups do), in ms,
    over `n` calls after `warmup` (connections, caches)."""
    for _ in range(warmup):
        call()
    start = time.thread_time()
    for _ in range(n):
        call()
    return (time.thread_time() - start) / n * 1000


class CpuMeter:
    """user+system CPU seconds of a set of processes (workers, emulator, redis-server)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self._procs.items():
            try:
                times = proc.cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                out[name] = float("nan")
        return out

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}


class Switches:
    """Context switches of some processes while a block runs, every thread counted (those that start and end
    meanwhile too): `perf stat -e context-switches -p <pids>`, when this machine has perf and may use it
    (`count` is None otherwise). On a machine where a wake-up costs a thread more than the work it wakes for,
    switches a job are the steadier figure beside CPU a job (docs/benchmarks.md, sessions 29 and 30).

        with Switches(pids) as switches:
            ...
        switches.per(jobs)  # "20.4", or "" without perf
    """

    #: how long perf is given to attach to every thread before the block runs (it says nothing when it has)
    ATTACH = 0.3

    def __init__(self, pids: Iterable[int]) -> None:
        self._pids = [str(pid) for pid in pids]
        self._perf: subprocess.Popen[bytes] | None = None
        self._out = ""
        self.count: int | None = None

    def __enter__(self) -> Switches:
        perf = shutil.which("perf")
        if perf is not None and self._pids:
            fd, self._out = tempfile.mkstemp(prefix="b24q-perf-")
            os.close(fd)
            cmd = [perf, "stat", "-x", ",", "-e", "context-switches", "-p", ",".join(self._pids), "-o", self._out]
            self._perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(self.ATTACH)
        return self

    def __exit__(self, *_: object) -> None:
        perf, self._perf = self._perf, None
        if perf is None:
            return
        try:
            perf.send_signal(signal.SIGINT)
            perf.wait(10)
            for line in Path(self._out).read_text().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2] == "context-switches" and fields[0].isdigit():
                    self.count = int(fields[0])
        except (OSError, subprocess.TimeoutExpired):
            perf.kill()
            perf.wait()
        finally:
            Path(self._out).unlink(missing_ok=True)

    def per(self, jobs: int) -> str:
        return f"{self.count / max(jobs, 1):.1f}" if self.count is not None else ""


def stack_pids(stack: LocalStack) -> dict[str, int]:
    """The processes whose CPU a job costs: every worker, the emulator and redis-server."""
    pids = {w.name: w.process.pid for w in stack.workers}
    pids["emulator"] = stack.emulator.process.pid
    if stack.redis is not None and stack.redis.process is not None:
        pids["redis"] = stack.redis.process.pid
    return pids


def redis_calls(stack: LocalStack) -> Counter[str]:
    """Commands the stack's redis-server has run so far, by command (INFO commandstats)."""
    if stack.redis is None:
        return Counter()
    stats = stack.redis.client().info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


class CommandTap:
    """Commands the stack's redis-server runs while the tap is open, split by who issued them: clients
    (one command each, whether alone, pipelined or EVALSHA) or Lua scripts (the commands inside an
    EVALSHA). INFO commandstats counts both together; MONITOR tells them apart (a script's commands
    come from "lua"). MONITOR costs Redis CPU for every command, so a tapped phase is for counting only.
    """

    def __init__(self, stack: LocalStack) -> None:
        assert stack.redis is not None
        self._client = stack.redis.client()
        # MONITOR waits for the next command however long it takes (on RabbitMQ, idle workers send none)
        self._client.connection_pool.connection_kwargs["socket_timeout"] = None
        self.counts: dict[str, Counter[str]] = {"client": Counter(), "lua": Counter()}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="bench-monitor", daemon=True)

    def __enter__(self) -> CommandTap:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("MONITOR did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._client.ping()  # a command of our own, so that the listener wakes up and sees the stop
        self._thread.join(10)
        self._client.close()

    def reset(self) -> dict[str, Counter[str]]:
        """The counts so far; counting starts again from zero."""
        counts, self.counts = self.counts, {"client": Counter(), "lua": Counter()}
        return counts

    def _listen(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                source = "lua" if command["client_type"] == "lua" else "client"
                self.counts[source][command["command"].split(" ", 1)[0].strip('"').lower()] += 1
