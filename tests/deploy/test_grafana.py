"""The Grafana dashboard (deploy/grafana): its queries use only the serving process's metrics,
filtered by the dashboard's variables; panels do not overlap; PromQL parses (promtool)."""

from __future__ import annotations

import json
import re

import pytest

from .common import DEPLOY, METRICS, needs_promtool, promtool_check_records


@pytest.fixture(scope="module")
def dashboard():
    return json.loads((DEPLOY / "grafana" / "agentops-dashboard.json").read_text())


def _targets(dashboard):
    return [(p, t) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_use_only_the_serving_metrics(dashboard):
    used = set()
    for panel, target in _targets(dashboard):
        expr = target["expr"]
        # every selector is a metric followed by its label matchers
        selected = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
        assert selected <= METRICS, (panel["title"], selected - METRICS)
        assert set(re.findall(r"agentops_\w+", expr)) == selected, panel["title"]
        assert 'agent=~"$agent"' in expr and 'environment=~"$environment"' in expr, panel["title"]
        assert target["datasource"]["uid"] == "${datasource}"
        used |= selected
    assert {"agentops_requests_total", "agentops_request_latency_seconds_bucket", "agentops_errors_total",
            "agentops_tool_calls_total", "agentops_escalations_total", "agentops_canary_share",
            "agentops_model_info", "agentops_online_scorer_failures_total", "agentops_shadow_requests_total",
            "agentops_shadow_challenger_errors_total"} <= used


def test_dashboard_panels_and_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "agent", "environment"} <= set(variables)
    for name in ("agent", "environment"):
        query = variables[name]["query"]["query"]
        assert query.startswith("label_values(agentops_requests_total") and query.endswith(f"{name})")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dashboard["panels"]:  # no two panels overlap on the 24-column grid
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    # one panel shows both latency quantiles from the histogram
    latency = [[t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"]]
    assert any(any("histogram_quantile(0.5," in e for e in exprs) and any("histogram_quantile(0.99," in e for e in exprs)
               and all("agentops_request_latency_seconds_bucket" in e for e in exprs) for exprs in latency)


@needs_promtool
def test_dashboard_queries_parse_as_promql(dashboard, tmp_path):
    def concrete(expr):
        return expr.replace("$__rate_interval", "5m").replace("$agent", ".*").replace("$environment", ".*")

    promtool_check_records({f"dashboard:query{i}": concrete(t["expr"]) for i, (_, t) in enumerate(_targets(dashboard))},
                           tmp_path)
