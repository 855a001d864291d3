"""Prometheus's HTTP API, the one client the project uses (alerts for the rollback sensor,
instant queries for Kubernetes canary stats). Never through HTTP(S)_PROXY: Prometheus is ours."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class PrometheusUnreachable(ConnectionError):
    """No answer, or an answer that is not a successful API response; the message says which."""


@dataclass(frozen=True)
class PrometheusAPI:
    url: str  # e.g. http://127.0.0.1:9090
    timeout_seconds: float = 5.0

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """The decoded body of ``GET <url><path>?<params>`` whose ``status`` is ``success``."""
        address = f"{self.url.rstrip('/')}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(address, timeout=self.timeout_seconds) as response:
                body = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise PrometheusUnreachable(f"Prometheus at {self.url} is unreachable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            status = body.get("status") if isinstance(body, dict) else type(body).__name__
            error = body.get("error") if isinstance(body, dict) else ""
            raise PrometheusUnreachable(f"Prometheus at {self.url} answered {status}: {error}")
        return body

    def firing_alerts(self) -> list[dict]:
        """Alerts in state ``firing`` (pending ones are not yet alerts)."""
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"] if a.get("state") == "firing"]

    def query(self, promql: str) -> dict[str, Any]:
        """An instant query's whole response body."""
        return self.get("/api/v1/query", query=promql)
