"""``trained_agent``: train the agent's router and log it to MLflow as a pyfunc model."""

import json

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource

ARTIFACT = "agent"  # the model's name inside the MLflow run


class TrainingConfig(dg.Config):
    params: dict[str, float] = Field(default_factory=dict, description="overrides of the agent's default params (numbers; 0/1 for flags)")
    trace_samples: int = Field(default=20, ge=0, le=1000, description="training requests traced in MLflow")


def ensure_prompt(agent: Agent) -> tuple[str, int]:
    """The agent's answer template in MLflow's prompt registry: a new version only if it changed."""
    import mlflow

    name = f"{agent.name}_answer"
    latest = mlflow.genai.load_prompt(f"prompts:/{name}@latest", allow_missing=True, link_to_model=False, cache_ttl_seconds=0)
    if latest is not None and latest.template == agent.prompt_template:
        return latest.uri, int(latest.version)
    prompt = mlflow.genai.register_prompt(name=name, template=agent.prompt_template,
                                          commit_message="template changed in code" if latest is not None
                                          else f"first version: {agent.name}'s answer template",
                                          tags={"agent": agent.name})
    return prompt.uri, int(prompt.version)


def git_commit() -> str:
    import subprocess

    from agentops_pipelines.resources.settings import PROJECT_ROOT
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_training_asset(agent: Agent, training_set: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key_prefix=[agent.name], name="trained_agent", group_name=agent.name, deps=[training_set],
        io_manager_key=LAKE_IO_MANAGER, kinds={"mlflow", "scikitlearn"},
        code_version=source_version(__name__, type(agent).__module__),  # the agent's code trains
        description="The agent's router trained on the whole training split (the default recipe "
                    "selects and calibrates on a validation share of it, then refits on all), logged "
                    "to MLflow with its parameters, validation metrics, dataset lineage, prompt "
                    "version and traces.",
    )
    def trained_agent(context: dg.AssetExecutionContext, config: TrainingConfig,
                      lake: LakeResource, mlflow_store: MlflowResource) -> dg.MaterializeResult:
        import mlflow

        from agentops_pipelines.agent.model import AgentModel, signature

        table = f"{agent.name}/training_set"
        data = lake.read(table)
        data_version = lake.current_run_id(table)
        train = data[data["split"] == "train"].reset_index(drop=True)
        if train.empty or train["tool"].nunique() < 2:
            raise dg.Failure(f"{table} has {len(train)} training rows and {train['tool'].nunique()} label(s): too few to train")
        params = {**agent.default_params(), **config.params}

        client = mlflow_store.configure()
        experiment_id = mlflow_store.experiment_id(agent.name)
        prompt_uri, prompt_version = ensure_prompt(agent)
        partitions = sorted(set(data["timestamp"].astype(str).str[:10]))
        tags = {"agentops.agent": agent.name, "agentops.dagster_run_id": context.run.run_id,
                "agentops.training_set_version": data_version, "agentops.partitions": ",".join(partitions),
                "agentops.git_commit": git_commit(), "agentops.prompt": prompt_uri}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{context.run.run_id[:8]}", tags=tags) as run:
            # The agent gets every training row: the default recipe holds its own validation
            # split back for model selection, calibration and the abstention threshold, then
            # refits on all of them (recipes.py). Held-out rows are for the evaluation only.
            try:
                router = agent.train(train, params)
            except ValueError as exc:
                raise dg.Failure(f"{agent.name}: training failed: {exc}") from None
            model = AgentModel(agent.name, router, agent.feature_columns, dict(agent.tool_descriptions),
                               agent.escalation_tool, agent.prompt_template, prompt_uri)
            model.text_max_chars = int(train["text"].astype(str).str.len().max())  # serving's text limit
            validation = dict(getattr(router, "validation", {}) or {})
            # Data the router learned from that is not a Dagster asset (a declared validation
            # file): its path and the digest of the very bytes training read, as tags.
            lineage = {str(k): str(v) for k, v in (getattr(router, "lineage", {}) or {}).items()}
            if lineage:
                mlflow.set_tags(lineage)
            model.answer_templates = dict(agent.answer_templates)  # per-tool answers (issue 11)
            mlflow.log_params({k: v for k, v in params.items()})
            mlflow.log_params({"train_rows": len(train), "prompt_version": prompt_version})
            mlflow.log_metrics({f"val_{k}": float(v) for k, v in validation.items()
                                if isinstance(v, int | float) and not isinstance(v, bool)})
            if validation:
                mlflow.log_dict(validation, "validation.json")
            mlflow.log_input(mlflow.data.from_pandas(data, source=str(lake.path(table)), targets="tool",
                                                     name=f"{agent.name}-training_set"), context="training")
            if config.trace_samples:
                model.predict_traced(train.head(config.trace_samples))
            columns = ["text", "customer_id", *agent.feature_columns]
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT, python_model=model, signature=signature(agent.feature_columns),
                input_example=train[[c for c in columns if c in train]].head(2), prompts=[prompt_uri],
                pip_requirements=_requirements(),
            )
        url = mlflow_store.run_url(experiment_id, run.info.run_id)
        context.log.info("trained %s on %d rows: validation %s (%s)", agent.name, len(train), validation, url)
        client.set_tag(run.info.run_id, "agentops.model_uri", info.model_uri)
        trained = {"mlflow_run_id": run.info.run_id, "model_uri": info.model_uri, "training_set_version": data_version}
        return dg.MaterializeResult(value=trained, metadata={
            "mlflow_run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "mlflow_run": dg.MetadataValue.url(url),
            "train_rows": len(train),
            **{f"val_{k}": v for k, v in validation.items() if isinstance(v, int | float) and not isinstance(v, bool)},
            "prompt": prompt_uri,
            "params": dg.MetadataValue.json(json.loads(json.dumps(params, default=str))),
            "training_set_version": data_version,
            **({"validation_set": dg.MetadataValue.path(lineage["agentops.validation_set"]),
                "validation_set_sha256": lineage["agentops.validation_set_sha256"]}
               if "agentops.validation_set" in lineage else {}),
        })

    return trained_agent


def _requirements() -> list[str]:
    """Pinned from the running environment: skips MLflow's slow requirement inference."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "scikit-learn", "pandas", "numpy")] + ["agentops-pipelines"]
