"""The operator's monitoring files: deploy/prometheus's alert rules pass promtool (syntax and the unit tests
in tests/monitoring), and every metric the rules and the Grafana dashboard name is one b24q serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.observe.gauges import RedisCollector
from workers.observe.metrics import Metrics
from workers.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "b24q-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "b24q-dashboard.json"
NAME = re.compile(r"\bb24q_[a-z0-9_]+")


def promtool() -> str:
    """`make test` fetches promtool from Debian's prometheus package into .tools/ (the Makefile)."""
    found = os.environ.get("B24Q_PROMTOOL") or shutil.which("promtool")
    local = ROOT / ".tools" / "promtool"
    if found is None and local.exists():
        found = str(local)
    if found is None:
        pytest.fail("promtool not found: run `make test` (it fetches it into .tools/) or set B24Q_PROMTOOL")
    return found


def served(rt: Runtime) -> set[str]:
    """The sample names b24q's metrics endpoints serve: the worker/app counters and the Redis gauges."""
    registry = CollectorRegistry()
    Metrics(registry)
    registry.register(RedisCollector(rt))
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def test_the_alert_rules_pass_promtool() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [tool, "test", "rules", "b24q-alerts-test.yml"],
        cwd=ROOT / "tests" / "monitoring",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_metric_the_rules_and_the_dashboard_name_exists(runtime: Runtime) -> None:
    exposed = served(runtime)
    expressions = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]] + [
        RULES.read_text()
    ]
    named = {n for text in expressions for n in NAME.findall(text)}
    assert named, "no metric named at all"
    assert named <= exposed, sorted(named - exposed)
    assert {"b24q_app_events_total", "b24q_open_job_idle_seconds", "b24q_portal_held_methods"} <= named
