"""Sensors against a real MLflow (SQLite store): cursors, run keys, refusals, unreachable services."""

import json
import time

import dagster as dg
import mlflow
import pytest

from agentops_pipelines import governance as gov
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.sensors import mlflow_runs
from tests.helpers import AGENT, register_versions


def sensor(defs, name):
    return next(s for s in defs.sensors if s.name == f"{AGENT}_{name}")


def evaluate(defs, instance, name, cursor=None, **resource_overrides):
    resources = {**defs.resources, **resource_overrides}
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensor(defs, name)(ctx)
    if isinstance(result, dg.SkipReason):
        return [], ctx.cursor, result.skip_message
    if isinstance(result, dg.SensorResult):
        skip = result.skip_reason.skip_message if result.skip_reason else None
        return list(result.run_requests or []), result.cursor or ctx.cursor, skip
    raise AssertionError(f"unexpected sensor result {result!r}")


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def log_runs(tracking_uri, n, *, with_model=True, end_time=None, experiment=AGENT, tags=None):
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment(experiment)
    client = mlflow.MlflowClient(tracking_uri)
    ids = []
    for i in range(n):
        with mlflow.start_run(experiment_id=exp.experiment_id, tags=tags or {}) as run:
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


def test_approval_sensor_promotes_allowed_and_refuses_the_rest(defs, instance, tracking_uri, monkeypatch):
    monkeypatch.setenv("AGENTOPS_APPROVERS", "alice,bob")
    audit = defs.resources["audit"]
    client = defs.resources["mlflow_store"].configure()
    v_ok, v_mallory, v_frozen, v_rejected = register_versions(tracking_uri, 4)
    client.set_model_version_tag(AGENT, v_frozen, gov.FROZEN, "true")
    gov.decide(client, audit, AGENT, v_ok, "approved", "alice", "metrics look right")
    gov.decide(client, audit, AGENT, v_mallory, "approved", "mallory", "ship it")
    gov.decide(client, audit, AGENT, v_frozen, "approved", "bob", "")
    gov.decide(client, audit, AGENT, v_rejected, "rejected", "bob", "escalation recall too low")

    requests, cursor, _ = evaluate(defs, instance, "approval_sensor")
    assert [r.run_key.split("-")[1] for r in requests] == [v_ok]
    assert requests[0].run_config["ops"][f"{AGENT}_promote"]["config"] == {"version": v_ok, "reviewer": "alice"}
    assert requests[0].tags["agentops/environment"] == "prod"

    mallory = client.get_model_version(AGENT, v_mallory).tags
    assert mallory[gov.STATUS] == "refused" and "'mallory' is not among the approvers" in mallory[gov.REFUSAL]
    assert "frozen" in client.get_model_version(AGENT, v_frozen).tags[gov.REFUSAL]
    actions = [(e.action, e.version, e.actor) for e in audit.entries(AGENT)]
    assert ("approval_refused", v_mallory, "approval_sensor") in actions
    assert ("approval_refused", v_frozen, "approval_sensor") in actions
    assert ("reject", v_rejected, "bob") in actions
    assert actions.count(("approve", v_ok, "alice")) == 1  # the CLI's entry, not repeated by the sensor

    # The next tick (or a restarted daemon with the same cursor) repeats nothing.
    again, _, skip = evaluate(defs, instance, "approval_sensor", cursor=cursor)
    assert again == [] and skip == "no new decision"


def test_approval_in_the_mlflow_ui_is_audited_by_the_sensor(defs, instance, tracking_uri, monkeypatch):
    monkeypatch.setenv("AGENTOPS_APPROVERS", "alice")
    client = defs.resources["mlflow_store"].configure()
    (v,) = register_versions(tracking_uri, 1)
    for key, value in {gov.STATUS: "approved", gov.REVIEWER: "alice", gov.DECIDED_AT: gov.now()}.items():
        client.set_model_version_tag(AGENT, v, key, value)  # what a reviewer does in the MLflow UI
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert len(requests) == 1
    entries = defs.resources["audit"].entries(AGENT, version=v)
    assert [(e.action, e.actor, e.details["source"]) for e in entries] == [("approve", "alice", "mlflow model version tags")]


def test_no_approvers_configured_means_nothing_is_promoted(defs, instance, tracking_uri, monkeypatch):
    monkeypatch.delenv("AGENTOPS_APPROVERS", raising=False)
    client = defs.resources["mlflow_store"].configure()
    (v,) = register_versions(tracking_uri, 1)
    gov.decide(client, defs.resources["audit"], AGENT, v, "approved", "alice", "")
    requests, _, _ = evaluate(defs, instance, "approval_sensor")
    assert requests == []
    assert "no approvers are configured" in client.get_model_version(AGENT, v).tags[gov.REFUSAL]


def test_prometheus_sensor_skips_clearly(defs, instance):
    from agentops_pipelines.resources.prometheus import PrometheusResource

    _, _, skip = evaluate(defs, instance, "prometheus_alert_sensor", prometheus=PrometheusResource(url=""))
    assert "no Prometheus configured" in skip
    cursor = json.dumps(["rollback-x-y"])
    _, kept, skip = evaluate(defs, instance, "prometheus_alert_sensor", cursor=cursor,
                             prometheus=PrometheusResource(url="http://127.0.0.1:9", timeout_seconds=1))
    assert "unreachable" in skip and kept == cursor
