"""``approval_sensor``: reviewers' signed decisions on registered versions → promotion, or a refusal.

A decision arrives as a DSSE envelope in the model-version tag ``agentops.decision.<reviewer>``
(``agentops approve|reject`` puts it there; a reviewer in the MLflow UI can paste one that
``agentops approve --print`` made). Each tick, for each version whose decision tags changed, the
sensor verifies every new envelope against the approvers file and records it in the audit log: a
valid one as ``approve``/``reject``, anything else (a forged or unsigned tag, a non-approver, a
statement about another version) as ``approval_refused`` with the reason. Then it decides from the
verified audit log alone (governance/eligibility.py): the furthest environment the policy allows
(staging, or prod once it has enough distinct approvers) gets a promotion run. The run key names
the version, the target and the approvers, so the same decisions never promote twice, across
restarts, and a second approver later moves the version on from staging to prod.
"""

import hashlib
import json

import dagster as dg

from agentops_pipelines.governance import approvals
from agentops_pipelines.governance import eligibility as elig
from agentops_pipelines.governance.policy import PolicyError
from agentops_pipelines.operations import PromotionConfig
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.governance import GovernanceResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.vocabulary import (
    DECISION_TAG_PREFIX,
    RunTag,
    VersionTag,
    rollout_tags,
)


def _fingerprint(tags: dict) -> str | None:
    """What the sensor has seen of a version's decisions; None when there is none."""
    decision_tags = {k: v for k, v in tags.items() if k.startswith(DECISION_TAG_PREFIX)}
    # A person setting approval_status=approved|rejected by hand is a request to look at (it is
    # refused as unsigned); the sensor's own view values never equal those two words.
    request = tags.get(VersionTag.STATUS) in ("approved", "rejected")
    if not decision_tags and not request:
        return None
    raw = json.dumps([sorted(decision_tags.items()), [tags.get(t) for t in (
        VersionTag.STATUS, VersionTag.REVIEWER, VersionTag.DECIDED_AT)] if request else None])
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def _reached(entries, agent: str, version: str) -> set[str]:
    """Environments ``version`` was deployed to by a promotion and not rolled back from since."""
    reached: set[str] = set()
    for e in entries:
        if e.agent == agent and e.version == version and e.action in ("deploy", "promote") and e.environment:
            reached.add(e.environment)
    return reached if elig.blocked(entries, agent, version) is None else set()


def build_approval_sensor(agent, promotion_job: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(name=f"{agent.name}_approval_sensor", job=promotion_job, minimum_interval_seconds=15,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Signed reviewer decisions → promotion (staging, then the production canary).")
    def approval_sensor(context: dg.SensorEvaluationContext, mlflow_store: MlflowResource, audit: AuditLog,
                        governance: GovernanceResource):
        handled = json.loads(context.cursor) if context.cursor else {}
        try:
            client = mlflow_store.configure()
            versions = client.search_model_versions(f"name='{agent.name}'")
        except Exception as exc:  # noqa: BLE001
            return dg.SkipReason(f"MLflow at {mlflow_store.tracking_uri} is unreachable ({type(exc).__name__}); "
                                 "cursor kept")
        pending = [(mv, fp) for mv in sorted(versions, key=lambda m: int(m.version))
                   if (fp := _fingerprint(mv.tags or {})) and handled.get(str(mv.version)) != fp]
        if not pending:
            return dg.SkipReason("no new decision")
        try:
            policy = governance.policy(agent.name)
        except PolicyError as exc:
            return dg.SkipReason(f"approvals wait: {exc}")
        log = audit.verify()
        if not log.ok:  # nothing can be recorded or trusted: say so every tick until a person acts
            return dg.SkipReason(log.summary())
        actor = "approval_sensor"
        requests, notes, refused = [], [], {}
        for mv, _fp in pending:
            version = str(mv.version)
            serving_in = elig.guarded_environment_serving(log.entries, agent.name, version)
            handled_notes, refused[version] = approvals.collect_decisions(
                client, audit.store, policy, agent.name, version, mv.tags or {}, actor, serving_in)
            notes += handled_notes
        log = audit.verify()
        for mv, fp in pending:
            version = str(mv.version)
            target, verdict = elig.highest_allowed(log, policy, agent.name, version)
            reached = _reached(log.entries, agent.name, version)
            if target and target not in reached:
                requests.append(dg.RunRequest(
                    run_key=f"promote-{version}-{target}-{'+'.join(verdict.approvers) or 'staging'}",
                    run_config=dg.RunConfig(ops={f"{agent.name}_promote": PromotionConfig(version=version, target=target)}),
                    tags={**rollout_tags(agent.name, target), RunTag.VERSION: version,
                          RunTag.REVIEWER: ",".join(verdict.approvers)}))
                approvals.show(client, agent.name, version, **{VersionTag.STATUS: f"approved for {target}",
                                                               VersionTag.REVIEWER: ", ".join(verdict.approvers),
                                                               VersionTag.REFUSAL: ""})
                notes.append(f"v{version}: promoting to {target} ({verdict.reason})")
            elif target:
                notes.append(f"v{version}: already in {target}")
            else:
                if verdict.rejected_by:
                    status = "rejected (signed)"
                else:
                    status = "pending approvals" if verdict.missing_approvals else "refused"
                approvals.show(client, agent.name, version, **{
                    VersionTag.STATUS: status, VersionTag.REFUSAL: "; ".join(refused[version] + [verdict.reason]),
                    VersionTag.REVIEWER: ", ".join(verdict.approvers)})
                if status == "refused":
                    audit.record("approval_refused", agent.name, actor=actor, version=version, reason=verdict.reason,
                                 details={"fingerprint": fp})
                notes.append(f"v{version}: {status} ({verdict.reason})")
            handled[version] = fp
        context.log.info("; ".join(notes))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(handled),
                               skip_reason=None if requests else "; ".join(notes))

    return approval_sensor
