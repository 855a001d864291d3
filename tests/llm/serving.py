"""Helpers for the LLM serving tests: an LLM agent registered by the lifecycle, HTTP, traces."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import dagster as dg

#: Evaluation and trajectory minimums a 135M model can meet: a test agent whose gates let it pass.
PERMISSIVE = {
    "evaluation_report": {"config": {"evidently_report": False, "latency_samples": 5, "min_accuracy": 0.0}},
    "trajectory_evaluation": {"config": {"cases": 8, **{f"min_{s}": 0.0 for s in (
        "tool_choice", "argument_correctness", "steps_taken", "policy_compliance", "outcome_match",
        "answer_check")}}},
    "trained_agent": {"config": {"trace_samples": 0}},
}
DAY = "2026-11-01"


def latest(instance, agent: str, name: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey([agent, name]))
    assert event is not None, f"{agent}/{name} was never materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def register(defs, instance, agent: str, rows: int = 40, **trajectory_config) -> str:
    """Ingest a small day for ``agent`` and run its training job with permissive gates: the
    version the lifecycle registered."""
    ingest = defs.resolve_job_def(f"{agent}_ingest_job").execute_in_process(
        instance=instance, partition_key=DAY, raise_on_error=False,
        run_config={"ops": {f"{agent}__dataset": {"config": {"rows_per_day": rows}}}})
    assert ingest.success
    config = {**PERMISSIVE, "training_set": {"config": {"days": 1, "end_date": DAY}}}
    config["trajectory_evaluation"] = {"config": {**config["trajectory_evaluation"]["config"], **trajectory_config}}
    training = defs.resolve_job_def(f"{agent}_training_job").execute_in_process(
        instance=instance, raise_on_error=False, run_config={"ops": {f"{agent}__{k}": v for k, v in config.items()}})
    assert training.success, [e.message for e in training.all_events if e.is_failure]
    return str(latest(instance, agent, "registered_version")["version"])


def invoke(url: str, text: str, customer_id: str, request_id: str):
    """(the first prediction, the response headers) of one request to a serving process."""
    body = json.dumps({"dataframe_records": [{"text": text, "customer_id": customer_id}]}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-Request-Id": request_id})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"][0], response.headers


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def trace_of(experiment_id: str, request_id: str, timeout_s: float = 60.0):
    """The MLflow trace of a served request (the serving process exports it in the background)."""
    import mlflow

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = mlflow.search_traces(locations=[experiment_id], return_type="list",
                                     filter_string=f"tags.`agentops.request_id` = '{request_id}'")
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no trace for request {request_id} within {timeout_s:.0f} s")


def serving_deployer(settings, agents, **options):
    """The code location's local deployer for ``agents`` (``build_deployer``: the LLM agents get
    their key), with every request traced."""
    from agentops_pipelines.agent.llm.endpoint import serving_connect_ports, serving_secrets
    from agentops_pipelines.definitions import build_deployer
    from agentops_pipelines.resources.deployers import LocalProcessDeployer

    base = build_deployer(settings, [a.name for a in agents], serving_secrets(agents), serving_connect_ports(agents))
    return LocalProcessDeployer(state_dir=base.state_dir, inference_log_dir=base.inference_log_dir,
                                agent_secret_env=base.agent_secret_env,
                                agent_connect_ports=base.agent_connect_ports, trace_sample_rate=1.0,
                                health_timeout_s=180, **options)
