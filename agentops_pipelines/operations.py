"""Promotion and rollback: the jobs the closed loops launch.

Both are op jobs (a rollout touches several environments in one run, which a partitioned asset
job cannot) that record a materialization of ``deployment`` for each environment they change, so
the asset graph still shows what runs where. Every decision goes to the audit log.
"""

import dagster as dg
from pydantic import Field

from agentops_pipelines import governance as gov
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.deployers import Deployer
from agentops_pipelines.resources.mlflow import MlflowResource


class PromotionConfig(dg.Config):
    version: str = Field(description="the registered version to promote")
    reviewer: str = Field(default="", description="who approved it (for the audit log)")
    canary_share: float = Field(default=0.1, gt=0.0, le=1.0)
    bake_seconds: float = Field(default=60.0, ge=0.0)
    check_interval_seconds: float = Field(default=5.0, gt=0.0)
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_p99_ms: float = Field(default=250.0, gt=0.0)
    min_requests: int = Field(default=20, ge=1, description="requests the canary must serve before it is judged")
    max_bake_seconds: float | None = Field(default=None, description="how long to bake for min_requests "
                                                                     "before aborting (default 4x bake_seconds)")


class RollbackConfig(dg.Config):
    environment: str = Field(default="prod")
    reason: str = Field(description="why: the alert, the failed run, or a person's words")
    bad_version: str = Field(default="", description="the version to roll back; default: what serves now")
    actor: str = Field(default="rollback_job")


def last_stable_version(client, agent_name: str, exclude: set[str]) -> str | None:
    """The most recently promoted version that was never rolled back or frozen."""
    candidates = []
    for mv in client.search_model_versions(f"name='{agent_name}'"):
        tags = mv.tags or {}
        if str(mv.version) in exclude or tags.get(gov.ROLLED_BACK) or not tags.get(gov.PROMOTED_PROD):
            continue
        candidates.append((tags[gov.PROMOTED_PROD], int(mv.version)))
    return str(max(candidates)[1]) if candidates else None


def _record_deployment(context, agent_name: str, environment: str, version: str, url: str, **extra) -> None:
    context.log_event(dg.AssetMaterialization(
        asset_key=dg.AssetKey([agent_name, "deployment"]), partition=environment,
        metadata={"environment": environment, "version": version, "url": dg.MetadataValue.url(url),
                  "model_uri": f"models:/{agent_name}/{version}", **extra}))


def build_promotion_job(agent) -> dg.JobDefinition:
    @dg.op(name=f"{agent.name}_promote", tags={"kind": "mlflow"})
    def promote(context: dg.OpExecutionContext, config: PromotionConfig, mlflow_store: MlflowResource,
                deployer: Deployer, audit: AuditLog) -> None:
        from agentops_pipelines.agents import AGENTS
        from agentops_pipelines.rollout import RolloutPolicy, rollout

        client = mlflow_store.configure()
        mv = client.get_model_version(agent.name, config.version)
        agent_def = next(a for a in AGENTS if a.name == agent.name)
        verdict = gov.eligibility(mv.tags or {}, gov.approvers(agent_def))
        if mv.tags.get(gov.STATUS) != "approved" or not verdict.allowed:
            raise dg.Failure(f"version {mv.version} may not be promoted: "
                             f"{verdict.reason if verdict.allowed is False else 'it is not approved'}")
        actor = f"promotion_job:{context.run_id[:8]}"
        model_uri = f"models:/{agent.name}/{mv.version}"
        log = context.log.info

        staging = rollout(deployer, "staging", model_uri, mv.version, None, log)
        _record_deployment(context, agent.name, "staging", mv.version, staging.url)
        audit.record("deploy", agent.name, actor=actor, version=mv.version, environment="staging",
                     reason=f"promotion approved by {config.reviewer or mv.tags.get(gov.REVIEWER)}")

        policy = RolloutPolicy(canary_share=config.canary_share, bake_seconds=config.bake_seconds,
                               check_interval_seconds=config.check_interval_seconds,
                               max_error_rate=config.max_error_rate, max_p99_ms=config.max_p99_ms,
                               min_requests=config.min_requests, max_bake_seconds=config.max_bake_seconds)
        prod = rollout(deployer, "prod", model_uri, mv.version, policy, log)
        if not prod.succeeded:
            client.set_model_version_tag(agent.name, mv.version, gov.ROLLED_BACK, f"canary failed: {prod.reason}")
            audit.record("promotion_failed", agent.name, actor=actor, version=mv.version, environment="prod",
                         reason=prod.reason, details={"checks": prod.checks, "kept": prod.previous_version})
            raise dg.Failure(f"canary of version {mv.version} in prod failed its health check: {prod.reason}; "
                             f"version {prod.previous_version} keeps serving",
                             metadata={"checks": dg.MetadataValue.json(prod.checks)})
        client.set_registered_model_alias(agent.name, "champion", mv.version)
        client.set_model_version_tag(agent.name, mv.version, gov.PROMOTED_PROD, gov.now())
        client.set_model_version_tag(agent.name, mv.version, gov.STATUS, "promoted")
        _record_deployment(context, agent.name, "prod", mv.version, prod.url, previous_version=str(prod.previous_version))
        audit.record("promote", agent.name, actor=actor, version=mv.version, environment="prod",
                     reason=f"approved by {mv.tags.get(gov.REVIEWER)}; {prod.reason}",
                     details={"previous_version": prod.previous_version, "checks": prod.checks})

    @dg.job(name=f"{agent.name}_promotion_job", tags={"agentops/environment": "prod", "agentops/agent": agent.name},
            description="Staging, then the production canary rollout with bake-time health checks; "
                        "the champion alias moves only when the canary stays healthy.")
    def promotion_job():
        promote()

    return promotion_job


def build_rollback_job(agent) -> dg.JobDefinition:
    @dg.op(name=f"{agent.name}_rollback", tags={"kind": "mlflow"})
    def rollback(context: dg.OpExecutionContext, config: RollbackConfig, mlflow_store: MlflowResource,
                 deployer: Deployer, audit: AuditLog) -> None:
        client = mlflow_store.configure()
        env = config.environment
        current = deployer.status(env)
        bad = config.bad_version or (current.version if current else "")
        if not bad:
            raise dg.Failure(f"nothing serves in {env} and no bad_version was given: nothing to roll back")
        stable = last_stable_version(client, agent.name, exclude={bad})
        if stable is None:
            audit.record("rollback_impossible", agent.name, actor=config.actor, version=bad, environment=env,
                         reason=config.reason)
            raise dg.Failure(f"ROLLBACK IMPOSSIBLE: no stable version of {agent.name} left to roll back to "
                             f"from version {bad} in {env} ({config.reason}). Stopping here; a person must act.")
        if current is not None and current.version == stable:
            context.log.info("%s already serves stable version %s: nothing to do", env, stable)
        else:
            deployed = deployer.deploy(env, f"models:/{agent.name}/{stable}", stable)
            _record_deployment(context, agent.name, env, stable, deployed.url, rolled_back_from=bad, reason=config.reason)
        if env == "prod":
            client.set_registered_model_alias(agent.name, "champion", stable)
        client.set_model_version_tag(agent.name, bad, gov.ROLLED_BACK, config.reason)
        client.set_model_version_tag(agent.name, bad, "rolled_back_at", gov.now())
        audit.record("rollback", agent.name, actor=config.actor, version=bad, environment=env,
                     reason=config.reason, details={"to_version": stable})
        context.log.warning("rolled %s back from version %s to %s: %s", env, bad, stable, config.reason)

    @dg.job(name=f"{agent.name}_rollback_job", tags={"agentops/agent": agent.name},
            description="Back to the last stable version, the bad one tagged rolled_back with the reason.")
    def rollback_job():
        rollback()

    return rollback_job
