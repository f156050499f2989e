"""The scenarios of `python -m bench.run`, one module each; every one exposes `run(opts) -> list[Table]`."""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The machine's RabbitMQ for `--broker rabbitmq` (and the `brokers` scenario).
RABBITMQ_URL = os.environ.get("B24Q_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@dataclass(frozen=True)
class Options:
    """What the command line asked for.

    quick: smaller workloads (the whole suite in under ~3 minutes).
    log_dir: keep each stack's logs (redis, emulator, workers) under this directory.
    profile: run b24q workers under `bench.profiler` and print where their CPU goes.
    broker: where the jobs' messages live: "redis" (the stack's own) or "rabbitmq" (the machine's, queues
    of the run's own); the naive baseline runs on the same broker.
    """

    quick: bool = False
    log_dir: Path | None = None
    profile: bool = False
    broker: str = "redis"

    def stack_settings(self, **settings: Any) -> dict[str, Any]:
        """A bench stack's settings on the chosen broker."""
        if self.broker == "rabbitmq":
            settings |= {"broker_url": RABBITMQ_URL, "queue": f"b24q-bench-{uuid.uuid4().hex[:8]}"}
        return settings

    def dir_for(self, scenario: str) -> Path | None:
        return self.log_dir / scenario if self.log_dir is not None else None

    def profile_dir(self, scenario: str) -> Path | None:
        """Where profiled workers dump their samples (outside the stack's temporary directory)."""
        if not self.profile:
            return None
        root = self.log_dir or Path(tempfile.gettempdir()) / "b24q-bench"
        return root / scenario / "profile"
