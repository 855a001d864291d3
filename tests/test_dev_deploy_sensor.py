"""The dev-deploy sensor deploys each newly registered version once, and never what already serves."""

import dagster as dg
import pytest

from tests.helpers import AGENT, register_versions, sensor


def registered(defs, instance, version: str) -> None:
    """A registration as the sensor sees it: the version in the lake, a materialization event."""
    defs.resources["lake"].write_record(f"{AGENT}/registered_version", {"version": version}, run_id=f"fixture-{version}")
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey([AGENT, "registered_version"])))


def tick(defs, instance, cursor=None):
    """One evaluation as the daemon runs it: run requests, skip message, new cursor."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                  resources=defs.resources)
    data = sensor(defs, "dev_deploy_sensor").evaluate_tick(ctx)
    return list(data.run_requests or []), data.skip_message, data.cursor


@pytest.mark.slow
def test_dev_deploy_sensor_skips_the_version_already_serving(defs, instance, home):
    tracking = f"sqlite:///{home}/mlflow/mlflow.db"
    defs.resources["mlflow_store"].configure()
    v1, v2 = register_versions(tracking, 2)
    registered(defs, instance, v1)

    (request,), _, _ = tick(defs, instance)
    assert request.partition_key == "dev"
    assert request.run_config["ops"][f"{AGENT}__deployment"]["config"]["version"] == v1

    # The version is deployed (e.g. by `agentops demo`); the stack starts with a fresh cursor.
    deployer = defs.resources["deployer"]
    deployer.deploy("dev", f"models:/{AGENT}/{v1}", v1)
    requests, skip, cursor = tick(defs, instance)
    assert requests == [] and f"version {v1} already serves in dev" in skip

    registered(defs, instance, v2)
    (request,), _, _ = tick(defs, instance, cursor)
    assert request.run_config["ops"][f"{AGENT}__deployment"]["config"]["version"] == v2
