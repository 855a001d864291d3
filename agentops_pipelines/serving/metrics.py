"""Prometheus metrics of one serving process, in its own ``CollectorRegistry``.

Series (labels ``agent``, ``environment``, ``version`` on each, plus the ones listed):

- ``agentops_requests_total{outcome}``: ``/invocations`` requests; outcome ``ok`` (2xx),
  ``client_error`` (4xx: bad input, too large, wrong content type) or ``server_error`` (5xx).
- ``agentops_request_latency_seconds``: histogram of the server-side time of each request, from
  the request line read to the response ready (buckets 1 ms .. 1 s, fine enough for a ms p99).
- ``agentops_tool_calls_total{tool}``: predicted tool per row.
- ``agentops_escalations_total``: rows routed to the escalation tool.
- ``agentops_errors_total{error_code}``: every 4xx/5xx by its ``error_code``.
- ``agentops_predicted_rows_total``: rows predicted (a request may carry several).
- ``agentops_model_info{role, model_uri}``: 1 for each version served now (role stable|canary).
- ``agentops_canary_share``: the share of requests sent to the canary (0 without one).
- ``agentops_traces_total{reason, result}`` and ``agentops_inference_log_rows_total{result}``:
  the health of tracing and of the inference log (dropped work shows here).
- ``agentops_rejections_total{reason}``: connections refused by the HTTP layer before a request
  reached the app (``connections``: over the connection cap, answered 503 with ``Retry-After``;
  ``header_timeout``, ``body_timeout``: 408; ``header_too_large``: 431). Requests refused for
  overload by the app are ``agentops_errors_total{error_code="OVERLOADED"}``.
- ``agentops_llm_calls_total`` and ``agentops_llm_call_failures_total{reason}``: the LLM calls a
  served LLM agent made (a memoised decision is none) and those that failed, by reason class
  (``agent.llm.endpoint.FAILURE_REASONS``: timeout, unreachable, auth, rate_limited, ...; never
  the URL or the key). A failed call still answers 200 with a hand-over to a person, so the
  request counts as ``ok``: these series are what shows an endpoint outage (alert rule
  ``AgentLLMCallFailures``). Read from the served models' routers when ``/metrics`` is scraped;
  only models whose router calls an LLM have them.
- ``agentops_trace_exporter_up`` (labels ``agent``, ``environment``): 1 while the trace exporter
  runs, 0 once it died (alert ``AgentTraceExporterDown``); absent when the process traces
  nothing and runs no evaluation worker.

A request that fails before a model is chosen (unparseable body, oversized, wrong content type) is
counted against the stable version; before any model is loaded, against version ``none``.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

from agentops_pipelines.agent.llm.endpoint import FAILURE_REASONS

LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
)  # fmt: skip
OUTCOMES = ("ok", "client_error", "server_error")
DEFAULT_AGENT = "agent"
NO_VERSION = "none"


def outcome_of(status: int) -> str:
    return "ok" if status < 400 else "client_error" if status < 500 else "server_error"


class _ModelSeries:
    """The labelled children of one (agent, version): resolved once, so a request pays no lookup."""

    def __init__(self, m: ServingMetrics, agent: str, version: str):
        labels = (agent, m.environment, version)
        self._m = m
        self._labels = labels
        self.requests = {o: m.requests.labels(*labels, o) for o in OUTCOMES}  # exported at 0
        self.latency = m.latency.labels(*labels)
        self.escalations = m.escalations.labels(*labels)
        self.rows = m.rows.labels(*labels)
        self._tools: dict[str, Any] = {}
        self._errors: dict[str, Any] = {}

    def tool(self, name: str):
        child = self._tools.get(name)
        if child is None:
            child = self._tools[name] = self._m.tool_calls.labels(*self._labels, name)
        return child

    def error(self, code: str):
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self._m.errors.labels(*self._labels, code)
        return child


class LLMCalls:
    """``agentops_llm_calls_total`` and ``agentops_llm_call_failures_total{reason}`` of the served
    models whose router counts its LLM calls (``llm_call_counts``: ``agent/llm/router.py``), read
    at scrape time. ``served`` returns (agent, version, router) for each model served now; every
    reason is exported, at 0 until it happens, so the first failure is a visible increase."""

    def __init__(self, environment: str):
        self.environment = environment
        self.served: Callable[[], Iterable[tuple[str, str, Any]]] = lambda: ()

    def collect(self):
        calls = CounterMetricFamily("agentops_llm_calls", "LLM calls made by the served LLM agents.",
                                    labels=["agent", "environment", "version"])
        failures = CounterMetricFamily(
            "agentops_llm_call_failures", "LLM calls that failed (answered with a hand-over), by reason.",
            labels=["agent", "environment", "version", "reason"])
        for agent, version, router in self.served():
            counts = getattr(router, "llm_call_counts", None)
            if not callable(counts):
                continue
            made, failed = counts()
            calls.add_metric([agent, self.environment, version], made)
            for reason in FAILURE_REASONS:
                failures.add_metric([agent, self.environment, version, reason], failed.get(reason, 0))
        yield calls
        yield failures


class ServingMetrics:
    def __init__(self, environment: str, process_metrics: bool = True):
        self.environment = environment
        self.registry = r = CollectorRegistry()
        base = ["agent", "environment", "version"]
        self.requests = Counter(
            "agentops_requests",
            "Requests to /invocations by outcome.",
            [*base, "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "agentops_request_latency_seconds",
            "Server-side latency of /invocations requests.",
            base,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "agentops_tool_calls", "Predicted tool calls by tool.", [*base, "tool"], registry=r
        )
        self.escalations = Counter(
            "agentops_escalations", "Rows routed to the escalation tool.", base, registry=r
        )
        self.errors = Counter(
            "agentops_errors", "Failed requests by error code.", [*base, "error_code"], registry=r
        )
        self.rows = Counter("agentops_predicted_rows", "Rows predicted.", base, registry=r)
        self.model_info = Gauge(
            "agentops_model_info",
            "1 for each model version served now.",
            [*base, "role", "model_uri"],
            registry=r,
        )
        self.canary_share = Gauge(
            "agentops_canary_share",
            "Share of requests routed to the canary version.",
            ["agent", "environment"],
            registry=r,
        )
        self.traces = Counter(
            "agentops_traces",
            "Requests traced to MLflow (result: logged, dropped, failed).",
            ["environment", "reason", "result"],
            registry=r,
        )
        self.inference_log_rows = Counter(
            "agentops_inference_log_rows",
            "Rows written to (or dropped from) the inference log.",
            ["environment", "result"],
            registry=r,
        )
        self.rejections = Counter(
            "agentops_rejections",
            "Connections refused by the HTTP layer (reason: connections, header_timeout, "
            "body_timeout, header_too_large).",
            ["environment", "reason"],
            registry=r,
        )
        self.llm_calls = LLMCalls(environment)
        r.register(self.llm_calls)
        if process_metrics:
            ProcessCollector(registry=r)
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._lock = threading.Lock()

    def watch_exporter(self, agent: str, alive: Callable[[], bool]) -> None:
        """``agentops_trace_exporter_up``: 1 while the trace exporter (``tracing.py``) runs, read
        at scrape time. It cannot be restarted from a confined process: 0 means traces, flagged
        requests and shadow evidence stop reaching MLflow until the serving process restarts."""
        Gauge("agentops_trace_exporter_up", "1 while the trace exporter (the process that writes "
              "to MLflow for this serving process) runs; 0 when it died",
              ["agent", "environment"], registry=self.registry,
              ).labels(agent, self.environment).set_function(lambda: 1.0 if alive() else 0.0)

    def series(self, agent: str, version: str) -> _ModelSeries:
        key = (agent, version)
        s = self._series.get(key)
        if s is None:
            with self._lock:
                s = self._series.get(key)
                if s is None:
                    s = self._series[key] = _ModelSeries(self, agent, version)
        return s

    def observe(
        self,
        agent: str,
        version: str,
        status: int,
        latency_s: float,
        error_code: str | None = None,
        tools: Iterable[str] | None = None,
        escalations: int = 0,
        rows: int = 0,
    ) -> None:
        s = self.series(agent, version)
        s.requests[outcome_of(status)].inc()
        s.latency.observe(latency_s)
        if error_code:
            s.error(error_code).inc()
        if tools is not None:
            tools = list(tools)
            if len(tools) == 1:
                s.tool(str(tools[0])).inc()
            else:
                for tool, n in Tally(map(str, tools)).items():
                    s.tool(tool).inc(n)
        if escalations:
            s.escalations.inc(escalations)
        if rows:
            s.rows.inc(rows)

    def set_models(
        self, models: list[tuple[str, str, str, str]], canary: tuple[str, float]
    ) -> None:
        """``models``: (agent, version, role, model_uri) served now; ``canary``: (agent, share)."""
        with self._lock:
            self.model_info.clear()
            for agent, version, role, uri in models:
                self.series_unlocked(agent, version)
                self.model_info.labels(agent, self.environment, version, role, uri).set(1)
            self.canary_share.clear()
            self.canary_share.labels(canary[0], self.environment).set(canary[1])

    def series_unlocked(self, agent: str, version: str) -> _ModelSeries:
        key = (agent, version)
        if key not in self._series:
            self._series[key] = _ModelSeries(self, agent, version)
        return self._series[key]

    def trace(self, reason: str, result: str) -> None:
        self.traces.labels(self.environment, reason, result).inc()

    def reject(self, reason: str) -> None:
        self.rejections.labels(self.environment, reason).inc()

    def log_rows(self, result: str, n: int) -> None:
        self.inference_log_rows.labels(self.environment, result).inc(n)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
