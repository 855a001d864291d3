"""One agent's lifecycle: its assets, gates, jobs and sensors, under its own key prefix.

dataset → customer_features → training_set → trained_agent → evaluation_report →
registered_version → deployment[dev|staging|prod]; trained_agent → trajectory_evaluation →
registered_version (its blocking trajectory_gate also holds registration)

Tables travel through the lake; results (trained run, gate records, registered version) through
the lake's records, as inputs (resources/io_manager.py). ARCHITECTURE.md, "How assets hand data on".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.assets.checks import build_evaluation_gate
from agentops_pipelines.assets.dataset import build_dataset_asset
from agentops_pipelines.assets.deployment import DeploymentConfig, build_deployment_asset
from agentops_pipelines.assets.drift import build_drift_asset
from agentops_pipelines.assets.evaluation import build_evaluation_asset
from agentops_pipelines.assets.features import build_feature_assets
from agentops_pipelines.assets.registry import build_registry_asset
from agentops_pipelines.assets.training import build_training_asset
from agentops_pipelines.assets.trajectory import build_trajectory_asset, build_trajectory_gate
from agentops_pipelines.operations import build_promotion_job, build_rollback_job
from agentops_pipelines.partitions import environments
from agentops_pipelines.resources.deployers import Deployer
from agentops_pipelines.resources.io_manager import record_table
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.sensors.approvals import build_approval_sensor
from agentops_pipelines.sensors.drift import build_drift_sensor
from agentops_pipelines.sensors.mlflow_runs import build_mlflow_run_sensor
from agentops_pipelines.sensors.prometheus_alerts import (
    build_prometheus_alert_sensor,
    build_promotion_failure_sensor,
)
from agentops_pipelines.vocabulary import RunTag, rollout_tags


@dataclass
class Lifecycle:
    agent: Agent
    assets: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    jobs: dict[str, object] = field(default_factory=dict)
    sensors: list = field(default_factory=list)
    schedules: list = field(default_factory=list)


def build_lifecycle(agent: Agent, inference_log_root: str) -> Lifecycle:
    dataset = build_dataset_asset(agent)
    customer_features, training_set = build_feature_assets(agent, dataset)
    trained = build_training_asset(agent, training_set)
    evaluation = build_evaluation_asset(agent, trained, training_set)
    trajectory = build_trajectory_asset(agent, trained)
    registered = build_registry_asset(agent, evaluation, trajectory)
    deployment = build_deployment_asset(agent, registered)
    drift = build_drift_asset(agent, deployment, training_set, inference_log_root)
    checks = [build_evaluation_gate(evaluation), build_trajectory_gate(trajectory)]  # the dataset's gates are its check_specs

    ingest = dg.define_asset_job(
        f"{agent.name}_ingest_job", selection=dg.AssetSelection.assets(dataset, customer_features),
        description="One day of requests through the gates into the feature store.")
    training = dg.define_asset_job(
        f"{agent.name}_training_job",
        selection=dg.AssetSelection.assets(training_set, trained, evaluation, trajectory, registered),
        description="Training set → trained agent → evaluation report → registered version.")
    retraining = dg.define_asset_job(
        f"{agent.name}_retraining_job",
        selection=dg.AssetSelection.assets(training_set, trained, evaluation, trajectory, registered),
        description="The training job, launched by drift or the weekly schedule.")
    reevaluation = dg.define_asset_job(
        f"{agent.name}_reevaluation_job", selection=dg.AssetSelection.assets(evaluation, trajectory, registered),
        description="Evaluate one MLflow run's model against the champion and register it if it passes.")
    drift_job = dg.define_asset_job(
        f"{agent.name}_drift_job", selection=dg.AssetSelection.assets(drift),
        description="One day of production traffic against the training data.")
    promotion = build_promotion_job(agent)
    rollback = build_rollback_job(agent)
    # Every deploy run carries its environment as a run tag (however it is launched: UI, CLI,
    # sensor), so dagster.yaml's one-run-per-environment limit queues the others.
    deploy_config = dg.PartitionedConfig(
        partitions_def=environments, run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=lambda key: rollout_tags(agent.name, key))
    deploy = dg.define_asset_job(
        f"{agent.name}_deploy_job", selection=dg.AssetSelection.assets(deployment), config=deploy_config,
        description="Deploy a version to one environment (staging and prod: approved versions only).",
        tags={RunTag.AGENT: agent.name})

    @dg.asset_sensor(asset_key=registered.key, job=deploy, name=f"{agent.name}_dev_deploy_sensor",
                     default_status=dg.DefaultSensorStatus.RUNNING,
                     description="Every newly registered version goes to dev, unless it already serves there.")
    def dev_deploy_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry, deployer: Deployer,
                          lake: LakeResource):
        # The version the registering run stored (a registration reported without a run: the current one).
        registration = lake.read_record(record_table(registered.key), run_id=asset_event.run_id)
        if registration is None:
            return dg.SkipReason(f"run {asset_event.run_id or '(none)'} stored no registered version in the lake")
        version = registration["version"]
        try:
            serving = deployer.status("dev", agent=agent.name)
        except Exception as exc:  # noqa: BLE001 - an unreachable deployer: the deploy run says why
            context.log.warning("could not read dev's status (%s); deploying version %s", exc, version)
            serving = None
        if serving is not None and str(serving.version) == version:
            # e.g. the stack starts after `agentops demo` deployed it: nothing to do.
            return dg.SkipReason(f"version {version} already serves in dev at {serving.url}")
        return dg.RunRequest(
            run_key=f"dev-{version}-{asset_event.run_id}", partition_key="dev",
            run_config=dg.RunConfig(ops={f"{agent.name}__deployment": DeploymentConfig(version=version)}),
            tags={**rollout_tags(agent.name, "dev"), RunTag.VERSION: version},
        )

    daily_ingest = dg.build_schedule_from_partitioned_job(
        ingest, hour_of_day=0, minute_of_hour=30, name=f"{agent.name}_daily_ingest")
    @dg.schedule(name=f"{agent.name}_daily_drift", job=drift_job, cron_schedule="0 1 * * *",
                 execution_timezone="UTC", description="Yesterday's production traffic, once the day is complete.")
    def daily_drift(context: dg.ScheduleEvaluationContext):
        day = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
        return dg.RunRequest(run_key=f"drift-{day}", partition_key=day)
    weekly_retraining = dg.ScheduleDefinition(
        name=f"{agent.name}_weekly_retraining", job=retraining, cron_schedule="0 3 * * 1",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Optional: retrain every Monday on the newest validated days.")

    return Lifecycle(
        agent=agent,
        assets=[dataset, customer_features, training_set, trained, evaluation, trajectory, registered, deployment, drift],
        checks=checks,
        jobs={"ingest": ingest, "training": training, "retraining": retraining, "reevaluation": reevaluation,
              "deploy": deploy, "promotion": promotion, "rollback": rollback, "drift": drift_job},
        sensors=[dev_deploy_sensor, build_mlflow_run_sensor(agent, reevaluation),
                 build_approval_sensor(agent, promotion), build_prometheus_alert_sensor(agent, rollback),
                 build_promotion_failure_sensor(agent, promotion, rollback),
                 build_drift_sensor(agent, drift, retraining)],
        schedules=[daily_ingest, daily_drift, weekly_retraining],
    )
