"""Drift on production traffic: serving logs requests, the report scores them, the sensor acts."""

import json
from datetime import UTC, date, datetime

import dagster as dg
import pytest

from agentops_pipelines.data.generator import generate_requests
from agentops_pipelines.vocabulary import VersionTag as gov
from tests.helpers import AGENT, invoke, metadata, run_job

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


def send_traffic(url: str, day: date, n: int, drift: float) -> None:
    requests = generate_requests(day, n=n, drift=drift)[["text", "customer_id"]].to_dict("records")
    for i in range(0, n, 50):
        invoke(url, requests[i:i + 50])


@pytest.mark.slow
def test_drifting_traffic_freezes_the_version_and_retrains(defs, instance):
    for day in DAYS:
        assert run_job(defs, instance, "ingest", partition_key=day).success
    assert run_job(defs, instance, "training").success
    version = metadata(instance, "registered_version")["version"]
    deployer = defs.resources["deployer"]
    today = datetime.now(UTC).date().isoformat()
    drift_job = defs.resolve_job_def(f"{AGENT}_drift_job")

    def report(environment: str) -> dict:
        config = {"ops": {f"{AGENT}__drift_report": {"config": {"environment": environment}}}}
        assert drift_job.execute_in_process(instance=instance, partition_key=today, run_config=config).success
        return metadata(instance, "drift_report")

    # A usual day in staging: no drift.
    deployer.deploy("staging", f"models:/{AGENT}/{version}", version)
    send_traffic(deployer.status("staging").url, date(2026, 11, 4), 400, drift=0.0)
    deployer.stop("staging")  # a clean stop flushes the inference log
    usual = report("staging")
    assert usual["rows"] == 400 and usual["serving_version"] == version
    assert usual["dataset_drift"] is False
    # the reference for chosen tools is the version's own choices on its training requests
    assert "tool" not in usual["drifted_columns"], usual["columns"]

    sensor = next(s for s in defs.sensors if s.name == f"{AGENT}_drift_sensor")
    ctx = dg.build_sensor_context(instance=instance, resources=defs.resources)
    result = sensor(ctx)
    assert not result.run_requests and "under" in result.skip_reason.skip_message

    # The world drifts: a new day's customers (newer accounts, more failed payments and refunds)
    # reach the online store, and their requests change (longer, angrier, new products).
    drifted_day = {"ops": {f"{AGENT}__dataset": {"config": {"drift": 0.9}}}}
    assert run_job(defs, instance, "ingest", partition_key="2026-11-05", run_config=drifted_day).success
    deployer.deploy("prod", f"models:/{AGENT}/{version}", version)
    send_traffic(deployer.status("prod").url, date(2026, 11, 5), 600, drift=0.9)
    deployer.stop("prod")
    drifted = report("prod")
    assert drifted["rows"] == 600 and drifted["dataset_drift"] is True, drifted["columns"]
    assert drifted["drift_share"] >= 0.5
    assert "text.length" in drifted["drifted_columns"]
    # which columns drifted and by how much, readable and plotted on the asset page
    by_column = drifted["drift_by_column"]
    assert by_column["text.length"]["drifted"] and by_column["text.length"]["strength"] >= 1
    assert not any(c["drifted"] for c in by_column.values() if c["strength"] < 1)
    assert "**text.length**" in drifted["drifted"] and "the threshold" in drifted["drifted"]
    assert drifted["plot"].count("](data:image/png;base64,") == 1
    assert usual["drifted"] == "No column drifted." or "**tool**" not in usual["drifted"]

    result = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=result.cursor))
    (request,) = result.run_requests
    assert request.tags["agentops/frozen_version"] == version
    assert "text.length" in request.tags["agentops/drifted_features"].split(",")
    client = defs.resources["mlflow_store"].configure()
    tags = client.get_model_version(AGENT, version).tags
    assert tags[gov.FROZEN] == "true" and "drift share" in tags["frozen_reason"]
    assert [e.action for e in defs.resources["audit"].entries(AGENT)] == ["register", "freeze"]
    run = client.get_run(client.get_model_version(AGENT, version).run_id)
    assert any(k.startswith("drift_share_prod") for k in run.data.metrics)
    drift_artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "drift")]
    assert any(a.endswith(".html") for a in drift_artifacts) and any(a.endswith(".png") for a in drift_artifacts)
    # The next tick repeats nothing.
    again = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=result.cursor))
    assert isinstance(again, dg.SkipReason) or not again.run_requests
    assert json.loads(json.dumps(request.tags))  # plain strings, fit for run tags
