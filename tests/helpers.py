import functools
import json
import urllib.request

import dagster as dg

AGENT = "support_agent"


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


@functools.cache
def fixture_router():
    """The real support-desk router trained on a small generated day (no customer features),
    trained once per test session: training is deterministic, and nothing changes a router once
    trained (models are pickled copies of it)."""
    from datetime import date

    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.data.generator import generate_requests

    return SupportDeskAgent().train(generate_requests(date(2026, 11, 1), n=400), {"use_features": 0})


def experiment_beside_store(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, made if needed with its artifacts beside the SQLite store
    (MLflow's default for a SQLite store is ``./mlruns`` of the working directory: the project);
    a server's store keeps its own artifact root."""
    from pathlib import Path

    from agentops_pipelines.resources.mlflow import MlflowResource

    root = (str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts")
            if tracking_uri.startswith("sqlite:///") else "")
    return MlflowResource(tracking_uri=tracking_uri, artifact_root=root).experiment_id(name)


def register_versions(tracking_uri: str, n: int, *, tags: dict | None = None, name: str = AGENT,
                      wrap=None, audit=None) -> list[str]:
    """Register the real support-desk router (``fixture_router``) ``n`` times.

    Fast (about a second each) and servable by the real serving process. Each run gets a small
    evaluation report (``evaluation/summary.json``); with ``audit`` (an AuditStore) each version's
    registration is recorded the way the registry asset records it (digests and gate result).
    """
    import mlflow

    from agentops_pipelines.agent.model import AgentModel, signature
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.governance.approvals import record_registration

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri, tracking_uri)
    agent = SupportDeskAgent()
    router = fixture_router()
    if wrap is not None:  # e.g. a router that fails on demand (tests/faults.py)
        router = wrap(router)
    versions = []
    experiment_id = experiment_beside_store(tracking_uri, "fixtures")
    for i in range(n):
        model = AgentModel(agent.name, router, agent.feature_columns, dict(agent.tool_descriptions),
                           agent.escalation_tool, agent.prompt_template, "prompts:/none/1")
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"fixture-{i}",
                              tags={"agentops.dagster_run_id": "fixture"}) as run:
            info = mlflow.pyfunc.log_model(name="agent", python_model=model, signature=signature(agent.feature_columns),
                                           pip_requirements=["mlflow"])
            mlflow.log_dict({"accuracy": 0.9, "fixture": i}, "evaluation/summary.json")
        mv = mlflow.register_model(info.model_uri, name)
        for key, value in {"evaluation_gate": "passed", "approval_status": "pending", **(tags or {})}.items():
            client.set_model_version_tag(name, mv.version, key, value)
        if audit is not None:
            record_registration(client, audit, name, str(mv.version), run.info.run_id, gate_passed=True,
                                actor="registered_version:fixture")
        versions.append(str(mv.version))
    return versions


def promoted(audit, version: str, agent: str = AGENT) -> None:
    """Fixture history: ``version`` was promoted to prod (as the promotion job records it)."""
    audit.record("promote", agent, actor="promotion_job:fixture", version=version, environment="prod",
                 reason="fixture: promoted earlier", details={"approvers": ["alice"]})


class Reviewers:
    """Real Ed25519 keys for alice, bob, carol (approvers once ``configure``d) and mallory (never),
    and the approvers file every deciding process reads."""

    def __init__(self, folder, approvers_file):
        from agentops_pipelines.governance.signing import generate_key

        self.folder, self.file = folder, approvers_file
        self.public = {name: generate_key(folder / f"{name}.pem") for name in ("alice", "bob", "carol", "mallory")}

    def key(self, name: str):
        from agentops_pipelines.governance.signing import load_private_key

        return load_private_key(self.folder / f"{name}.pem")

    def configure(self, names=("alice",), require: dict | None = None, agent: str = AGENT) -> None:
        import yaml

        section = {"approvers": {n: self.public[n] for n in names}}
        if require:
            section["require"] = require
        self.file.write_text(yaml.safe_dump({"agents": {agent: section}}))

    def decide(self, client, version: str, reviewer: str, decision: str = "approved", agent: str = AGENT,
               key_of: str | None = None) -> str:
        """Sign (with ``key_of``'s key, default the reviewer's own) and submit, as the CLI does."""
        from agentops_pipelines.governance.approvals import make_decision, submit

        made, envelope = make_decision(client, agent, str(version), decision, reviewer, self.key(key_of or reviewer))
        submit(client, made, envelope)
        return envelope


def latest_check(instance, asset: str, check: str) -> dict:
    """Metadata of the latest evaluation of ``check`` on ``asset``."""
    key = dg.AssetCheckKey(dg.AssetKey([AGENT, asset]), check)
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    assert records and records[0].event is not None, f"{asset}:{check} never ran"
    evaluation = records[0].event.dagster_event.event_specific_data
    return {k: v.value for k, v in evaluation.metadata.items()}


def fresh_postgres_database(prefix: str):
    """A new, empty database on the machine's Postgres (127.0.0.1:5432, trust auth) for one test,
    dropped afterwards: a generator for a pytest fixture; skips when Postgres is not reachable."""
    import uuid

    import pytest
    import sqlalchemy as sa

    admin_url = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc.__class__.__name__}")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def embeds(router) -> bool:
    """Whether a text router's features include the MiniLM embedding block (int8, ONNX Runtime)."""
    from agentops_pipelines.agent.embeddings import SentenceEmbedder

    union = router.pipeline.named_steps["features"].named_transformers_["text"]
    return any(isinstance(block, SentenceEmbedder) and block.backend == "onnx-int8"
               for _, block in union.transformer_list)
