"""``deployment``: a registered version served in an environment (one partition each)."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.assets.evaluation import latest_metadata
from agentops_pipelines.partitions import environments
from agentops_pipelines.resources.deployers import Deployer
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.rollout import RolloutPolicy, rollout


class DeploymentConfig(dg.Config):
    version: str = Field(default="", description="model version to deploy; default: dev gets the newest "
                                                 "registered version, staging and prod the champion")
    canary_share: float = Field(default=0.1, gt=0.0, le=1.0, description="prod: traffic share while baking (1: no canary)")
    bake_seconds: float = Field(default=60.0, ge=0.0, description="prod: how long the canary must stay healthy")
    check_interval_seconds: float = Field(default=5.0, gt=0.0)
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_p99_ms: float = Field(default=250.0, gt=0.0)
    min_requests: int = Field(default=20, ge=1, description="requests the canary must serve before it is judged")
    max_bake_seconds: float | None = Field(default=None, description="how long to bake for min_requests "
                                                                     "before aborting (default 4x bake_seconds)")


def build_deployment_asset(agent: Agent, registered: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key_prefix=[agent.name], name="deployment", group_name=agent.name, deps=[registered],
        partitions_def=environments, kinds={"mlflow"}, code_version="1",
        description="The version serving in each environment, its URL and when it started.",
    )
    def deployment(context: dg.AssetExecutionContext, config: DeploymentConfig,
                   mlflow_store: MlflowResource, deployer: Deployer) -> dg.MaterializeResult:
        import mlflow

        environment = context.partition_key
        client = mlflow_store.configure()
        version = config.version
        if not version and environment == "dev":
            version = str(latest_metadata(context, registered.key).get("version", ""))
        if not version:
            try:
                version = str(client.get_model_version_by_alias(agent.name, "champion").version)
            except mlflow.exceptions.MlflowException as exc:
                raise dg.Failure(f"nothing to deploy to {environment}: no version given and no "
                                 f"champion for {agent.name}") from exc
        mv = client.get_model_version(agent.name, version)  # raises if the version does not exist
        model_uri = f"models:/{agent.name}/{mv.version}"
        policy = None
        if environment == "prod":  # canary → bake time with health checks → full
            policy = RolloutPolicy(canary_share=config.canary_share, bake_seconds=config.bake_seconds,
                                   check_interval_seconds=config.check_interval_seconds,
                                   max_error_rate=config.max_error_rate, max_p99_ms=config.max_p99_ms,
                                   min_requests=config.min_requests, max_bake_seconds=config.max_bake_seconds)
        result = rollout(deployer, environment, model_uri, str(mv.version), policy, context.log.info)
        if not result.succeeded:
            client.set_model_version_tag(agent.name, mv.version, "rolled_back", f"canary failed: {result.reason}")
            raise dg.Failure(f"version {mv.version} was rolled back in {environment}: {result.reason}; "
                             f"version {result.previous_version} keeps serving",
                             metadata={"checks": dg.MetadataValue.json(result.checks)})
        deployed = deployer.status(environment)
        client.set_model_version_tag(agent.name, mv.version, f"deployed_{environment}",
                                     datetime.now(UTC).isoformat(timespec="seconds"))
        context.log.info("%s version %s serving in %s at %s", agent.name, mv.version, environment, deployed.url)
        return dg.MaterializeResult(metadata={
            "environment": environment,
            "version": str(mv.version),
            "model_uri": model_uri,
            "url": dg.MetadataValue.url(deployed.url),
            "previous_version": str(result.previous_version),
            "canary_share": deployed.canary_share,
            "rollout": result.reason,
            "pid": deployed.pid,
            "started_at": deployed.started_at,
        })

    return deployment
