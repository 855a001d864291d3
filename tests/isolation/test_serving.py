"""Two agents served side by side on this machine: real serving processes on loopback, real
MLflow on SQLite, the real audit log. Deploying, promoting, rolling back and freezing one agent, and
an alert about it, never touch the other; their processes, ports, admin tokens and inference logs
are their own. Both agents register the same version numbers (1, 2): only the agent tells them
apart, as in production."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from agentops_pipelines.resources.deployers import DeploymentError
from agentops_pipelines.resources.prometheus import PrometheusResource
from tests.e2e.test_prometheus_alerts import Traffic
from tests.helpers import promoted, register_versions
from tests.isolation.conftest import A, B

pytestmark = pytest.mark.slow
FAST = {"canary_share": 0.5, "bake_seconds": 3.0, "check_interval_seconds": 1.0, "min_requests": 5}


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        return json.loads(resp.read())


def admin_stats(url: str, token: str) -> int:
    request = urllib.request.Request(f"{url}/admin/stats", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def evaluate(defs, instance, agent: str, name: str, **resources):
    """(run requests, skip message) of one tick of ``agent``'s sensor ``name``, as the daemon runs it."""
    sensor = next(s for s in defs.sensors if s.name == f"{agent}_{name}")
    ctx = dg.build_sensor_context(instance=instance, definitions=defs, resources={**defs.resources, **resources})
    data = sensor.evaluate_tick(ctx)
    return list(data.run_requests or []), data.skip_message


class AlertsAPI:
    """Prometheus's ``/api/v1/alerts`` answering the given alerts (Prometheus does not run here;
    tests/e2e/test_rollback_loop.py runs the real one for one agent)."""

    def __init__(self, alerts: list[dict]):
        body = json.dumps({"status": "success", "data": {"alerts": alerts}}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def alert(agent: str, version: str) -> dict:
    return {"state": "firing", "activeAt": "2026-12-01T00:00:00Z", "annotations": {"summary": "5xx"},
            "labels": {"alertname": "AgentHighErrorRate", "agent": agent, "environment": "prod",
                       "version": version, "severity": "page"}}


def test_two_agents_side_by_side_each_lifecycle_touches_only_its_own(defs, instance, approvers):
    store, audit = defs.resources["mlflow_store"], defs.resources["audit"].store
    deployer, client = defs.resources["deployer"], defs.resources["mlflow_store"].configure()
    a1, a2 = register_versions(store.tracking_uri, 2, name=A, audit=audit)
    b1, b2 = register_versions(store.tracking_uri, 2, name=B, audit=audit)
    assert (a1, a2) == (b1, b2) == ("1", "2")
    for agent in (A, B):  # both serve version 1 in prod, promoted earlier
        promoted(audit, "1", agent)
        client.set_registered_model_alias(agent, "champion", "1")
        deployer.deploy("prod", f"models:/{agent}/1", "1")

    # -- their own processes, ports, admin tokens and inference logs
    a, b = deployer.status("prod", agent=A), deployer.status("prod", agent=B)
    assert (a.agent, b.agent) == (A, B) and a.url != b.url and a.pid != b.pid
    assert health(a.url)["model_uri"] == f"models:/{A}/1" and health(b.url)["model_uri"] == f"models:/{B}/1"
    token = {agent: deployer._token_file(deployer.files("prod", agent)).read_text().strip() for agent in (A, B)}
    assert token[A] != token[B]
    assert admin_stats(a.url, token[A]) == 200 and admin_stats(b.url, token[A]) in (401, 403)
    assert deployer.inference_log_path("prod", f"models:/{A}/1") != deployer.inference_log_path("prod", f"models:/{B}/1")
    with pytest.raises(DeploymentError, match="several agents serve here"):
        deployer.status("prod")  # a call that does not name its agent gets none

    # -- a new registration of B goes to dev even though A serves the same version number there
    deployer.deploy("dev", f"models:/{A}/1", "1")
    for agent in (A, B):
        defs.resources["lake"].write_record(f"{agent}/registered_version", {"version": "1"}, run_id="fixture")
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey([agent, "registered_version"])))
    assert "already serves in dev" in evaluate(defs, instance, A, "dev_deploy_sensor")[1]
    (dev_b,) = evaluate(defs, instance, B, "dev_deploy_sensor")[0]
    assert dev_b.tags["agentops/rollout"] == f"{B}/dev"

    def b_unchanged():
        now = deployer.status("prod", agent=B)
        assert (now.version, now.pid, now.url, now.canary_version) == ("1", b.pid, b.url, None)
        assert str(client.get_registered_model(B).aliases["champion"]) == "1"

    def b_entries():
        return [(e.action, e.version, e.environment) for e in audit.entries(B)]

    b_log = b_entries()

    # -- promote A's version 2 (staging, then the prod canary) while B serves traffic
    approvers.decide(client, a2, "alice", agent=A)
    requests, _ = evaluate(defs, instance, A, "approval_sensor")
    assert [r.tags["agentops/agent"] for r in requests] == [A]
    assert evaluate(defs, instance, B, "approval_sensor")[0] == []  # alice's decision is not B's
    traffic = {agent: Traffic(d.url, rate=20.0) for agent, d in ((A, a), (B, b))}
    try:
        job = defs.resolve_job_def(f"{A}_promotion_job")
        result = job.execute_in_process(instance=instance, raise_on_error=False, run_config={
            "ops": {f"{A}_promote": {"config": {"version": a2, "target": "prod", **FAST}}}})
    finally:
        for t in traffic.values():
            t.stop()
    assert result.success
    assert deployer.status("prod", agent=A).version == "2" and deployer.status("staging", agent=A).version == "2"
    assert deployer.status("staging", agent=B) is None  # A's staging deploy started no process of B
    assert traffic[B].statuses and set(traffic[B].statuses) == {200}
    b_unchanged()

    # -- an alert about A (version 2 in prod) rolls back A only; one about B, B only. Two alerts
    # firing for the same bad version (error rate and online scorer failures) roll it back once.
    second = alert(A, "2")
    second["labels"] = {**second["labels"], "alertname": "AgentOnlineScorerFailures"}
    api = AlertsAPI([alert(A, "2"), second])
    try:
        prometheus = PrometheusResource(url=api.url)
        (rollback,) = evaluate(defs, instance, A, "prometheus_alert_sensor", prometheus=prometheus)[0]
        assert rollback.tags["agentops/agent"] == A
        assert evaluate(defs, instance, B, "prometheus_alert_sensor", prometheus=prometheus)[0] == []
    finally:
        api.close()
    api = AlertsAPI([alert(B, "1")])  # B serves "1" too: only the agent label tells them apart
    try:
        prometheus = PrometheusResource(url=api.url)
        assert evaluate(defs, instance, A, "prometheus_alert_sensor", prometheus=prometheus)[0] == []
        assert len(evaluate(defs, instance, B, "prometheus_alert_sensor", prometheus=prometheus)[0]) == 1
    finally:
        api.close()
    result = defs.resolve_job_def(f"{A}_rollback_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config=rollback.run_config)
    assert result.success
    assert deployer.status("prod", agent=A).version == "1"
    assert str(client.get_registered_model(A).aliases["champion"]) == "1"
    b_unchanged()

    # -- drift freezes A's serving version and retrains A; B's drift sensor sees nothing
    day = (date.today() - timedelta(days=1)).isoformat()
    # A report as drift_report leaves it: its record in A's lake table, then its event.
    defs.resources["lake"].write_record(f"{A}/drift_report", {
        "drift_share": 0.9, "serving_version": "1", "environment": "prod", "drifted_columns": ["text"],
        "verdict": "drift", "rows": 500}, run_id="drift-fixture", partition=day)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey([A, "drift_report"]),
                                                                partition=day))
    assert len(evaluate(defs, instance, A, "drift_sensor")[0]) == 1
    assert evaluate(defs, instance, B, "drift_sensor")[0] == []
    assert client.get_model_version(A, "1").tags.get("frozen") == "true"
    assert client.get_model_version(B, "1").tags.get("frozen") is None
    b_unchanged()

    # -- B's audit entries: what B's own history was, nothing of A's lifecycle
    assert b_entries() == b_log
    actions_a = [e.action for e in audit.entries(A)]
    assert {"promote", "rollback", "freeze"} <= set(actions_a)
    assert audit.verify().ok
