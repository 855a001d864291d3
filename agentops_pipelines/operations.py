"""Promotion and rollback: the jobs the closed loops launch.

Both are op jobs (a rollout touches several environments in one run, which a partitioned asset
job cannot). They do not run the ``deployment`` asset's code, so they do not claim to have
materialized it: for each environment they change they record an *observation* of
``deployment[<environment>]`` (the version now serving, its URL, the run), which the asset's page
and the run's page both show. Both decide from the pipeline's own records (the
verified audit log, reviewers' signatures, the approvers file) and never from MLflow tags, hold
the rollout lock of each environment they touch, and write every decision to the audit log.
"""

from dataclasses import fields

import dagster as dg
from pydantic import Field

from agentops_pipelines.governance import approvals
from agentops_pipelines.governance import eligibility as elig
from agentops_pipelines.resources.audit import AuditLog, AuditTampered
from agentops_pipelines.resources.deployers import Deployer
from agentops_pipelines.resources.governance import GovernanceResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.rollout import RolloutPolicy
from agentops_pipelines.vocabulary import (
    GUARDED_ENVIRONMENTS,
    Alias,
    Environment,
    RunTag,
    VersionTag,
    rollout_tags,
)

_POLICY = RolloutPolicy()  # the defaults, defined once (rollout.py)


class RolloutConfig(dg.Config):
    """How prod takes a new version, as run config: :class:`RolloutPolicy`'s fields with its
    defaults and the bounds a person's input is checked against. Every job and asset that rolls
    out uses it (its fields sit flat in their run config)."""

    canary_share: float = Field(default=_POLICY.canary_share, gt=0.0, le=1.0,
                                description="traffic share while baking (1: no canary)")
    bake_seconds: float = Field(default=_POLICY.bake_seconds, ge=0.0, description="how long the canary must stay healthy")
    check_interval_seconds: float = Field(default=_POLICY.check_interval_seconds, gt=0.0)
    max_error_rate: float = Field(default=_POLICY.max_error_rate, ge=0.0, le=1.0,
                                  description="canary server errors / requests")
    max_llm_failure_rate: float = Field(default=_POLICY.max_llm_failure_rate, ge=0.0, le=1.0,
                                        description="canary failed LLM calls / LLM calls (LLM agents)")
    max_p99_ms: float = Field(default=_POLICY.max_p99_ms, gt=0.0, description="canary p99 latency ceiling")
    min_requests: int = Field(default=_POLICY.min_requests, ge=1,
                              description="requests the canary must serve before it is judged")
    max_bake_seconds: float | None = Field(default=_POLICY.max_bake_seconds, description="how long to bake for "
                                           "min_requests before aborting (default 4x bake_seconds)")

    def policy(self) -> RolloutPolicy:
        return RolloutPolicy(**{f.name: getattr(self, f.name) for f in fields(RolloutPolicy)})


class PromotionConfig(RolloutConfig):
    version: str = Field(description="the registered version to promote")
    target: str = Field(default="prod", description="how far: 'staging', or 'prod' (staging first)")


class RollbackConfig(dg.Config):
    environment: str = Field(default="prod")
    reason: str = Field(description="why: the alert, the failed run, or a person's words")
    bad_version: str = Field(default="", description="the version to roll back; default: what serves now")
    actor: str = Field(default="rollback_job")


def rollout_lock(audit: AuditLog, agent: str, environment: str, holder: str, log):
    """One rollout per (agent, environment) at a time, whoever launched the run."""
    return audit.store.exclusive(f"rollout:{agent}:{environment}", holder,
                                 on_wait=lambda who: log(f"waiting for the {environment} rollout lock held by {who}"))


def observe_deployment(context, agent_name: str, environment: str, version: str, url: str, **extra) -> None:
    """What now serves in ``environment``, as an observation of the ``deployment`` partition (the
    asset's own runs materialize it; this job only changed what it describes)."""
    context.log_event(dg.AssetObservation(
        asset_key=dg.AssetKey([agent_name, "deployment"]), partition=environment,
        metadata={"environment": environment, "version": version, "url": dg.MetadataValue.url(url),
                  "model_uri": f"models:/{agent_name}/{version}", **extra}))


def refuse(audit: AuditLog, agent: str, version: str, environment: str, actor: str, reason: str) -> dg.Failure:
    """Audit a refused deployment and return the Failure to raise (its message names what is missing)."""
    try:
        audit.record("deployment_refused", agent, actor=actor, version=version, environment=environment,
                     reason=reason)
    except AuditTampered:
        pass  # the reason already says the log is not intact
    return dg.Failure(f"version {version} of {agent} may not serve in {environment}: {reason}")


def build_promotion_job(agent) -> dg.JobDefinition:
    @dg.op(name=f"{agent.name}_promote", tags={"kind": "mlflow"})
    def promote(context: dg.OpExecutionContext, config: PromotionConfig, mlflow_store: MlflowResource,
                deployer: Deployer, audit: AuditLog, governance: GovernanceResource) -> None:
        from agentops_pipelines.rollout import rollout

        if config.target not in GUARDED_ENVIRONMENTS:
            raise dg.Failure(f"target must be one of {', '.join(GUARDED_ENVIRONMENTS)}, not {config.target!r}")
        client = mlflow_store.configure()
        mv = client.get_model_version(agent.name, config.version)  # raises if it does not exist
        version, actor = str(mv.version), f"promotion_job:{context.run_id[:8]}"
        targets = [Environment.STAGING.value] + ([Environment.PROD.value] if config.target == "prod" else [])
        verdicts = approvals.check_deployable(client, audit.store, governance.policy(agent.name), agent.name,
                                              version, targets)
        for env, verdict in verdicts.items():
            if not verdict.allowed:
                approvals.show(client, agent.name, version, **{VersionTag.REFUSAL: verdict.reason})
                raise refuse(audit, agent.name, version, env, actor, verdict.reason)
        model_uri = f"models:/{agent.name}/{version}"

        with rollout_lock(audit, agent.name, "staging", actor, context.log.info):
            staging = rollout(deployer, "staging", model_uri, version, None, context.log.info, agent=agent.name)
        observe_deployment(context, agent.name, "staging", version, staging.url)
        approvers = list(verdicts["staging"].approvers)
        audit.record("deploy", agent.name, actor=actor, version=version, environment="staging",
                     reason=verdicts["staging"].reason, details={"approvers": approvers})
        if config.target == "staging":
            approvals.show(client, agent.name, version, **{VersionTag.STATUS: "approved for staging",
                                                           VersionTag.REFUSAL: ""})
            return

        with rollout_lock(audit, agent.name, "prod", actor, context.log.info):
            prod = rollout(deployer, "prod", model_uri, version, config.policy(), context.log.info,
                           agent=agent.name)
        if not prod.succeeded:
            approvals.show(client, agent.name, version, **{VersionTag.ROLLED_BACK: f"canary failed: {prod.reason}"})
            audit.record("promotion_failed", agent.name, actor=actor, version=version, environment="prod",
                         reason=prod.reason, details={"checks": prod.checks, "kept": prod.previous_version})
            raise dg.Failure(f"canary of version {version} in prod failed its health check: {prod.reason}; "
                             f"version {prod.previous_version} keeps serving",
                             metadata={"checks": dg.MetadataValue.json(prod.checks)})
        client.set_registered_model_alias(agent.name, Alias.CHAMPION, version)
        approvals.show(client, agent.name, version, **{
            VersionTag.PROMOTED_PROD: approvals.now(), VersionTag.STATUS: "promoted",
            VersionTag.REVIEWER: ", ".join(verdicts["prod"].approvers), VersionTag.REFUSAL: ""})
        observe_deployment(context, agent.name, "prod", version, prod.url, previous_version=str(prod.previous_version))
        audit.record("promote", agent.name, actor=actor, version=version, environment="prod",
                     reason=f"{verdicts['prod'].reason}; {prod.reason}",
                     details={"previous_version": prod.previous_version, "checks": prod.checks,
                              "approvers": list(verdicts["prod"].approvers)})

    @dg.job(name=f"{agent.name}_promotion_job",
            tags=rollout_tags(agent.name, "prod"),
            description="Staging, then the production canary rollout with bake-time health checks; "
                        "only for versions with enough valid signed approvals (approvers.yaml). The "
                        "champion alias moves only when the canary stays healthy.")
    def promotion_job():
        promote()

    return promotion_job


def build_rollback_job(agent) -> dg.JobDefinition:
    @dg.op(name=f"{agent.name}_rollback", tags={"kind": "mlflow"})
    def rollback(context: dg.OpExecutionContext, config: RollbackConfig, mlflow_store: MlflowResource,
                 deployer: Deployer, audit: AuditLog) -> None:
        from agentops_pipelines.governance.digests import model_artifacts_sha256

        client = mlflow_store.configure()
        env = config.environment
        if env not in (Environment.STAGING, Environment.PROD):
            raise dg.Failure(f"rollback is for {', '.join(GUARDED_ENVIRONMENTS)}, not {env!r}")
        with rollout_lock(audit, agent.name, env, f"rollback_job:{context.run_id[:8]}", context.log.info):
            current = deployer.status(env, agent=agent.name)
            bad = config.bad_version or (current.version if current else "")
            if not bad:
                raise dg.Failure(f"nothing serves in {env} and no bad_version was given: nothing to roll back")
            if current is not None and current.version != bad and current.canary_version != bad:
                context.log.info("%s serves version %s, not %s: nothing to roll back", env, current.version, bad)
                return
            log = audit.verify()
            if not log.ok:
                raise dg.Failure(f"ROLLBACK IMPOSSIBLE: the audit log does not verify, so the last stable "
                                 f"version cannot be trusted ({'; '.join(log.problems)}). A person must act.")
            stable = elig.last_stable_version(log.entries, agent.name, exclude={bad})
            registration = elig.registration(log.entries, agent.name, stable) if stable else None
            if stable and (registration is None
                           or model_artifacts_sha256(client, agent.name, stable) != registration.artifacts_sha256):
                context.log.error("version %s's artifacts differ from its registration: not a rollback target", stable)
                stable = None
            if stable is None:
                audit.record("rollback_impossible", agent.name, actor=config.actor, version=bad, environment=env,
                             reason=config.reason)
                raise dg.Failure(f"ROLLBACK IMPOSSIBLE: no stable version of {agent.name} left to roll back to "
                                 f"from version {bad} in {env} ({config.reason}). Stopping here; a person must act.")
            if current is not None and current.version == stable:
                context.log.info("%s already serves stable version %s", env, stable)
            else:
                deployed = deployer.deploy(env, f"models:/{agent.name}/{stable}", stable)
                observe_deployment(context, agent.name, env, stable, deployed.url, rolled_back_from=bad,
                                  reason=config.reason)
        if env == "prod":
            client.set_registered_model_alias(agent.name, Alias.CHAMPION, stable)
        approvals.show(client, agent.name, bad, **{VersionTag.ROLLED_BACK: config.reason,
                                                   VersionTag.ROLLED_BACK_AT: approvals.now()})
        audit.record("rollback", agent.name, actor=config.actor, version=bad, environment=env,
                     reason=config.reason, details={"to_version": stable})
        context.log.warning("rolled %s back from version %s to %s: %s", env, bad, stable, config.reason)

    @dg.job(name=f"{agent.name}_rollback_job", tags={RunTag.AGENT: agent.name},
            description="Back to the last stable version (promoted before, never rolled back or frozen "
                        "since), the bad one recorded as rolled back with the reason.")
    def rollback_job():
        rollback()

    return rollback_job
