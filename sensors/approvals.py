"""``approval_sensor``: a reviewer's decision on a registered version → promotion, or a refusal.

Decisions arrive as model-version tags (``agentops approve`` or the MLflow UI). An approval starts
``promotion_job`` only if the reviewer is among the agent's approvers and the version passed its
evaluation gate, is not frozen and was never rolled back; otherwise the version is tagged
``approval_status=refused`` with the reason. Both outcomes go to the audit log. The run key is the
version and the decision's time, so the same decision never promotes twice.
"""

import json

import dagster as dg

from agentops_pipelines import governance as gov
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.mlflow import MlflowResource


def _audited(audit: AuditLog, agent: str, version: str, action: str, actor: str, since: str) -> bool:
    return any(e.action == action and e.actor == actor and e.at[:19] >= since[:19]
               for e in audit.entries(agent, version=version))


def build_approval_sensor(agent, promotion_job: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(name=f"{agent.name}_approval_sensor", job=promotion_job, minimum_interval_seconds=15,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Reviewer approvals → promotion (staging, then the production canary).")
    def approval_sensor(context: dg.SensorEvaluationContext, mlflow_store: MlflowResource, audit: AuditLog):
        handled = json.loads(context.cursor) if context.cursor else {}
        try:
            client = mlflow_store.configure()
            versions = client.search_model_versions(f"name='{agent.name}'")
        except Exception as exc:  # noqa: BLE001
            return dg.SkipReason(f"MLflow at {mlflow_store.tracking_uri} is unreachable ({type(exc).__name__}); "
                                 "cursor kept")
        allowed = gov.approvers(agent)
        requests, notes = [], []
        for mv in sorted(versions, key=lambda m: int(m.version)):
            tags = mv.tags or {}
            status, decided_at, reviewer = tags.get(gov.STATUS), tags.get(gov.DECIDED_AT, ""), tags.get(gov.REVIEWER, "")
            if status not in ("approved", "rejected") or handled.get(str(mv.version)) == decided_at:
                continue
            version = str(mv.version)
            action = "approve" if status == "approved" else "reject"
            if reviewer and not _audited(audit, agent.name, version, action, reviewer, decided_at):
                audit.record(action, agent.name, actor=reviewer, version=version,
                             reason=tags.get(gov.COMMENT, ""), details={"source": "mlflow model version tags"})
            if status == "approved":
                verdict = gov.eligibility(tags, allowed)
                if verdict.allowed:
                    requests.append(dg.RunRequest(
                        run_key=f"promote-{version}-{decided_at}",
                        run_config={"ops": {f"{agent.name}_promote": {"config": {"version": version, "reviewer": reviewer}}}},
                        tags={"agentops/environment": "prod", "agentops/version": version, "agentops/reviewer": reviewer}))
                    notes.append(f"v{version}: promoting ({verdict.reason})")
                else:
                    client.set_model_version_tag(agent.name, version, gov.STATUS, "refused")
                    client.set_model_version_tag(agent.name, version, gov.REFUSAL, verdict.reason)
                    audit.record("approval_refused", agent.name, actor="approval_sensor", version=version,
                                 reason=verdict.reason, details={"reviewer": reviewer})
                    notes.append(f"v{version}: approval refused ({verdict.reason})")
            else:
                notes.append(f"v{version}: rejected by {reviewer}")
            handled[version] = decided_at
        if not notes:
            return dg.SkipReason("no new decision")
        context.log.info("; ".join(notes))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(handled),
                               skip_reason=None if requests else "; ".join(notes))

    return approval_sensor
