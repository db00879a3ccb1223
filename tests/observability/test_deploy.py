"""What `deploy/` ships is checked by the real tools: promtool checks and unit-tests the alert
rules and the example Prometheus configuration, amtool checks the Alertmanager example; the
Grafana dashboard and the rules use only metrics the daemon exports, and the README documents
every one of them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from dasscod import metrics
from dasscod.metrics import DaemonCollector, Snapshot

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "dasscod-rules.yml"
NAME = re.compile(r"\b(?:dasscod|process)_[a-z_]+\b")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (tests/infra/install_packages.sh installs it)")
    return path


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_the_rules() -> None:
    out = run(tool("promtool"), "check", "rules", str(RULES))
    assert "SUCCESS: 9 rules found" in out


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    out = run(tool("promtool"), "test", "rules",
              str(DEPLOY / "prometheus" / "tests" / "dasscod-rules.test.yml"))
    assert "SUCCESS" in out


def test_the_example_prometheus_configuration_is_valid() -> None:
    run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))


def test_the_example_alertmanager_configuration_is_valid() -> None:
    out = run(tool("amtool"), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert "2 receivers" in out


def sample_names(family: Metric) -> set[str]:
    if family.type == "counter":
        return {f"{family.name}_total", f"{family.name}_created"}
    if family.type == "histogram":
        return {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
    return {family.name}


def exported() -> set[str]:
    """Every series name a daemon can export (the families exist before their first sample)."""
    collector = DaemonCollector(clusters=lambda: {"c": True}, breaker_open=lambda: False,
                                folders=[ROOT], leader=lambda: True)
    collector.snapshot = Snapshot(taken_at=1.0)
    families = [*metrics.REGISTRY.collect(), *collector.collect()]
    return {name for family in families for name in sample_names(family)}


def used_by_dashboard() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dasscod-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 20
    return {name for e in exprs for name in NAME.findall(e)}


def test_the_dashboard_and_the_rules_use_only_exported_metrics() -> None:
    names = exported()
    dashboard = used_by_dashboard()
    rules = set(NAME.findall(RULES.read_text()))
    assert dashboard - names == set()
    assert rules - names == set()
    # And they show what matters: errors, clusters, ARS, the daemon's own health.
    assert {"dasscod_assets", "dasscod_cluster_up", "dasscod_ars_breaker_open",
            "dasscod_supervisor_restarts_total", "process_resident_memory_bytes"} <= dashboard


def test_the_readme_documents_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    families = [*metrics.REGISTRY.collect(), *DaemonCollector(
        clusters=dict, breaker_open=lambda: True, leader=lambda: True).collect()]
    ours = {f"{f.name}_total" if f.type == "counter" else f.name
            for f in families if f.name.startswith("dasscod_")}
    assert len(ours) >= 20
    assert sorted(n for n in ours if f"`{n}`" not in readme) == []
