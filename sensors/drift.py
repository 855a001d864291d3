"""``drift_sensor``: a drift report over the agent's threshold → retraining, the version frozen.

Freezing tags the drifting version ``frozen=true`` so no approval can promote it further; the run
carries the drifted features in its tags. One retraining per drift report (the run key is the
report's event id), so neither a daemon restart nor a re-read repeats it.

The event log says *that* a report was made (its storage id is the cursor); *what* it found is
the report's lake record (``assets/drift.py``, ``drift_record``), read for the run that made it.
"""

import dagster as dg

from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.io_manager import record_table
from agentops_pipelines.resources.lake import UNPARTITIONED, LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.vocabulary import VersionTag


def build_drift_sensor(agent, drift_report: dg.AssetsDefinition, retraining_job) -> dg.SensorDefinition:
    threshold = getattr(agent, "drift_threshold", 0.5)

    @dg.sensor(name=f"{agent.name}_drift_sensor", job=retraining_job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Drift share at or over {threshold} → retraining; the drifting version frozen.")
    def drift_sensor(context: dg.SensorEvaluationContext, mlflow_store: MlflowResource, audit: AuditLog,
                     lake: LakeResource):
        after = int(context.cursor) if context.cursor else None
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=drift_report.key, after_storage_id=after), limit=100, ascending=True).records
        if not records:
            return dg.SkipReason("no new drift report")
        requests, notes, cursor = [], [], after
        for record in records:
            partition = record.asset_materialization.partition
            report = lake.read_record(record_table(drift_report.key), partition or UNPARTITIONED,
                                      run_id=record.run_id or None)
            share = report.get("drift_share") if report else None
            if report is None:
                notes.append(f"{partition}: run {record.run_id or '(none)'} stored no drift record in the lake")
            elif share is None:
                notes.append(f"{partition}: {report.get('verdict') or 'no score'}")
            elif share < threshold:
                notes.append(f"{partition}: share {share:.2f} under {threshold}")
            else:
                version, env = str(report["serving_version"]), report["environment"]
                drifted = list(report.get("drifted_columns") or [])
                reason = f"drift share {share:.2f} >= {threshold} on {partition} in {env}: {', '.join(drifted)}"
                try:
                    _freeze(mlflow_store, audit, agent.name, version, env, reason, drifted, partition)
                except Exception as exc:  # noqa: BLE001 - keep the cursor before this report: retried next tick
                    notes.append(f"MLflow at {mlflow_store.tracking_uri} unreachable ({type(exc).__name__}); "
                                 f"report {partition} kept for the next tick")
                    break
                requests.append(dg.RunRequest(
                    run_key=f"retrain-{partition}-{record.storage_id}",
                    tags={"agentops/reason": "drift", "agentops/drift_share": f"{share:.3f}",
                          "agentops/drifted_features": ",".join(drifted), "agentops/frozen_version": version}))
            cursor = record.storage_id
        return dg.SensorResult(run_requests=requests, cursor=None if cursor is None else str(cursor),
                               skip_reason=None if requests else "; ".join(notes) or "no drift")

    return drift_sensor


def _freeze(mlflow_store, audit, agent_name, version, env, reason, drifted, partition) -> None:
    from agentops_pipelines.governance.eligibility import history

    client = mlflow_store.configure()
    state = history(audit.entries(agent_name, version=version), agent_name, version).get("freeze")
    if state is not None and state.action == "freeze":  # the audit log says so; the tag is only a view
        return
    client.set_model_version_tag(agent_name, version, VersionTag.FROZEN, "true")
    client.set_model_version_tag(agent_name, version, VersionTag.FROZEN_REASON, reason)
    audit.record("freeze", agent_name, actor="drift_sensor", version=version, environment=env,
                 reason=reason, details={"drifted_columns": drifted, "partition": partition})
