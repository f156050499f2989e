"""How the metrics leave a process: each worker writes its counters to memory-mapped files in the host's
metrics directory (prometheus-client's multiprocess mode), and `b24q metrics --port 9808` serves their sum
with the Redis gauges (`workers.observe.gauges`).

A worker records into `B24Q_METRICS_DIR` (or PROMETHEUS_MULTIPROC_DIR), installed at `worker_init`: any
number of worker processes on a host, restarted or not, add up, and none needs a port of its own. With
several hosts, every host's endpoint serves the Redis gauges (or only one, with `--no-redis` on the others).
"""

from __future__ import annotations

import logging
import os
import threading

from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

from workers.events import add_observer
from workers.observe.gauges import RedisCollector
from workers.observe.metrics import Metrics
from workers.runtime import Runtime
from workers.settings import Settings, get_settings

#: the logger of the metrics lines ("b24q metrics: recording to ..."), as operators and tests know it
log = logging.getLogger("workers.observe.metrics")


def metrics_dir(settings: Settings | None = None) -> str:
    s = settings or get_settings()
    return s.metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


_installed: Metrics | None = None
_install_lock = threading.Lock()


def enable_multiprocess(directory: str) -> None:
    """Make metrics created from now on write to `directory` (prometheus-client's multiprocess mode).

    prometheus-client picks its value class when it is first imported, from PROMETHEUS_MULTIPROC_DIR;
    `celery` imports it (through Flower's command plugin) before b24q's settings are read, so the
    class is switched here. Call it before creating any metric that should be shared.
    """
    os.makedirs(directory, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    if getattr(values.ValueClass, "__name__", "") != "MmapedValue":
        values.ValueClass = values.get_value_class()


def install_worker(settings: Settings | None = None) -> Metrics | None:
    """Record this process's metrics into the host's metrics directory (once); None when unset."""
    global _installed
    s = settings or get_settings()
    directory = metrics_dir(s)
    if not directory:
        return None
    with _install_lock:
        if _installed is None:
            enable_multiprocess(directory)
            _installed = Metrics(None, s.metrics_portal_labels)
            add_observer(_installed)
            log.info("b24q metrics: recording to %s (pid %d)", directory, os.getpid())
        return _installed


def install_worker_safely() -> None:
    """`install_worker` at a worker's start (`workers.celery`): metrics never keep a worker from starting."""
    try:
        install_worker()
    except Exception:  # metrics must never keep a worker from starting
        log.exception("b24q metrics: could not install the observer")


def build_registry(
    settings: Settings | None = None, runtime: Runtime | None = None, workers: bool = True, redis: bool = True
) -> CollectorRegistry:
    """The registry `b24q metrics` serves: the host's worker files plus the Redis gauges."""
    s = settings or get_settings()
    registry = CollectorRegistry()
    directory = metrics_dir(s)
    if workers and directory:
        os.makedirs(directory, exist_ok=True)
        MultiProcessCollector(registry, path=directory)
    if redis:
        registry.register(RedisCollector(runtime or Runtime(s), s.metrics_portal_labels))
    return registry


def serve(port: int, address: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> None:
    """Serve /metrics until the process is stopped."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=address, registry=registry or build_registry())
    threading.Event().wait()
