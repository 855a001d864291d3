"""``make demo-llm``: the LLM agent's lifecycle on a local SmolLM2-135M, beside the trained router.

Starts llama-cpp-python's OpenAI-compatible server on the packaged model, points the code
location at it (``AGENTOPS_LLM_*``), trains and registers the support desk's router if there is
none (it becomes the champion the LLM agent is compared with once it serves in prod), then runs the LLM agent's training job (prompt versioned, evaluation,
trajectories) and prints both gates' verdicts. A refusal is the expected outcome for a 135M model.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta


def main() -> int:
    from agentops_pipelines.agent.llm.local import MODEL_ALIAS, LocalServer, unavailable
    from agentops_pipelines.vocabulary import EnvVar

    if reason := unavailable():
        print(f"demo-llm: {reason}", file=sys.stderr)
        return 1
    key = "sk-local-" + secrets.token_hex(8)
    with LocalServer(api_key=key) as server:
        os.environ.update({EnvVar.LLM_BASE_URL: server.base_url, EnvVar.LLM_MODEL: MODEL_ALIAS,
                           EnvVar.LLM_RESPONSE_FORMAT: "json_object", EnvVar.LLM_API_KEY: key})
        import dagster as dg
        import mlflow

        from agentops_pipelines.agent.llm.agent import SupportDeskLLMAgent
        from agentops_pipelines.assets.dataset import config_class
        from agentops_pipelines.assets.evaluation import EvaluationConfig
        from agentops_pipelines.assets.features import TrainingSetConfig
        from agentops_pipelines.assets.trajectory import TrajectoryConfig
        from agentops_pipelines.cli import prepare_home
        from agentops_pipelines.definitions import build_definitions
        from agentops_pipelines.resources.settings import load_settings

        prepare_home()
        settings = load_settings()
        defs = build_definitions(settings)
        instance = dg.DagsterInstance.get()
        day = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        quiet = {"console": {"config": {"log_level": "WARNING"}}}

        def run(job: str, ops: dict | None = None, **kwargs):
            """Run ``job`` in process; ``ops`` maps op names to their typed config."""
            t0 = time.perf_counter()
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, raise_on_error=False, run_config=dg.RunConfig(ops=ops, loggers=quiet), **kwargs)
            print(f"  {job}: {'ok' if result.success else 'stopped by a gate or a failure'} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            return result

        def meta(agent: str, name: str) -> dict:
            event = instance.get_latest_materialization_event(dg.AssetKey([agent, name]))
            return {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}

        llm = SupportDeskLLMAgent.name
        # The dataset step's config class carries the agent's own defaults: a typed config sends
        # every field, so it must be that class, not the plain DatasetConfig.
        dataset_config = config_class(SupportDeskLLMAgent)
        baseline = SupportDeskLLMAgent.baseline_agent
        client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
        print(f"demo-llm: {MODEL_ALIAS} at {server.base_url}; state folder {settings.home}")
        one_day = {"training_set": TrainingSetConfig(days=1, end_date=day),
                   "evaluation_report": EvaluationConfig(evidently_report=False, latency_samples=10)}
        # The champion is what the verified audit log says serves in prod (the promotion job's
        # record, after reviewers' approvals); a fresh state folder has none, so the LLM agent is
        # judged on the gates' minimums alone until the router is promoted (`make demo`, README).
        if not client.search_model_versions(f"name='{baseline}'"):
            run(f"{baseline}_ingest_job", partition_key=day)
            training = run(f"{baseline}_training_job", {f"{baseline}__{k}": v for k, v in one_day.items()})
            registration = defs.resources["lake"].read_record(f"{baseline}/registered_version", run_id=training.run_id)
            if registration is None:
                print("the trained router was not registered; see `make dev`", file=sys.stderr)
                return 1
            print(f"  baseline: {baseline} version {registration['version']} registered")
        run(f"{llm}_ingest_job", {f"{llm}__dataset": dataset_config(rows_per_day=100)}, partition_key=day)
        run(f"{llm}_training_job", {f"{llm}__{k}": v for k, v in {
            **one_day, "trajectory_evaluation": TrajectoryConfig(cases=38)}.items()})
        report, trajectory = meta(llm, "evaluation_report"), meta(llm, "trajectory_evaluation")
        print(f"\nheld-out requests : accuracy {report.get('accuracy', 0):.3f}, gate "
              f"{'passed' if report.get('gate_passed') else 'refused'}: {report.get('gate_reasons')}")
        print(f"trajectories      : {trajectory.get('cases')} golden cases against "
              f"{trajectory.get('champion_version') or 'its minimums (no champion serves in prod yet)'}, "
              f"gate {'passed' if trajectory.get('gate_passed') else 'refused'}")
        print(trajectory.get("per_scorer", ""))
        print(f"report            : {trajectory.get('report')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
