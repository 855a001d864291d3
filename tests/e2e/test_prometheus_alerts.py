"""The shipped alert rules in a real Prometheus and Alertmanager, against a real serving process.

A tiny pyfunc model that fails on the word 'boom' is registered in a temporary SQLite MLflow store
and served by ``LocalProcessDeployer`` (ephemeral port). Prometheus (Debian's ``prometheus``
package) runs on loopback with a temporary storage folder, scraping the server every second and
evaluating ``deploy/prometheus/rules.yml`` every second, with every ``for:`` cut to 5 s (the rules
themselves are read from the shipped file, not repeated here). Alertmanager runs with the shipped
``alertmanager.yml``, its webhook URLs pointed at a receiver in this test. Healthy traffic must
raise nothing; failing traffic must fire ``AgentHighErrorRate`` with the agent, environment and
version of the failing model, and Alertmanager must deliver it to the ``oncall`` receiver.

The shipped files' static checks (promtool, amtool) are tests/deploy/test_prometheus_rules.py.
Skipped, with the reason, without the ``prometheus`` binary (``apt-get install prometheus
prometheus-alertmanager``; ``.ci/run`` installs them). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
MODEL_NAME = "e2e-alerting-agent"
ENVIRONMENT = "e2e"
MODEL_CODE = """
import mlflow
import pandas as pd


class Router(mlflow.pyfunc.PythonModel):
    agent_name = "e2e_agent"

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = [str(t) for t in model_input["text"]]
        if any("boom" in t for t in texts):
            raise RuntimeError("the model fails on 'boom'")
        return pd.DataFrame({"tool": ["track_order"] * len(texts), "confidence": [0.9] * len(texts)})


mlflow.models.set_model(Router())
"""


# --------------------------------------------------------------------------------------------
# Helpers


def _rfc3339(stamp: str) -> float:
    """Prometheus's timestamps (``2026-12-03T08:50:01.123456789Z``, or with an offset) in seconds."""
    from datetime import datetime

    main, _, rest = stamp.partition(".")
    digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
    zone = rest[len(digits):] if rest else stamp[19:]
    zone = "+00:00" if zone in ("Z", "") else zone
    return datetime.fromisoformat(main[:19] + zone).timestamp() + float(f"0.{digits or 0}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], object], timeout: float, interval: float = 0.25):
    """``check()``'s first truthy value, polling for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
            last_error = e
        time.sleep(interval)
    pytest.fail(f"{what} within {timeout:.0f}s (last error: {last_error!r})")


def get_json(base: str, path: str, **params) -> dict:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        conn.request("GET", path + query)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise ValueError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def test_rules(for_duration: str = "5s") -> str:
    """The shipped rules with every ``for:`` replaced by ``for_duration``."""
    text = (PROMETHEUS_DIR / "rules.yml").read_text()
    changed, n = re.subn(r"(?m)^(\s+for:\s*)\S+", rf"\g<1>{for_duration}", text)
    assert n >= 3, "expected a for: on every alert in rules.yml"
    return changed


test_rules.__test__ = False  # a helper, not a test


def test_alertmanager_config(webhook: str) -> str:
    """The shipped Alertmanager config with its webhooks pointed at ``webhook`` (same paths) and
    its waits cut to a second."""
    text = (PROMETHEUS_DIR / "alertmanager.yml").read_text()
    text, n = re.subn(r"(url:\s*)https?://[^/\s]+", rf"\g<1>{webhook}", text)
    assert n >= 1, "expected webhook receivers in alertmanager.yml"
    text = re.sub(r"(?m)^(\s+group_wait:\s*)\S+", r"\g<1>1s", text)
    return re.sub(r"(?m)^(\s+group_interval:\s*)\S+", r"\g<1>1s", text)


test_alertmanager_config.__test__ = False


@contextlib.contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


class Webhook:
    """Collects what Alertmanager posts: [(path, payload)]."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append((self.path, json.loads(body or b"{}")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Traffic:
    """Requests in the background at ``rate`` per second; ``failing`` share of them fail."""

    def __init__(self, url: str, rate: float = 20.0):
        self.url, self.rate = urllib.parse.urlsplit(url), rate
        self.failing = 0.0
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
        i = 0
        while not self._stop.wait(1.0 / self.rate):
            i += 1
            text = "boom" if (i % 100) < self.failing * 100 else "where is my order"
            body = json.dumps({"inputs": [{"text": text, "customer_id": f"C{i % 50}"}]})
            try:
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                self.statuses.append(response.status)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)

    def stop(self):
        self._stop.set()
        self._thread.join(15)


def alerts(prometheus: str, name: str) -> list[dict]:
    return [a for a in get_json(prometheus, "/api/v1/alerts")["data"]["alerts"]
            if a["labels"]["alertname"] == name]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The end-to-end test


@pytest.fixture
def served_model(tmp_path, monkeypatch, mlflow_db):
    """A LocalProcessDeployer serving the tiny model as version 1 in ``e2e``."""
    import mlflow

    from agentops_pipelines.resources.deployers import LocalProcessDeployer

    tracking = mlflow_db
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the server inherits them
        monkeypatch.setenv(name, tracking)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)  # another test may have left its own
    deployer = LocalProcessDeployer(
        state_dir=str(tmp_path / "serving"), health_timeout_s=90, trace_sample_rate=0.0
    )
    try:
        experiment = mlflow.create_experiment(
            "e2e-alerts", artifact_location=str(tmp_path / "artifacts")
        )
        code = tmp_path / "router.py"
        code.write_text(MODEL_CODE)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=["pandas"],
                                    registered_model_name=MODEL_NAME)  # fmt: skip
        yield deployer.deploy(ENVIRONMENT, f"models:/{MODEL_NAME}/1", "1")
    finally:
        deployer.stop(ENVIRONMENT)
        mlflow.set_tracking_uri(None)  # (it also unsets MLFLOW_TRACKING_URI: only at the end)
        mlflow.set_registry_uri("")


@pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed (apt-get install prometheus)"
)
def test_high_error_rate_fires_with_the_version_labels(served_model, tmp_path):
    target = urllib.parse.urlsplit(served_model.url).netloc
    (tmp_path / "rules.yml").write_text(test_rules("5s"))
    webhook = Webhook() if ALERTMANAGER else None
    am_port = free_port()
    alerting = (
        f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
        if webhook
        else ""
    )
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {tmp_path / 'rules.yml'}\n{alerting}"
        "scrape_configs:\n  - job_name: agentops-serving\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    prometheus = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        if webhook is not None:
            stack.callback(webhook.close)
            (tmp_path / "alertmanager.yml").write_text(test_alertmanager_config(webhook.url))
            stack.enter_context(running(
                [ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}",
                 f"--storage.path={tmp_path / 'alertmanager'}",
                 f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                tmp_path / "alertmanager.log",
            ))  # fmt: skip
        process = stack.enter_context(running(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            tmp_path / "prometheus.log",
        ))  # fmt: skip

        def ready():
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            return get_json(prometheus, "/api/v1/status/buildinfo")["status"] == "success"

        wait_until("Prometheus did not start", ready, 30)

        # Healthy traffic: scraped and evaluated, and nothing fires.
        traffic = Traffic(served_model.url)
        stack.callback(traffic.stop)
        labels = {"agent": "e2e_agent", "environment": ENVIRONMENT, "version": "1"}
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())

        def scraped_requests() -> float:
            result = get_json(prometheus, "/api/v1/query",
                              query=f"sum(agentops_requests_total{{{selector}}})")["data"]["result"]  # fmt: skip
            return float(result[0]["value"][1]) if result else 0.0

        wait_until("the serving process was not scraped", lambda: scraped_requests() > 20, 30)
        healthy_since = time.monotonic()

        def rule_evaluated_after(t: float) -> bool:
            for group in get_json(prometheus, "/api/v1/rules")["data"]["groups"]:
                for rule in group["rules"]:
                    if rule["name"] == "AgentHighErrorRate":
                        assert rule["health"] == "ok", rule
                        return _rfc3339(rule["lastEvaluation"]) > t
            return False

        scraped_at = time.time()  # an evaluation after this one saw the healthy traffic
        wait_until("AgentHighErrorRate was not evaluated", lambda: rule_evaluated_after(scraped_at), 15)
        time.sleep(max(0.0, healthy_since + 7 - time.monotonic()))  # longer than for: 5s
        assert alerts(prometheus, "AgentHighErrorRate") == []
        assert set(traffic.statuses) == {200}

        # Failing traffic: a third of the requests fail.
        traffic.failing = 0.34
        firing = wait_until(
            "AgentHighErrorRate did not fire",
            lambda: [a for a in alerts(prometheus, "AgentHighErrorRate") if a["state"] == "firing"],
            60,
        )
        assert len(firing) == 1
        alert = firing[0]
        assert {k: alert["labels"][k] for k in (*labels, "severity")} == labels | {
            "severity": "page"
        }
        assert alert["annotations"]["summary"].startswith("e2e_agent version 1 in e2e: ")
        assert 0.05 < float(alert["value"]) < 0.4  # the error ratio (5m window: healthy part too)
        assert alerts(prometheus, "AgentHighLatencyP99") == []
        assert 500 in traffic.statuses

        # Alertmanager routes the page to the on-call receiver.
        if webhook is not None:
            path, payload = wait_until(
                "Alertmanager did not deliver the alert",
                lambda: next(
                    (
                        r
                        for r in webhook.received
                        if any(
                            a["labels"]["alertname"] == "AgentHighErrorRate" for a in r[1]["alerts"]
                        )
                    ),
                    None,
                ),  # fmt: skip
                60,
            )
            assert path == "/hooks/oncall" and payload["receiver"] == "oncall"
            delivered = next(
                a for a in payload["alerts"] if a["labels"]["alertname"] == "AgentHighErrorRate"
            )
            assert delivered["status"] == "firing"
            assert {k: delivered["labels"][k] for k in labels} == labels
