"""Alert rules: valid for promtool, behave as their unit tests say, and the same in compose and Kubernetes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.conftest import REPO, yaml

PROMTOOL = shutil.which("promtool")
RULES = REPO / "docker/prometheus/alerts.yml"
EXPECTED_ALERTS = {"ImdnHighErrorRatio", "ImdnRejectingRequests", "ImdnQueueSaturated", "ImdnSlowRequests",
                   "ImdnNotReady", "ImdnDown", "ImdnGpuMemoryHigh"}
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (apt-get install prometheus; "
                                    "see .ci/apt-packages.txt)")


def promtool(*args: str) -> None:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_check_rules():
    promtool("check", "rules", RULES.name)


@needs_promtool
def test_promtool_test_rules():
    promtool("test", "rules", "alerts.test.yml")


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert alerts == EXPECTED_ALERTS
    tests = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert tested == alerts


def test_prometheus_rule_has_the_same_groups():
    rule = yaml.safe_load((REPO / "k8s/components/servicemonitor/prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_compose_prometheus_loads_the_rules():
    config = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./docker/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
