"""The scenarios of `python -m bench.run`, one module each; every one exposes `run(opts) -> list[Table]`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    """What the command line asked for.

    quick: smaller workloads (the whole suite in under ~3 minutes).
    log_dir: keep each stack's logs (redis, emulator, workers) under this directory.
    profile: run b24q workers under `bench.profiler` and print where their CPU goes.
    """

    quick: bool = False
    log_dir: Path | None = None
    profile: bool = False

    def dir_for(self, scenario: str) -> Path | None:
        return self.log_dir / scenario if self.log_dir is not None else None

    def profile_dir(self, scenario: str) -> Path | None:
        """Where profiled workers dump their samples (outside the stack's temporary directory)."""
        if not self.profile:
            return None
        root = self.log_dir or Path(tempfile.gettempdir()) / "b24q-bench"
        return root / scenario / "profile"
