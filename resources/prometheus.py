"""Prometheus as a Dagster resource: a thin shell over agentops_pipelines/prometheus_api.py."""

from __future__ import annotations

import dagster as dg

from agentops_pipelines.prometheus_api import PrometheusAPI, PrometheusUnreachable

__all__ = ["PrometheusResource", "PrometheusUnreachable"]


class PrometheusResource(dg.ConfigurableResource):
    url: str = ""  # e.g. http://127.0.0.1:9090; empty: no Prometheus configured
    timeout_seconds: float = 5.0

    def firing_alerts(self) -> list[dict]:
        """Alerts in state ``firing`` (pending ones are not yet alerts)."""
        return PrometheusAPI(self.url, self.timeout_seconds).firing_alerts()
