import json
import urllib.request

import dagster as dg

AGENT = "support_agent"


def run_job(defs, instance, stage: str, **kwargs) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(f"{AGENT}_{stage}_job")
    return job.execute_in_process(instance=instance, raise_on_error=False, **kwargs)


def metadata(instance, name: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey([AGENT, name]))
    assert event is not None, f"{name} was never materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def materialized(instance, name: str, partition: str | None = None) -> bool:
    key = dg.AssetKey([AGENT, name])
    if partition is None:
        return instance.get_latest_materialization_event(key) is not None
    return partition in instance.get_materialized_partitions(key)


def dataset_config(**config) -> dict:
    return {"ops": {f"{AGENT}__dataset": {"config": config}}}


def invoke(url: str, records: list[dict]) -> dict:
    body = json.dumps({"dataframe_records": records}).encode()
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def register_versions(tracking_uri: str, n: int, *, tags: dict | None = None, name: str = AGENT,
                      wrap=None) -> list[str]:
    """Train the real support-desk router on a small generated day and register it ``n`` times.

    Fast (a few seconds each) and servable by the real serving process.
    """
    from datetime import date

    import mlflow

    from agentops_pipelines.agent.model import AgentModel, signature
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.data.generator import generate_requests

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    agent = SupportDeskAgent()
    train = generate_requests(date(2026, 11, 1), n=400)
    router = agent.train(train, {"use_features": 0})
    if wrap is not None:  # e.g. a router that fails on demand (tests/faults.py)
        router = wrap(router)
    versions = []
    experiment_id = mlflow.set_experiment("fixtures").experiment_id
    for i in range(n):
        model = AgentModel(agent.name, router, agent.feature_columns, dict(agent.tool_descriptions),
                           agent.escalation_tool, agent.prompt_template, "prompts:/none/1")
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"fixture-{i}",
                              tags={"agentops.dagster_run_id": "fixture"}):
            info = mlflow.pyfunc.log_model(name="agent", python_model=model, signature=signature(agent.feature_columns),
                                           pip_requirements=["mlflow"])
        mv = mlflow.register_model(info.model_uri, name)
        for key, value in {"evaluation_gate": "passed", "approval_status": "pending", **(tags or {})}.items():
            client.set_model_version_tag(name, mv.version, key, value)
        versions.append(str(mv.version))
    return versions
