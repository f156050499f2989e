"""The gauges `b24q metrics` reads from Redis at every scrape (`RedisCollector`): queue depth per priority,
unacked messages, open jobs, dead letters by reason, portals by state and, per portal, backlog, parked jobs,
re-authorisation, limiter level, held methods and token expiry.

They come from shared state (`workers.observe.status.snapshot`), so they are right whichever worker is
alive; portal labels are bounded as the workers' are (`PortalLabels`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from workers.observe.metrics import PortalLabels
from workers.observe.status import snapshot
from workers.portals.state import STATES
from workers.runtime import Runtime

#: the logger of the metrics endpoint's lines, whichever module of it writes them
log = logging.getLogger("workers.observe.metrics")


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
        yield from _queue_families(snap)
        yield from _portal_families(snap, self.portal_labels)


#: per-portal gauges: (row field, name, help)
PORTAL_GAUGES = (
    ("backlog", "b24q_portal_backlog_jobs", "Jobs enqueued for the portal and not finished."),
    ("parked", "b24q_portal_parked_jobs", "Jobs parked until the portal is re-authorised."),
    ("reauth", "b24q_portal_reauth", "1 when the portal needs re-authorisation (count when aggregated)."),
    ("level", "b24q_portal_limiter_level", "Requests in the portal bucket now (max when aggregated)."),
    ("held", "b24q_portal_held_methods", "Methods held now by the operating-time limit."),
)


def _queue_families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The broker queue, the open jobs and the dead letters."""
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


def _portal_label(index: int, key: str, cap: int) -> str:
    """The first `cap` portals of the snapshot get their own label, the rest share one (as `PortalLabels`)."""
    if cap <= 0:
        return PortalLabels.ALL
    return key if index < cap else PortalLabels.OTHER


def _per_portal(portals: list[dict[str, Any]], cap: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each label's row of `PORTAL_GAUGES` (summed; the limiter level its max) and soonest token expiry."""
    per: dict[str, dict[str, float]] = {}
    expiry: dict[str, float] = {}
    for i, p in enumerate(portals):
        label = _portal_label(i, p["key"], cap)
        row = per.setdefault(label, {"backlog": 0, "parked": 0, "reauth": 0, "level": 0.0, "held": 0})
        row["backlog"] += p["backlog"]
        row["parked"] += p["parked"]
        row["reauth"] += p["state"] == "reauth"
        row["level"] = max(row["level"], p["limiter_level"])
        row["held"] += len(p["held"])
        if p["token_expires"]:
            expiry[label] = min(expiry.get(label, p["token_expires"]), p["token_expires"])
    return per, expiry


def _portal_families(snap: dict[str, Any], cap: int) -> Iterator[Metric]:
    """Portals by state, then the per-portal gauges under bounded labels."""
    states: dict[str, int] = dict.fromkeys(STATES, 0)
    for p in snap["portals"]:
        states[p["state"]] = states.get(p["state"], 0) + 1
    portals = GaugeMetricFamily("b24q_portals", "Registered portals by state.", labels=["state"])
    for state, n in sorted(states.items()):
        portals.add_metric([state], n)
    yield portals

    per, expiry = _per_portal(snap["portals"], cap)
    for field, name, doc in PORTAL_GAUGES:
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
