"""Skews this process's wall clock, for the clock fault test (tests/faults/test_clock_skew.py).

Python imports `sitecustomize` at start-up from the first directory on sys.path that has one, so a
worker started with this directory on PYTHONPATH and `B24Q_TEST_CLOCK_SKEW=SECONDS` sees `time.time()`
(and `time.time_ns()`) that many seconds off; everything else in the machine keeps the true time.
That covers b24q's own clock reads (ledger, tokens, operating holds) and kombu's unacked index;
`datetime.now()` (Celery's ETA arithmetic) reads the C clock and is not skewed.
"""

import os
import sys
import time

_skew = float(os.environ.get("B24Q_TEST_CLOCK_SKEW") or 0.0)
if _skew:
    _true_time, _true_time_ns = time.time, time.time_ns

    def _skewed_time() -> float:
        return _true_time() + _skew

    def _skewed_time_ns() -> int:
        return _true_time_ns() + int(_skew * 1e9)

    time.time = _skewed_time
    time.time_ns = _skewed_time_ns
    print(f"b24q-test: this process's wall clock is skewed by {_skew:+.1f} s", file=sys.stderr, flush=True)
