"""A CPU profiler for worker processes: where does a job's CPU go?

py-spy is not available here, and cProfile / pyinstrument see one thread while a Celery threads-pool
worker runs ~70 (the consumer, 64 task threads, one sender per portal lane). This sampler runs inside
the worker: every `interval` it takes every thread's Python stack (`sys._current_frames`) and weights
it by the CPU that thread used since the previous sample (`/proc/self/task/<tid>/schedstat`), so
blocked threads cost nothing and the profile is CPU time, not wall time. It costs a few percent of
CPU itself, so profiled runs are for finding hot spots, not for the recorded numbers.

`bench.run --profile` starts the b24q workers with `bench/_profile_site` on their PYTHONPATH; its
`sitecustomize` calls `activate` at interpreter start, so the workers themselves are unchanged.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import FrameType

from bench.report import Table
from workers.localdev.localstack import LocalStack

MAX_DEPTH = 80
#: Code whose frames say *why* CPU was spent (the layers above redis-py, sockets and threading).
OURS = ("workers/", "tasks/", "edges/")
LAYERS = (*OURS, "celery/", "kombu/", "concurrent/", "httpx/", "bench/")


def _where(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame.f_code.co_name}"


def _stack(frame: FrameType | None) -> tuple[str, ...]:
    out: list[str] = []
    while frame is not None and len(out) < MAX_DEPTH:
        out.append(_where(frame))
        frame = frame.f_back
    return tuple(reversed(out))


def _cpu_ns(native_id: int) -> int | None:
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Sampler(threading.Thread):
    """Samples every other thread's stack, weighted by its CPU time; dumps JSON to `out`."""

    def __init__(self, out: Path, interval: float = 0.01) -> None:
        super().__init__(name="bench-profiler", daemon=True)
        self.out = out
        self.interval = interval
        self.stacks: Counter[tuple[str, ...]] = Counter()
        self._cpu: dict[int, int] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        me = threading.get_ident()
        last_dump = time.monotonic()
        while True:
            time.sleep(self.interval)
            natives = {t.ident: t.native_id for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                native = natives.get(ident)
                if ident == me or native is None:
                    continue
                ns = _cpu_ns(native)
                if ns is None:
                    continue
                before = self._cpu.get(native)
                self._cpu[native] = ns
                if before is not None and ns > before:
                    with self._lock:
                        self.stacks[_stack(frame)] += ns - before
            if time.monotonic() - last_dump > 5:
                self.dump()
                last_dump = time.monotonic()

    def dump(self) -> None:
        with self._lock:
            data = [[list(k), v] for k, v in self.stacks.items()]
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.out)


SITE = Path(__file__).parent / "_profile_site"


def activate(directory: str) -> Sampler:
    """Start sampling this process; the profile goes to `directory/<pid>.json` (every 5 s and at exit)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sampler = Sampler(out / f"{os.getpid()}.json")
    sampler.start()
    atexit.register(sampler.dump)
    return sampler


def start_workers(stack: LocalStack, count: int, concurrency: int, profile_dir: Path | None) -> None:
    """`stack.start_workers`, with the sampler in each of these workers when `profile_dir` is given.

    The workers join `stack.workers` before they are waited for, so a worker that never becomes ready
    is still stopped with the stack (instead of being left running).
    """
    env: dict[str, str] = {}
    if profile_dir is not None:
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (str(SITE), root, os.environ.get("PYTHONPATH", "")) if p)
        env = {"PYTHONPATH": path, "B24Q_BENCH_PROFILE": str(profile_dir)}
    for worker in stack.start_workers(count, concurrency=concurrency, env=env, wait=False):
        worker.wait_ready()


def _load(paths: Iterable[Path]) -> Counter[tuple[str, ...]]:
    total: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        try:
            for frames, ns in json.loads(path.read_text()):
                total[tuple(frames)] += int(ns)
        except (OSError, ValueError):
            continue
    return total


def _package(where: str) -> str:
    path = where.split(":", 1)[0]
    top = path.split("/", 1)[0]
    if top.endswith(".py"):
        return top[:-3]
    return top


def tables(profile_dir: Path, top: int = 25) -> list[Table]:
    """Self and inclusive CPU by function, and self CPU by package, over every worker's dump."""
    stacks = _load(sorted(profile_dir.glob("*.json")))
    total = sum(stacks.values())
    if not total:
        return []
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    for frames, ns in stacks.items():
        if not frames:
            continue
        self_fn[frames[-1]] += ns
        self_pkg[_package(frames[-1])] += ns
        for where in set(frames):
            incl_fn[where] += ns
    by_layer: Counter[str] = Counter()
    for frames, ns in stacks.items():
        by_layer[next((f for f in reversed(frames) if f.startswith(LAYERS)), "(other)")] += ns
    out = []
    for title, counter in (
        ("self CPU by package (syscalls count in the Python function that made them)", self_pkg),
        ("self CPU by function", self_fn),
        ("CPU by innermost b24q / Celery / kombu frame (who caused the redis, socket and thread work)", by_layer),
        ("inclusive CPU by b24q function", Counter({k: v for k, v in incl_fn.items() if k.startswith(OURS)})),
    ):
        t = Table(f"profile ({total / 1e9:.1f} CPU s sampled in the workers): {title}", ("where", "CPU s", "%"))
        for where, ns in counter.most_common(top):
            t.add(where, f"{ns / 1e9:.2f}", f"{100 * ns / total:.1f}")
        out.append(t)
    return out
