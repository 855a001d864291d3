"""The Prometheus rules and the Alertmanager configuration (deploy/prometheus), checked by
Prometheus's own tools when they are installed (``apt-get install prometheus
prometheus-alertmanager``), and the rules' metrics against what the serving process exports. That
the alerts fire on real traffic is tests/e2e/test_prometheus_alerts.py."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from .common import DEPLOY, METRICS, PROMTOOL

PROMETHEUS_DIR = DEPLOY / "prometheus"
AMTOOL = shutil.which("amtool")


def test_rules_use_only_the_serving_metrics():
    groups = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules
    for rule in rules:
        used = set(re.findall(r"\bagentops_\w+", rule["expr"]))
        assert used and used <= METRICS, (rule.get("alert") or rule.get("record"), used - METRICS)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_checks_rules_config_and_rule_unit_tests():
    for args in (
        ["check", "rules", "rules.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "rules_test.yml"],  # each alert fires (and only) where it should
    ):
        done = subprocess.run(
            [PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


@pytest.mark.skipif(AMTOOL is None, reason="amtool is not installed (apt-get install prometheus-alertmanager)")
def test_amtool_checks_alertmanager_config():
    done = subprocess.run(
        [AMTOOL, "check-config", "alertmanager.yml"],
        cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
