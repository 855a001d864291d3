"""Two re-evaluations that overlap each register the model they evaluated.

The lifecycle's own evaluation, trajectory, gate and registry assets, on MLflow (SQLite), the lake
on disk and a real Dagster instance. Run A evaluates candidate a; just as A's registration loads
its evaluation, run B re-evaluates and registers candidate b from start to finish; then A
registers. With a "newest record" hand-off A would register b a second time and a never.
"""

from datetime import date

import dagster as dg
import mlflow
import pytest

from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER, LakeIOManager
from tests.helpers import AGENT


def training_set(lake):
    """One generated day as the training set, features at their neutral values, a held-out share."""
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.assets.features import neutral_feature, split_of
    from agentops_pipelines.data.generator import generate_requests

    rows = generate_requests(date(2026, 11, 1), n=500)
    rows = rows.assign(**{c: neutral_feature(c) for c in SupportDeskAgent.feature_columns})
    rows["split"] = [split_of(r, 0.2) for r in rows["request_id"].astype(str)]
    lake.write(f"{AGENT}/training_set", rows, run_id="fixture")
    return rows


def candidates(store, rows, n: int) -> list[str]:
    """``n`` MLflow runs, each with the support desk's router logged as the agent's pyfunc model."""
    from agentops_pipelines.agent.model import AgentModel, signature
    from agentops_pipelines.agent.support_desk import SupportDeskAgent

    agent = SupportDeskAgent()
    router = agent.train(rows[rows["split"] == "train"], {"use_features": 0})
    store.configure()
    runs = []
    for i in range(n):
        model = AgentModel(agent.name, router, agent.feature_columns, dict(agent.tool_descriptions),
                           agent.escalation_tool, agent.prompt_template, "prompts:/none/1")
        with mlflow.start_run(experiment_id=store.experiment_id(agent.name), run_name=f"candidate-{i}") as run:
            mlflow.pyfunc.log_model(name="agent", python_model=model, signature=signature(agent.feature_columns),
                                    pip_requirements=["mlflow"])
        runs.append(run.info.run_id)
    return runs


def reevaluation_config(run_id: str) -> dg.RunConfig:
    """A quick re-evaluation of ``run_id`` whose gates judge nothing: this test is about hand-offs."""
    from agentops_pipelines.assets.evaluation import EvaluationConfig
    from agentops_pipelines.assets.trajectory import TrajectoryConfig
    from agentops_pipelines.trajectory_gate import DEFAULT_MINIMUMS

    lenient = {f"min_{m}": 0.0 for m in ("accuracy", "macro_f1", "escalation_recall", "golden_accuracy", "oos_recall")}
    return dg.RunConfig(ops={
        f"{AGENT}__evaluation_report": EvaluationConfig(candidate_run_id=run_id, evidently_report=False,
                                                        latency_samples=5, **lenient),
        f"{AGENT}__trajectory_evaluation": TrajectoryConfig(candidate_run_id=run_id, cases=40, compare_champion=False,
                                                            **{f"min_{m}": 0.0 for m in DEFAULT_MINIMUMS})})


@pytest.mark.slow
def test_two_overlapping_reevaluations_each_register_the_model_they_evaluated(home, instance):
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.definitions import build_resources
    from agentops_pipelines.lifecycle import build_lifecycle
    from agentops_pipelines.resources.settings import load_settings

    meanwhile = []  # what runs while a registration is about to load its evaluation (once)

    class Interleaving(LakeIOManager):
        def load_input(self, context: dg.InputContext):
            if context.op_def.name == f"{AGENT}__registered_version" and meanwhile:
                meanwhile.pop()()
            return super().load_input(context)

    settings = load_settings()
    agent = SupportDeskAgent()
    resources = build_resources(settings, [agent])
    lake, store = resources["lake"], resources["mlflow_store"]
    resources[LAKE_IO_MANAGER] = Interleaving(root=lake.root)
    lifecycle = build_lifecycle(agent, inference_log_root=str(settings.inference_log_dir))
    job = dg.Definitions(assets=lifecycle.assets, asset_checks=lifecycle.checks, resources=resources,
                         jobs=[lifecycle.jobs["reevaluation"]]).resolve_job_def(f"{AGENT}_reevaluation_job")
    a, b = candidates(store, training_set(lake), 2)

    def reevaluate(run_id: str) -> dg.ExecuteInProcessResult:
        return job.execute_in_process(instance=instance, run_config=reevaluation_config(run_id), raise_on_error=False)

    runs = {}
    meanwhile.append(lambda: runs.setdefault("b", reevaluate(b)))
    runs["a"] = reevaluate(a)
    assert not meanwhile, "B ran while A was about to register"
    assert runs["a"].success and runs["b"].success

    table = f"{AGENT}/registered_version"
    registered = {name: lake.read_record(table, run_id=result.run_id) for name, result in runs.items()}
    assert registered["a"]["mlflow_run_id"] == a and registered["b"]["mlflow_run_id"] == b
    client = mlflow.MlflowClient(store.tracking_uri)
    for name, run_id in (("a", a), ("b", b)):
        (version,) = client.search_model_versions(f"name='{AGENT}' and run_id='{run_id}'")
        assert registered[name]["version"] == str(version.version)
    assert registered["a"]["version"] != registered["b"]["version"]
    # The gates reported the candidate of their own run too.
    for name, run_id in (("a", a), ("b", b)):
        checks = {c.check_name: c for c in runs[name].get_asset_check_evaluations()}
        assert {n: c.metadata["candidate_run_id"].value for n, c in checks.items()} == \
            {"evaluation_gate": run_id, "trajectory_gate": run_id}
