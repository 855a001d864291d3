"""Stats from Prometheus (pure): the PromQL per role and how answers become per-role stats."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# --------------------------------------------------------------------------------------------
# Prometheus (stats)

_PROMQL = {
    "requests": "sum by (version, outcome) (increase(agentops_requests_total{{{sel}}}[{w}]))",
    "escalations": "sum by (version) (increase(agentops_escalations_total{{{sel}}}[{w}]))",
    # LLM agents' calls to their endpoint: a failed call is a hand-over, not a server error
    "llm_calls": "sum by (version) (increase(agentops_llm_calls_total{{{sel}}}[{w}]))",
    "llm_failures": "sum by (version, reason) (increase(agentops_llm_call_failures_total{{{sel}}}[{w}]))",
    "p50": "histogram_quantile(0.5, sum by (version, le) "
    "(rate(agentops_request_latency_seconds_bucket{{{sel}}}[{w}])))",
    "p99": "histogram_quantile(0.99, sum by (version, le) "
    "(rate(agentops_request_latency_seconds_bucket{{{sel}}}[{w}])))",
}


def stats_queries(agent: str, environment: str, window_s: float) -> dict[str, str]:
    """The PromQL behind ``KubernetesDeployer.stats`` (instant queries over ``window_s``)."""
    sel = f'agent="{agent}",environment="{environment}"'
    w = f"{max(1, int(window_s))}s"
    return {name: q.format(sel=sel, w=w) for name, q in _PROMQL.items()}


def _samples(response: Mapping[str, Any]) -> list[tuple[dict[str, str], float]]:
    out = []
    for sample in (response.get("data") or {}).get("result") or []:
        value = float(sample["value"][1])
        if not math.isnan(value):
            out.append((sample.get("metric") or {}, value))
    return out


def role_stats(answers: Mapping[str, Mapping[str, Any]], version: str) -> dict[str, Any]:
    """One version's stats from the answers to ``stats_queries``, in the shape of the serving
    process's ``/admin/stats`` (requests, errors = 5xx, client_errors = 4xx, error_rate, p50_ms,
    p99_ms) plus escalations, and for an LLM agent llm_calls, llm_failures and
    llm_failure_reasons. Counts from ``increase()`` are estimates, hence rounded."""
    outcomes = {m.get("outcome"): v for m, v in _samples(answers["requests"]) if m.get("version") == version}
    requests = round(sum(outcomes.values()))
    errors = round(outcomes.get("server_error", 0.0))

    def one(name: str, scale: float = 1.0) -> float | None:
        values = [v for m, v in _samples(answers[name]) if m.get("version") == version]
        return round(values[0] * scale, 3) if values else None

    llm = [v for m, v in _samples(answers["llm_calls"]) if m.get("version") == version]
    failed = {m.get("reason", "?"): round(v) for m, v in _samples(answers["llm_failures"])
              if m.get("version") == version}
    calls = {"llm_calls": round(llm[0]), "llm_failures": sum(failed.values()),
             "llm_failure_reasons": {r: n for r, n in failed.items() if n}} if llm else {}
    return calls | {
        "requests": requests,
        "errors": errors,
        "client_errors": round(outcomes.get("client_error", 0.0)),
        "error_rate": round(errors / requests, 6) if requests else 0.0,
        "p50_ms": one("p50", 1000.0) if requests else None,
        "p99_ms": one("p99", 1000.0) if requests else None,
        "escalations": round(one("escalations") or 0.0),
    }


