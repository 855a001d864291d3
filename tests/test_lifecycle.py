"""The whole lifecycle on the embedded defaults, in a temporary AGENTOPS_HOME."""

import dagster as dg
import mlflow
import pandas as pd
import pytest

from agentops_pipelines.partitions import daily
from tests.helpers import AGENT, dataset_config, invoke, latest_check, metadata, promoted, run_job

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


@pytest.mark.slow
def test_full_chain_registers_and_serves(defs, instance, home, tmp_path):
    for day in DAYS:
        assert run_job(defs, instance, "ingest", partition_key=day).success
    assert run_job(defs, instance, "training").success

    training = metadata(instance, "training_set")
    assert training["partitions"] == DAYS
    assert training["train_rows"] + training["holdout_rows"] == training["rows"] == 2400

    report = metadata(instance, "evaluation_report")
    assert report["gate_passed"] is True
    assert report["accuracy"] > 0.9
    assert 0 <= report["escalation_precision"] <= 1 and 0 <= report["escalation_recall"] <= 1
    assert "track_order" in report["per_tool"]

    reg = metadata(instance, "registered_version")
    client = mlflow.MlflowClient(f"sqlite:///{home}/mlflow/mlflow.db")
    mv = client.get_model_version(AGENT, reg["version"])
    assert mv.tags["approval_status"] == "pending"
    assert mv.tags["dataset_partitions"] == ",".join(DAYS)
    assert mv.tags["dagster_run_id"] and mv.tags["git_commit"]
    assert float(mv.tags["eval_accuracy"]) == pytest.approx(report["accuracy"], abs=1e-4)
    assert str(client.get_registered_model(AGENT).aliases["challenger"]) == reg["version"]
    run = client.get_run(mv.run_id)
    assert run.data.params["prompt_version"] == "1"
    first_prompt = mlflow.genai.load_prompt(f"prompts:/{AGENT}_answer/1")
    assert first_prompt.commit_message.startswith("first version")
    assert run.inputs.dataset_inputs, "the training set is logged as the run's input"
    traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=mv.run_id, return_type="list")
    assert traces, "validation requests are traced"
    span_names = {s.name for s in traces[0].data.spans}
    assert {"feature_lookup", "route"} <= span_names
    assert any(n.startswith("tool:") for n in span_names)
    artifacts = [a.path for a in client.list_artifacts(mv.run_id, "evaluation")]
    assert "evaluation/report.html" in artifacts
    assert {f"evaluation/{n}.png" for n in ("per_tool_f1", "confusion_matrix", "calibration", "latency")} <= set(artifacts)
    html = client.download_artifacts(mv.run_id, "evaluation/report.html", str(tmp_path))
    assert open(html).read().count('<img alt="') == 4

    # Numbers a person reads: rounded; four plots embedded as images on the asset page.
    assert report["accuracy"] == round(report["accuracy"], 4)
    assert report["latency_p99_ms"] == round(report["latency_p99_ms"], 2)
    assert report["plots"].count("](data:image/png;base64,") == 4
    assert report["champion_version"] == "none" and "delta_accuracy" not in report

    # A second candidate is compared with the first, now the champion: deltas everywhere.
    promoted(defs.resources["audit"].store, reg["version"])  # the champion: what serves in prod
    assert run_job(defs, instance, "training").success
    second = metadata(instance, "evaluation_report")
    assert second["champion_version"] == reg["version"]
    assert second["delta_accuracy"] == pytest.approx(second["accuracy"] - second["champion_accuracy"], abs=1e-4)
    assert "| accuracy |" in second["candidate_vs_champion"] and "champion_f1" in second["per_tool"]
    gate = latest_check(instance, "evaluation_report", "evaluation_gate")
    assert gate["champion_version"] == reg["version"]
    assert gate["delta_macro_f1"] == second["delta_macro_f1"] and gate["accuracy"] == second["accuracy"]
    reg = metadata(instance, "registered_version")
    mv = client.get_model_version(AGENT, reg["version"])

    assert run_job(defs, instance, "deploy", partition_key="dev",
                   run_config={"ops": {f"{AGENT}__deployment": {"config": {"version": reg["version"]}}}}).success
    dep = metadata(instance, "deployment")
    out = invoke(dep["url"], [{"text": "I forgot my password and can't log in", "customer_id": "C00010"}])
    pred = out["predictions"][0]
    assert pred["tool"] == "reset_password"
    # the served request acts (issue 12): the tool ran against the demo's system of record
    assert pred["outcome"] == "resolved" and "c00010@example.com" in pred["answer"]


@pytest.mark.slow
def test_bad_partition_is_stopped_by_its_gate(defs, instance, home, tmp_path):
    assert run_job(defs, instance, "ingest", partition_key="2026-11-01").success
    lake = defs.resources["lake"]
    good = lake.current_run_id(f"{AGENT}/dataset", "2026-11-01")

    bad = pd.DataFrame({"text": ["where is my order", "refund me", "x"],
                        "tool": ["track_order", "teleport_customer", "request_refund"],
                        "customer_id": ["C00001", None, "C00003"]})
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    result = run_job(defs, instance, "ingest", partition_key="2026-11-01",
                     run_config=dataset_config(source="file", path=str(path)))
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["known_labels"].passed
    assert "teleport_customer" in checks["known_labels"].metadata["failing_rows"].value
    assert not checks["no_nulls"].passed and not checks["text_length"].passed
    assert checks["schema"].passed
    # The rejected day is not a materialization: the step failed after staging, nothing
    # downstream ran, and the partition reads as failed; the lake keeps its last good version.
    assert result.get_asset_materialization_events() == []
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "known_labels" in failure.step_failure_data.error.message
    assert failure.step_failure_data.user_failure_data.metadata["rejected_file"].value.endswith(".rejected.json")
    key = dg.AssetKey([AGENT, "dataset"])
    assert instance.get_materialized_partitions(key) == {"2026-11-01"}  # the good run, earlier
    event = instance.get_latest_materialization_event(key)
    assert event.run_id != result.run_id
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
    status = get_and_update_asset_status_cache_value(instance, key, daily)
    assert daily.deserialize_subset(status.serialized_failed_partition_subset).get_partition_keys() == ["2026-11-01"]
    assert lake.current_run_id(f"{AGENT}/dataset", "2026-11-01") == good
    rejected = home / "lake" / AGENT / "dataset" / "2026-11-01" / f"{result.run_id}.rejected.json"
    assert rejected.exists()
    assert checks["known_labels"].metadata["rejected_file"].value == str(rejected)


@pytest.mark.slow
def test_a_new_day_that_fails_its_gates_is_missing_not_materialized(defs, instance, tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["where is my order"], "tool": ["teleport_customer"],
                  "customer_id": ["C00001"]}).to_csv(path, index=False)
    result = run_job(defs, instance, "ingest", partition_key="2026-11-05",
                     run_config=dataset_config(source="file", path=str(path)))
    assert not result.success
    key = dg.AssetKey([AGENT, "dataset"])
    assert "2026-11-05" not in instance.get_materialized_partitions(key)
    assert defs.resources["lake"].current_run_id(f"{AGENT}/dataset", "2026-11-05") is None
