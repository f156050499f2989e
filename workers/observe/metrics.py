"""What the workers count: the `Metrics` observer of `workers.events` (jobs by outcome, REST requests,
limiter waits, 503s, holds, refreshes, dead letters, latency), its metrics declared in one table.

In a worker the counters go to the host's metrics directory (`workers.observe.exposition`); the HTTP app
registers its own. Portal labels are bounded by `metrics_portal_labels` (see `PortalLabels`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from workers.events import Observer

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


@dataclass(frozen=True)
class Declared:
    """One metric of `Metrics`: a counter, or a histogram when it has `buckets`."""

    name: str
    doc: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None

    def create(self, registry: CollectorRegistry | None) -> Counter | Histogram:
        if self.buckets is None:
            return Counter(self.name, self.doc, self.labels, registry=registry)
        return Histogram(self.name, self.doc, self.labels, buckets=self.buckets, registry=registry)


#: `Metrics`' attributes and what each is (names, help texts and labels are what dashboards and alerts read)
DECLARED: dict[str, Declared] = {
    "jobs": Declared("b24q_jobs", "Jobs finished, by kind and outcome (applied, dead, parked).", ("kind", "outcome")),
    "runs": Declared("b24q_job_runs", "Job runs started (retries and redeliveries included).", ("kind",)),
    "retries": Declared(
        "b24q_job_retries",
        "Retries scheduled: reason flow (limits, holds; not a failure) "
        "or transient (5xx, network), with the error code.",
        ("kind", "reason", "code"),
    ),
    "latency": Declared(
        "b24q_job_latency_seconds", "Enqueue to applied, seconds, by kind.", ("kind",), buckets=LATENCY_BUCKETS
    ),
    "dead_lettered": Declared(
        "b24q_dead_lettered", "Jobs sent to the dead letters, by kind and reason.", ("kind", "reason")
    ),
    "parked_jobs": Declared("b24q_parked", "Jobs parked because their portal needs re-authorisation.", ("portal",)),
    "requests": Declared(
        "b24q_rest_requests",
        "HTTP requests to portals, by REST method (`batch` for packed requests) and outcome code (`ok` or the error).",
        ("method", "code"),
    ),
    "commands": Declared(
        "b24q_rest_commands", "Calls carried by REST requests (a batch carries up to 50).", ("method",)
    ),
    "duration": Declared(
        "b24q_rest_request_duration_seconds",
        "Duration of one HTTP request to a portal.",
        ("method",),
        buckets=REQUEST_BUCKETS,
    ),
    "waits": Declared("b24q_limiter_waits", "Times a lane waited for its portal's limiter slot.", ("portal",)),
    "waited": Declared(
        "b24q_limiter_wait_seconds", "Seconds lanes waited for their portal's limiter slot.", ("portal",)
    ),
    "refused": Declared(
        "b24q_query_limit_exceeded",
        "503 QUERY_LIMIT_EXCEEDED answers (the calls are sent again with the next slot).",
        ("portal",),
    ),
    "holds": Declared("b24q_operating_holds", "Holds of a method by the operating-time limit.", ("portal", "method")),
    "refreshes": Declared(
        "b24q_token_refreshes",
        "OAuth refreshes by outcome (refreshed, refused = re-authorisation needed, unavailable).",
        ("portal", "outcome"),
    ),
    "moves": Declared("b24q_portal_moves", "Redirects to a portal's new domain that b24q followed.", ("portal",)),
    "app_events": Declared(
        "b24q_app_events",
        "Application events received (install, uninstall, update) by outcome; refused = forged or unproven.",
        ("event", "outcome"),
    ),
}


class Metrics(Observer):
    """The workers' counters and histograms, fed by the core's observer hooks.

    Parameters:
        registry: where to register the metrics; None in a worker (multiprocess mode: the files
            in the metrics directory are what `b24q metrics` reads).
        portal_labels: `Settings.metrics_portal_labels`.
    """

    jobs: Counter
    runs: Counter
    retries: Counter
    latency: Histogram
    dead_lettered: Counter
    parked_jobs: Counter
    requests: Counter
    commands: Counter
    duration: Histogram
    waits: Counter
    waited: Counter
    refused: Counter
    holds: Counter
    refreshes: Counter
    moves: Counter
    app_events: Counter

    def __init__(self, registry: CollectorRegistry | None = None, portal_labels: int = 200) -> None:
        self.portal = PortalLabels(portal_labels)
        for attr, declared in DECLARED.items():
            setattr(self, attr, declared.create(registry))

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
