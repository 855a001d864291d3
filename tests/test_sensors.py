"""Sensors against a real MLflow (SQLite store): cursors, run keys, refusals, unreachable services."""

import json
import time

import mlflow
import pytest

from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.sensors import mlflow_runs
from tests.helpers import AGENT, evaluate, experiment_beside_store


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def log_runs(tracking_uri, n, *, with_model=True, end_time=None, experiment=AGENT, tags=None):
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = experiment_beside_store(tracking_uri, experiment)
    client = mlflow.MlflowClient(tracking_uri)
    ids = []
    for i in range(n):
        with mlflow.start_run(experiment_id=experiment_id, tags=tags or {}) as run:
            mlflow.log_param("i", i)
            if with_model:
                mlflow.pyfunc.log_model(name="agent", python_model=_Echo(), pip_requirements=["mlflow"])
        if end_time is not None:
            client.set_terminated(run.info.run_id, "FINISHED", end_time=end_time)
        ids.append(run.info.run_id)
    return ids


@pytest.fixture
def tracking_uri(defs):
    return defs.resources["mlflow_store"].configure() and defs.resources["mlflow_store"].tracking_uri


def test_mlflow_run_sensor_picks_up_each_run_once_across_pages(defs, instance, tracking_uri, monkeypatch):
    monkeypatch.setattr(mlflow_runs, "PAGE_SIZE", 4)  # many pages from a few runs
    tie = int(time.time() * 1000) - 60_000  # a minute ago: runs logged later end after it
    first = log_runs(tracking_uri, 6, end_time=tie)  # six runs ending in the same millisecond
    ignored = log_runs(tracking_uri, 1, with_model=False) + log_runs(tracking_uri, 1, tags={"agentops.dagster_run_id": "x"})
    requests, cursor, _ = evaluate(defs, instance, "mlflow_run_sensor")
    assert sorted(r.run_key for r in requests) == sorted(first)
    assert not set(ignored) & {r.run_key for r in requests}
    config = requests[0].run_config["ops"][f"{AGENT}__evaluation_report"]["config"]
    assert config["candidate_run_id"] == requests[0].run_key

    again, cursor2, skip = evaluate(defs, instance, "mlflow_run_sensor", cursor=cursor)
    assert again == [] and "no finished run" in skip

    late = log_runs(tracking_uri, 3, end_time=tie)  # more runs in the same millisecond, after the tick
    tagged = log_runs(tracking_uri, 2, experiment="someone-elses-experiment", tags={"agentops.agent": AGENT})
    requests, _, _ = evaluate(defs, instance, "mlflow_run_sensor", cursor=cursor2)
    assert sorted(r.run_key for r in requests) == sorted(late + tagged)


def test_mlflow_run_sensor_skips_and_keeps_its_cursor_when_mlflow_is_down(defs, instance, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cursor = json.dumps({"end_time": 123, "seen": {"abc": 123}})
    down = MlflowResource(tracking_uri="http://127.0.0.1:9")
    requests, new_cursor, skip = evaluate(defs, instance, "mlflow_run_sensor", cursor=cursor, mlflow_store=down)
    assert requests == [] and "unreachable" in skip and new_cursor == cursor


def test_prometheus_sensor_skips_clearly(defs, instance):
    from agentops_pipelines.resources.prometheus import PrometheusResource

    _, _, skip = evaluate(defs, instance, "prometheus_alert_sensor", prometheus=PrometheusResource(url=""))
    assert "no Prometheus configured" in skip
    cursor = json.dumps(["rollback-x-y"])
    _, kept, skip = evaluate(defs, instance, "prometheus_alert_sensor", cursor=cursor,
                             prometheus=PrometheusResource(url="http://127.0.0.1:9", timeout_seconds=1))
    assert "unreachable" in skip and kept == cursor


def test_prometheus_sensor_leaves_an_llm_outage_and_its_symptoms_to_a_person(defs, instance):
    """AgentLLMCallFailures (labelled rollback: "false") rolls nothing back, nor do the alerts of
    the same version that it causes (every request handed over fires AgentEscalationSpike)."""
    from agentops_pipelines.resources.prometheus import PrometheusResource
    from tests.isolation.test_serving import AlertsAPI

    def firing(name: str, **extra) -> dict:
        return {"state": "firing", "activeAt": "2026-12-01T00:00:00Z", "annotations": {},
                "labels": {"alertname": name, "agent": AGENT, "environment": "prod", "version": "3", **extra}}

    api = AlertsAPI([firing("AgentLLMCallFailures", rollback="false", severity="page"),
                     firing("AgentEscalationSpike", severity="warning")])
    try:
        requests, cursor, skip = evaluate(defs, instance, "prometheus_alert_sensor",
                                          prometheus=PrometheusResource(url=api.url))
    finally:
        api.close()
    assert requests == [], requests
    assert "AgentEscalationSpike for version 3 in prod: no rollback while AgentLLMCallFailures fires" in skip
    assert len(json.loads(cursor)) == 2  # both remembered: the symptom does not roll back later


def test_a_failing_shadow_challenger_neither_rolls_back_nor_holds_the_serving_version(defs, instance):
    """AgentShadowChallengerErrors, with the labels deploy/prometheus/rules.yml gives it, is for the
    challenger's reviewers: no rollback of what serves, and the serving version's own alerts still
    act (here: stale, as nothing serves in this test)."""
    import re

    import yaml

    from agentops_pipelines.resources.prometheus import PrometheusResource
    from agentops_pipelines.resources.settings import PROJECT_ROOT
    from tests.isolation.test_serving import AlertsAPI

    groups = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "rules.yml").read_text())["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == "AgentShadowChallengerErrors")
    grouped = {label.strip() for by in re.findall(r"by \(([^)]*)\)", rule["expr"]) for label in by.split(",")}
    assert grouped == {"agent", "environment", "challenger_version"}  # never the serving version's label
    shadow = {"state": "firing", "activeAt": "2026-12-01T00:00:00Z", "annotations": {},
              "labels": {"alertname": rule["alert"], "agent": AGENT, "environment": "prod",
                         "challenger_version": "5", **rule["labels"]}}
    primary = {"state": "firing", "activeAt": "2026-12-01T00:00:00Z", "annotations": {},
               "labels": {"alertname": "AgentHighErrorRate", "agent": AGENT, "environment": "prod",
                          "version": "4", "severity": "page"}}
    api = AlertsAPI([shadow, primary])
    try:
        requests, _, skip = evaluate(defs, instance, "prometheus_alert_sensor", prometheus=PrometheusResource(url=api.url))
    finally:
        api.close()
    assert requests == [], requests
    assert "AgentShadowChallengerErrors for version  in prod: is for a person (rollback: false)" in skip
    assert "AgentHighErrorRate for version 4 in prod is stale (serving: nothing)" in skip  # not held
