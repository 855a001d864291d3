"""The Prometheus queries behind the Kubernetes canary stats (agentops_pipelines/k8s/stats.py):
only the serving process's metrics, one agent and environment, parsed into per-version stats."""

from __future__ import annotations

import re

from agentops_pipelines.k8s.stats import role_stats, stats_queries

from .common import AGENT, METRICS, needs_promtool, prometheus_answers, promtool_check_records


def test_stats_queries_and_parsing():
    queries = stats_queries(AGENT, "prod", 300)
    assert set(queries) == {"requests", "p50", "p99", "escalations", "llm_calls", "llm_failures"}
    for query in queries.values():
        assert set(re.findall(r"agentops_\w+", query)) <= METRICS
        assert f'agent="{AGENT}",environment="prod"' in query and "[300s]" in query
    answers = prometheus_answers(**{"1": (95.2, 3.0, 1.9, 0.004, 0.0201, 7.1), "2": (0, 0, 0, "NaN", "NaN", 0)})
    assert role_stats(answers, "1") == {"requests": 100, "errors": 2, "client_errors": 3, "error_rate": 0.02,
                                        "p50_ms": 4.0, "p99_ms": 20.1, "escalations": 7}
    idle = role_stats(answers, "2")
    assert idle["requests"] == 0 and idle["error_rate"] == 0.0 and idle["p99_ms"] is None
    assert role_stats(answers, "3")["requests"] == 0  # a version Prometheus has not seen
    assert "llm_calls" not in role_stats(answers, "1")  # a trained router makes no LLM calls


def test_an_llm_agents_failed_calls_are_in_its_stats():
    answers = prometheus_answers(**{"4": (40, 0, 0, 0.3, 0.9, 0)})
    answers["llm_calls"] = _vector([({"version": "4"}, 40.2), ({"version": "3"}, 100)])
    answers["llm_failures"] = _vector([({"version": "4", "reason": "timeout"}, 11.8),
                                       ({"version": "4", "reason": "auth"}, 0.0),
                                       ({"version": "3", "reason": "timeout"}, 50)])
    stats = role_stats(answers, "4")
    assert (stats["llm_calls"], stats["llm_failures"], stats["llm_failure_reasons"]) == (40, 12, {"timeout": 12})
    assert stats["errors"] == 0  # the requests succeeded: only the LLM counts show the failures


def _vector(samples):
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": metric, "value": [1700000000, str(value)]} for metric, value in samples]}}


@needs_promtool
def test_stats_queries_parse_as_promql(tmp_path):
    promtool_check_records({f"stats:{name}": q for name, q in stats_queries(AGENT, "prod", 300).items()}, tmp_path)
