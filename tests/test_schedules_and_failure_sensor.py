"""The daily drift schedule and the promotion-failure sensor, evaluated as the daemon would."""

from datetime import UTC, datetime

import dagster as dg

from agentops_pipelines.operations import PromotionConfig
from tests.helpers import AGENT


def test_daily_drift_scores_yesterday_once_the_day_is_complete(defs):
    schedule = next(s for s in defs.schedules if s.name == f"{AGENT}_daily_drift")
    assert schedule.cron_schedule == "0 1 * * *"
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def(),
                                        scheduled_execution_time=datetime(2026, 12, 2, 1, 0, tzinfo=UTC))
        request = schedule.evaluate_tick(ctx).run_requests[0]
    assert (request.partition_key, request.run_key) == ("2026-12-01", "drift-2026-12-01")


def test_a_failed_promotion_requests_a_rollback_of_prod(defs, instance):
    job = defs.resolve_job_def(f"{AGENT}_promotion_job")
    failed = job.execute_in_process(instance=instance, raise_on_error=False, tags={"agentops/version": "7"},
                                    run_config=dg.RunConfig(ops={f"{AGENT}_promote": PromotionConfig(version="7")}))
    assert not failed.success  # no such version
    sensor = next(s for s in defs.sensors if s.name == f"{AGENT}_promotion_failure_sensor")
    ctx = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=failed.dagster_run,
        dagster_event=failed.get_run_failure_event()).for_run_failure()
    request = sensor(ctx)
    assert request.run_key == f"rollback-after-{failed.run_id}"
    config = request.run_config["ops"][f"{AGENT}_rollback"]["config"]
    assert (config["environment"], config["bad_version"], config["actor"]) == ("prod", "7", "promotion_failure_sensor")
    assert config["reason"].startswith(f"promotion run {failed.run_id[:8]} failed")
    assert request.tags["agentops/environment"] == "prod"
