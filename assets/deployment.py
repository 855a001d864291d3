"""``deployment``: a registered version served in an environment (one partition each)."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.governance import approvals
from agentops_pipelines.operations import RolloutConfig, refuse, rollout_lock
from agentops_pipelines.partitions import environments
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.deployers import Deployer
from agentops_pipelines.resources.governance import GovernanceResource
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.rollout import rollout
from agentops_pipelines.vocabulary import GUARDED_ENVIRONMENTS, Alias, VersionTag


class DeploymentConfig(RolloutConfig):  # the rollout fields apply to prod
    version: str = Field(default="", description="model version to deploy; default: dev gets the newest "
                                                 "registered version, staging and prod the champion")


def deployments_group(agent: Agent) -> str:
    """The deployment asset's group: apart from the agent's, out of its "Materialize all"."""
    return f"{agent.name}_deployments"


def build_deployment_asset(agent: Agent, registered: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key_prefix=[agent.name], name="deployment", group_name=deployments_group(agent),
        ins={"registered": dg.AssetIn(registered.key, input_manager_key=LAKE_IO_MANAGER)},
        partitions_def=environments, kinds={"mlflow"}, code_version=source_version(__name__),
        description="The version serving in each environment, its URL and when it started. Staging "
                    "and prod take only versions with enough valid signed approvals (approvers.yaml). "
                    "In its own group so that materializing the agent's group never deploys: deploy "
                    "one environment at a time (the deploy job or this asset). The promotion and "
                    "rollback jobs record observations of the partitions they change.",
    )
    def deployment(context: dg.AssetExecutionContext, config: DeploymentConfig, registered: dict | None,
                   mlflow_store: MlflowResource, deployer: Deployer, audit: AuditLog,
                   governance: GovernanceResource) -> dg.MaterializeResult:
        import mlflow

        environment = context.partition_key
        actor = f"deployment:{context.run.run_id[:8]}"
        client = mlflow_store.configure()
        version = config.version
        if not version and environment == "dev" and registered:
            version = registered["version"]
        if not version:
            try:
                version = str(client.get_model_version_by_alias(agent.name, Alias.CHAMPION).version)
            except mlflow.exceptions.MlflowException as exc:
                raise dg.Failure(f"nothing to deploy to {environment}: no version given and no "
                                 f"champion for {agent.name}") from exc
        mv = client.get_model_version(agent.name, version)  # raises if the version does not exist
        model_uri = f"models:/{agent.name}/{mv.version}"
        verdict = None
        if environment in GUARDED_ENVIRONMENTS:  # the same checks as the promotion job, whoever launched this
            verdict = approvals.check_deployable(client, audit.store, governance.policy(agent.name), agent.name,
                                                 str(mv.version), [environment])[environment]
            if not verdict.allowed:
                raise refuse(audit, agent.name, str(mv.version), environment, actor, verdict.reason)
        policy = None
        if environment == "prod":  # canary → bake time with health checks → full
            policy = config.policy()
        with rollout_lock(audit, agent.name, environment, actor, context.log.info):
            result = rollout(deployer, environment, model_uri, str(mv.version), policy, context.log.info,
                             agent=agent.name)
        if not result.succeeded:
            approvals.show(client, agent.name, mv.version, **{VersionTag.ROLLED_BACK: f"canary failed: {result.reason}"})
            audit.record("promotion_failed", agent.name, actor=actor, version=mv.version, environment=environment,
                         reason=result.reason, details={"checks": result.checks, "kept": result.previous_version})
            raise dg.Failure(f"version {mv.version} was rolled back in {environment}: {result.reason}; "
                             f"version {result.previous_version} keeps serving",
                             metadata={"checks": dg.MetadataValue.json(result.checks)})
        deployed = deployer.status(environment, agent=agent.name)
        client.set_model_version_tag(agent.name, mv.version, f"deployed_{environment}",
                                     datetime.now(UTC).isoformat(timespec="seconds"))
        approvers = list(verdict.approvers) if verdict else []
        if environment == "prod":
            client.set_registered_model_alias(agent.name, Alias.CHAMPION, mv.version)
        if result.previous_version != str(mv.version):  # a re-run that changed nothing records nothing
            audit.record("promote" if environment == "prod" else "deploy", agent.name, actor=actor,
                         version=mv.version, environment=environment,
                         reason=verdict.reason if verdict else "dev takes every registered version",
                         details={"approvers": approvers, "previous_version": result.previous_version})
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
