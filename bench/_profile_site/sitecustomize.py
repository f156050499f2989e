"""Starts `bench.profiler`'s sampler in a worker process when `B24Q_BENCH_PROFILE` names a directory.

`bench.run --profile` puts this directory on the PYTHONPATH of the b24q workers it starts (only them),
so the workers run exactly as `LocalStack` starts them, with the sampler added at interpreter start.
"""

import os

if os.environ.get("B24Q_BENCH_PROFILE"):
    from bench.profiler import activate

    activate(os.environ["B24Q_BENCH_PROFILE"])
