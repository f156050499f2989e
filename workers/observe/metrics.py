"""Prometheus metrics: counters from the workers, gauges from Redis, one endpoint per host.

Workers count what happens (jobs by outcome, REST requests, limiter waits, 503s, holds, refreshes,
dead letters, latency) through an `Observer` (`Metrics`), installed at `worker_init` when
`B24Q_METRICS_DIR` (or PROMETHEUS_MULTIPROC_DIR) names a directory. Each worker process writes its
counters to memory-mapped files there (prometheus-client's multiprocess mode), so any number of
worker processes on a host, restarted or not, add up, and none needs a port of its own.

`b24q metrics --port 9808` serves them: it sums the files of the host's directory and adds gauges
that it reads from Redis at every scrape (`RedisCollector`: queue depth per priority, unacked
messages, dead letters by reason, per-portal backlog, parked jobs, re-authorisation, limiter level,
held methods, token expiry). Those come from shared state, so they are right whichever worker is
alive; with several hosts, every host's endpoint serves them (or only one, with `--no-redis` on
the others).

Portal labels are bounded by `metrics_portal_labels` (see `PortalLabels`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from workers.events import Observer, add_observer
from workers.observe.status import snapshot
from workers.portals.state import STATES
from workers.runtime import Runtime
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: enqueue → applied: a healthy pool answers in well under a second; a throttled portal in minutes
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 86400)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class PortalLabels:
    """Bounds the `portal` label: the first `cap` portals a process sees get their own label, later
    ones share `(other)`; with cap 0 every portal is `(all)`. (Neither value is a valid portal key.)"""

    ALL = "(all)"
    OTHER = "(other)"

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, portal: str) -> str:
        if self.cap <= 0:
            return self.ALL
        if portal in self._seen:
            return portal
        with self._lock:
            if portal in self._seen or len(self._seen) < self.cap:
                self._seen.add(portal)
                return portal
        return self.OTHER


class Metrics(Observer):
    """The workers' counters and histograms, fed by the core's observer hooks.

    Parameters:
        registry: where to register the metrics; None in a worker (multiprocess mode: the files
            in the metrics directory are what `b24q metrics` reads).
        portal_labels: `Settings.metrics_portal_labels`.
    """

    def __init__(self, registry: CollectorRegistry | None = None, portal_labels: int = 200) -> None:
        self.portal = PortalLabels(portal_labels)
        r = registry
        self.jobs = Counter(
            "b24q_jobs", "Jobs finished, by kind and outcome (applied, dead, parked).", ["kind", "outcome"], registry=r
        )
        self.runs = Counter(
            "b24q_job_runs", "Job runs started (retries and redeliveries included).", ["kind"], registry=r
        )
        self.retries = Counter(
            "b24q_job_retries",
            "Retries scheduled: reason flow (limits, holds; not a failure) "
            "or transient (5xx, network), with the error code.",
            ["kind", "reason", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "b24q_job_latency_seconds",
            "Enqueue to applied, seconds, by kind.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_lettered = Counter(
            "b24q_dead_lettered", "Jobs sent to the dead letters, by kind and reason.", ["kind", "reason"], registry=r
        )
        self.parked_jobs = Counter(
            "b24q_parked", "Jobs parked because their portal needs re-authorisation.", ["portal"], registry=r
        )
        self.requests = Counter(
            "b24q_rest_requests",
            "HTTP requests to portals, by REST method (`batch` for packed "
            "requests) and outcome code (`ok` or the error).",
            ["method", "code"],
            registry=r,
        )
        self.commands = Counter(
            "b24q_rest_commands", "Calls carried by REST requests (a batch carries up to 50).", ["method"], registry=r
        )
        self.duration = Histogram(
            "b24q_rest_request_duration_seconds",
            "Duration of one HTTP request to a portal.",
            ["method"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.waits = Counter(
            "b24q_limiter_waits", "Times a lane waited for its portal's limiter slot.", ["portal"], registry=r
        )
        self.waited = Counter(
            "b24q_limiter_wait_seconds", "Seconds lanes waited for their portal's limiter slot.", ["portal"], registry=r
        )
        self.refused = Counter(
            "b24q_query_limit_exceeded",
            "503 QUERY_LIMIT_EXCEEDED answers (the calls are sent again with the next slot).",
            ["portal"],
            registry=r,
        )
        self.holds = Counter(
            "b24q_operating_holds", "Holds of a method by the operating-time limit.", ["portal", "method"], registry=r
        )
        self.refreshes = Counter(
            "b24q_token_refreshes",
            "OAuth refreshes by outcome (refreshed, refused = re-authorisation needed, unavailable).",
            ["portal", "outcome"],
            registry=r,
        )
        self.moves = Counter(
            "b24q_portal_moves", "Redirects to a portal's new domain that b24q followed.", ["portal"], registry=r
        )
        self.app_events = Counter(
            "b24q_app_events",
            "Application events received (install, uninstall, update) by outcome; refused = forged or unproven.",
            ["event", "outcome"],
            registry=r,
        )

    # -- Observer hooks --------------------------------------------------------------------------

    def job_started(self, kind: str, portal: str) -> None:
        self.runs.labels(kind).inc()

    def job_finished(self, kind: str, portal: str, outcome: str, latency: float | None) -> None:
        self.jobs.labels(kind, outcome).inc()
        if outcome == "applied" and latency is not None:
            self.latency.labels(kind).observe(max(0.0, latency))

    def job_retried(self, kind: str, portal: str, reason: str, code: str) -> None:
        self.retries.labels(kind, reason, code).inc()

    def dead_letter(self, kind: str, portal: str, code: str) -> None:
        self.dead_lettered.labels(kind, code).inc()

    def rest_request(self, portal: str, method: str, commands: int, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.commands.labels(method).inc(commands)
        self.duration.labels(method).observe(seconds)

    def limiter_wait(self, portal: str, seconds: float) -> None:
        label = self.portal(portal)
        self.waits.labels(label).inc()
        self.waited.labels(label).inc(seconds)

    def refused_503(self, portal: str) -> None:
        self.refused.labels(self.portal(portal)).inc()

    def operating_hold(self, portal: str, method: str, until: float) -> None:
        self.holds.labels(self.portal(portal), method).inc()

    def token_refresh(self, portal: str, outcome: str) -> None:
        self.refreshes.labels(self.portal(portal), outcome).inc()

    def parked(self, portal: str) -> None:
        self.parked_jobs.labels(self.portal(portal)).inc()

    def portal_moved(self, portal: str) -> None:
        self.moves.labels(self.portal(portal)).inc()

    def app_event(self, event: str, outcome: str) -> None:
        self.app_events.labels(event, outcome).inc()


# --- workers: multiprocess mode --------------------------------------------------------------------


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


# --- the endpoint: Redis gauges at scrape time ---------------------------------------------------


class RedisCollector:
    """Gauges computed from Redis at every scrape, for the whole pool (whichever worker is alive)."""

    def __init__(self, runtime: Runtime, portal_labels: int = 200) -> None:
        self.rt = runtime
        self.portal_labels = portal_labels

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            snap = snapshot(self.rt)
        except Exception as exc:
            log.warning("b24q metrics: cannot read Redis: %s", exc)
            snap = None
        yield GaugeMetricFamily("b24q_redis_up", "1 if the metrics endpoint could read Redis.", value=int(bool(snap)))
        if snap is not None:
            yield from self._families(snap)
        yield GaugeMetricFamily(
            "b24q_metrics_collect_seconds",
            "Seconds spent reading Redis for this scrape.",
            value=time.perf_counter() - started,
        )

    def _families(self, snap: dict[str, Any]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "b24q_queue_depth", "Messages waiting in the broker queue, by priority step.", labels=["queue", "priority"]
        )
        for q in snap["queues"]:
            for priority, n in q["by_priority"].items():
                if n is not None:
                    depth.add_metric([q["name"], priority], n)
        yield depth
        if snap["unacked"] is not None:  # (RabbitMQ does not tell an AMQP client)
            yield GaugeMetricFamily(
                "b24q_queue_unacked",
                "Messages delivered to workers and not yet acknowledged (running jobs and scheduled retries).",
                value=snap["unacked"],
            )
        yield GaugeMetricFamily(
            "b24q_open_jobs",
            "Jobs enqueued and not finished (the reconciler's index).",
            value=snap["open_jobs"]["count"],
        )
        yield GaugeMetricFamily(
            "b24q_open_job_idle_seconds",
            "Seconds the open job longest without progress has waited (backlog age; 0 when none is open).",
            value=snap["open_jobs"]["oldest_idle_s"],
        )
        dead = GaugeMetricFamily("b24q_dead_letters", "Dead letters kept now, by reason.", labels=["reason"])
        for reason, n in snap["dead_letters"]["by_reason"].items():
            dead.add_metric([reason], n)
        yield dead

        states: dict[str, int] = dict.fromkeys(STATES, 0)
        for p in snap["portals"]:
            states[p["state"]] = states.get(p["state"], 0) + 1
        portals = GaugeMetricFamily("b24q_portals", "Registered portals by state.", labels=["state"])
        for state, n in sorted(states.items()):
            portals.add_metric([state], n)
        yield portals

        per: dict[str, dict[str, float]] = {}
        expiry: dict[str, float] = {}
        for i, p in enumerate(snap["portals"]):
            if self.portal_labels <= 0:
                label = PortalLabels.ALL
            elif i < self.portal_labels:
                label = p["key"]
            else:
                label = PortalLabels.OTHER
            row = per.setdefault(label, {"backlog": 0, "parked": 0, "reauth": 0, "level": 0.0, "held": 0})
            row["backlog"] += p["backlog"]
            row["parked"] += p["parked"]
            row["reauth"] += p["state"] == "reauth"
            row["level"] = max(row["level"], p["limiter_level"])
            row["held"] += len(p["held"])
            if p["token_expires"]:
                expiry[label] = min(expiry.get(label, p["token_expires"]), p["token_expires"])
        specs = (
            ("backlog", "b24q_portal_backlog_jobs", "Jobs enqueued for the portal and not finished."),
            ("parked", "b24q_portal_parked_jobs", "Jobs parked until the portal is re-authorised."),
            ("reauth", "b24q_portal_reauth", "1 when the portal needs re-authorisation (count when aggregated)."),
            ("level", "b24q_portal_limiter_level", "Requests in the portal bucket now (max when aggregated)."),
            ("held", "b24q_portal_held_methods", "Methods held now by the operating-time limit."),
        )
        for field, name, doc in specs:
            family = GaugeMetricFamily(name, doc, labels=["portal"])
            for label, row in per.items():
                family.add_metric([label], row[field])
            yield family
        family = GaugeMetricFamily(
            "b24q_portal_token_expiry_timestamp_seconds",
            "When the portal's access token expires (unix time; soonest when aggregated).",
            labels=["portal"],
        )
        for label, ts in expiry.items():
            family.add_metric([label], ts)
        yield family


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
