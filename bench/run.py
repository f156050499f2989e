"""`python -m bench.run [scenario ...] [--quick] [--profile] [--log-dir DIR]`: run the benchmark suite.

Scenarios run one after another, each on its own fresh stack, in the order given (all five by
default). Tables go to stdout, progress to stderr. The exit status is 1 if a scenario crashed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import profiler
from bench.report import Table
from bench.scenarios import (
    Options,
    brokers,
    busy,
    console,
    dlr,
    fairness,
    fullstart,
    http,
    installs,
    intake,
    light,
    many,
    memory,
    producer,
    raw,
    roundtrip,
    saturation,
    scale,
)
from bench.stack import MachineLoad, log

SCENARIOS: dict[str, Callable[[Options], list[Table]]] = {
    "saturation": saturation.run,
    "raw": raw.run,
    "brokers": brokers.run,
    "light": light.run,
    "fairness": fairness.run,
    "many": many.run,
    "dlr": dlr.run,
    "producer": producer.run,
    "intake": intake.run,
    "fullstart": fullstart.run,
    "memory": memory.run,
    "thousand": many.thousand,
    "installs": installs.run,
    "scale": scale.run,
    "busy": busy.run,
    "console": console.run,
    "http": http.run,
    "roundtrip": roundtrip.run,
}


def revision() -> str:
    """The commit the core was at, and whether the working tree had changes (the numbers depend on both)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def header(argv: list[str]) -> str:
    """The command, the date and the machine: what docs/benchmarks.md records with the tables."""
    command = " ".join(["python -m bench.run", *map(shlex.quote, argv)])
    cpus = os.cpu_count()
    return (
        f"$ {command}\n"
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n"
        f"code: {revision()}\n"
        f"machine: {platform.machine()}, {cpus} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average {os.getloadavg()[0]:.2f} at the start"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument(
        "scenarios", nargs="*", metavar="scenario", help=f"one or more of {', '.join(SCENARIOS)} (default: all)"
    )
    ap.add_argument("--quick", action="store_true", help="smaller workloads (whole suite < ~3 min)")
    ap.add_argument("--profile", action="store_true", help="profile the b24q workers (slower; for hot spots)")
    ap.add_argument("--log-dir", type=Path, default=None, help="keep the stacks' logs under this directory")
    ap.add_argument(
        "--broker",
        choices=("redis", "rabbitmq"),
        default="redis",
        help="where the jobs' messages live in raw, saturation and scale (rabbitmq: B24Q_BENCH_RABBITMQ_URL)",
    )
    args = ap.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    opts = Options(quick=args.quick, log_dir=args.log_dir, profile=args.profile, broker=args.broker)
    print(header(argv), flush=True)
    print(f"broker: {opts.broker}", flush=True)
    failed = False
    total = time.monotonic()
    for name in args.scenarios or list(SCENARIOS):
        start = time.monotonic()
        log(f"=== {name} ===")
        load = MachineLoad()
        profile_dir = opts.profile_dir(name)
        if profile_dir is not None and profile_dir.exists():
            for stale in profile_dir.glob("*.json"):  # an earlier run's samples must not be merged in
                stale.unlink()
        try:
            tables = SCENARIOS[name](opts)
        except Exception:
            failed = True
            print(f"\n{name}: FAILED\n{traceback.format_exc()}", flush=True)
            continue
        for table in tables:
            print(f"\n{table.render()}", flush=True)
        print(
            f"({name}: {time.monotonic() - start:.0f}s; other processes on this machine used "
            f"{load.others():.2f} CPU cores on average meanwhile)",
            flush=True,
        )
        if profile_dir is not None:
            for table in profiler.tables(profile_dir):
                print(f"\n{table.render()}", flush=True)
    print(f"\n(total: {time.monotonic() - total:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
