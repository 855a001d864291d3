"""Prometheus's HTTP API: the alerts that fire, for the rollback sensor."""

from __future__ import annotations

import json
import urllib.request

import dagster as dg


class PrometheusUnreachable(ConnectionError):
    pass


class PrometheusResource(dg.ConfigurableResource):
    url: str = ""  # e.g. http://127.0.0.1:9090; empty: no Prometheus configured
    timeout_seconds: float = 5.0

    def firing_alerts(self) -> list[dict]:
        """Alerts in state ``firing`` (pending ones are not yet alerts)."""
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"{self.url.rstrip('/')}/api/v1/alerts", timeout=self.timeout_seconds) as resp:
                payload = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise PrometheusUnreachable(f"Prometheus at {self.url} is unreachable: {type(exc).__name__}: {exc}") from exc
        if payload.get("status") != "success":
            raise PrometheusUnreachable(f"Prometheus at {self.url} answered {payload.get('status')}: {payload.get('error')}")
        return [a for a in payload["data"]["alerts"] if a.get("state") == "firing"]
