"""Issue 21's busy-portal bound, measured as this machine allows: b24q's CPU a job at 10 busy portals against
Celery's no-op task at the same load, alternating, several times in one sitting.

The load is `bench.run scale`'s at N = 10: 200 status reports a second over 10 portals (50 ms latency, standard
plan), one enqueue each, 2 workers at the default concurrency; for 30 s as issue 21 has it (--quick: 15 s, when
the portals' bursts carry a larger share of the requests). The floor is `brokers.floor` at the same pace (2
workers, the same concurrency, late acks, logging at INFO as b24q's workers do). A single ratio swings by about
±15 % between runs on a shared 2-core machine (docs/benchmarks.md, session 30), so b24q and the floor run in
turns, `PAIRS` times (--quick: 2), and the table gives every pair's ratio and the mean of them. Both are
measured warm: the floor runs `noop.STEP` messages before its clock starts, and b24q as many jobs.
"""

from __future__ import annotations

from statistics import mean

from bench import noop
from bench.report import Table, fmt
from bench.scenarios import Options
from bench.scenarios.scale import measure, noop_floor
from bench.stack import log

PAIRS = 3
BOUND = 1.5


def run(opts: Options) -> list[Table]:
    seconds = 15.0 if opts.quick else 30.0
    pairs = 2 if opts.quick else PAIRS
    table = Table(
        f"busy: 10 busy portals, 200 status reports/s for {seconds:g} s, b24q and Celery's no-op task in turns "
        f"({opts.broker})",
        ("pair", "b24q CPU ms/job", "b24q switches/job", "no-op CPU ms/job", "no-op switches/job", "ratio"),
    )
    ratios: list[float] = []
    for i in range(1, pairs + 1):
        log(f"busy: pair {i} of {pairs}")
        b24q = measure(opts, 10, seconds, naive_too=False, warm=noop.STEP)[0]
        floor = noop_floor(opts, seconds)
        ratio = float(b24q[1]) / floor.ms
        ratios.append(ratio)
        table.add(str(i), b24q[1], b24q[2], fmt(floor.ms, 2), floor.switches, f"{ratio:.2f}x")
    table.add("mean", "", "", "", "", f"{mean(ratios):.2f}x")
    table.note(f"issue 21's bound: b24q <= {BOUND}x Celery's no-op task on the same broker")
    table.note(f"CPU: the worker processes' user+system time over the jobs they ran, both warm ({noop.STEP} first)")
    table.note("switches: the worker processes' context switches a job (perf stat; blank where perf is not available)")
    return [table]
