"""Promotion: staging, then the production canary with bake-time health checks, on real serving."""

import json
import threading
import urllib.error
import urllib.request

import cloudpickle
import dagster as dg
import pytest

from agentops_pipelines.operations import PromotionConfig
from agentops_pipelines.vocabulary import VersionTag as gov
from tests import faults
from tests.e2e.test_prometheus_alerts import Traffic
from tests.helpers import AGENT, evaluate, promoted, register_versions

FAST = {"canary_share": 0.5, "bake_seconds": 4.0, "check_interval_seconds": 1.0}


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        return json.loads(resp.read())


def promote(defs, instance, version, **config):
    job = defs.resolve_job_def(f"{AGENT}_promotion_job")
    run_config = dg.RunConfig(ops={f"{AGENT}_promote": PromotionConfig(version=version, **{**FAST, **config})})
    return job.execute_in_process(instance=instance, raise_on_error=False, run_config=run_config)


@pytest.fixture
def versions(defs, instance, reviewers):
    """v1 stable in prod; v2 a good candidate; v3 fails on requests containing 'boom'; v2 and v3
    carry alice's signed approval, verified into the audit log by the approval sensor."""
    reviewers.configure(["alice"])
    store = defs.resources["mlflow_store"]
    audit = defs.resources["audit"].store
    client = store.configure()
    v1, v2 = register_versions(store.tracking_uri, 2, audit=audit)
    cloudpickle.register_pickle_by_value(faults)
    try:
        (v3,) = register_versions(store.tracking_uri, 1, wrap=faults.FaultyRouter, audit=audit)
    finally:
        cloudpickle.unregister_pickle_by_value(faults)
    promoted(audit, v1)
    client.set_registered_model_alias(AGENT, "champion", v1)
    defs.resources["deployer"].deploy("prod", f"models:/{AGENT}/{v1}", v1)
    for v in (v2, v3):
        reviewers.decide(client, v, "alice")
    evaluate(defs, instance, "approval_sensor")
    return client, v1, v2, v3


@pytest.mark.slow
def test_a_healthy_canary_becomes_the_champion(defs, instance, versions):
    client, v1, v2, _ = versions
    prod = defs.resources["deployer"].status("prod")
    traffic = Traffic(prod.url, rate=30.0)
    try:
        result = promote(defs, instance, v2)
    finally:
        traffic.stop()
    assert result.success
    assert str(health(defs.resources["deployer"].status("staging").url)["version"]) == v2
    after = defs.resources["deployer"].status("prod")
    assert after.url == prod.url and after.version == v2 and after.canary_version is None  # same listener
    assert all(status == 200 for status in traffic.statuses)  # nothing lost while switching
    assert str(client.get_registered_model(AGENT).aliases["champion"]) == v2
    tags = client.get_model_version(AGENT, v2).tags
    assert tags[gov.STATUS] == "promoted" and tags[gov.PROMOTED_PROD]
    # The job ran no asset code: it observes each deployment partition it changed, and
    # materializes nothing.
    assert result.get_asset_materialization_events() == []
    observed = [e.asset_observation_data.asset_observation for e in result.get_asset_observation_events()]
    assert [(o.asset_key.path[-1], o.partition, o.metadata["version"].value) for o in observed] == [
        ("deployment", "staging", v2), ("deployment", "prod", v2)]
    actions = [(e.action, e.environment) for e in defs.resources["audit"].entries(AGENT)]
    assert ("deploy", "staging") in actions and ("promote", "prod") in actions


@pytest.mark.slow
def test_a_failing_canary_is_aborted_and_the_stable_version_keeps_serving(defs, instance, versions):
    client, v1, _, v3 = versions
    prod = defs.resources["deployer"].status("prod")
    traffic = Traffic(prod.url, rate=30.0)
    traffic.failing = 0.5
    try:
        result = promote(defs, instance, v3)
    finally:
        traffic.stop()
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "canary error rate" in error.message + str(error.cause)
    after = defs.resources["deployer"].status("prod")
    assert after.version == v1 and after.canary_version is None
    assert str(client.get_registered_model(AGENT).aliases["champion"]) == v1
    assert "canary failed" in client.get_model_version(AGENT, v3).tags[gov.ROLLED_BACK]
    entry = defs.resources["audit"].entries(AGENT)[-1]
    assert (entry.action, entry.version, entry.environment) == ("promotion_failed", v3, "prod")


def test_a_frozen_version_is_not_promoted(defs, instance, versions):
    client, v1, v2, _ = versions
    defs.resources["audit"].record("freeze", AGENT, actor="drift_sensor", version=v2, environment="prod",
                                   reason="drift share 0.6")
    result = promote(defs, instance, v2)
    assert not result.success
    assert defs.resources["deployer"].status("prod").version == v1
    assert defs.resources["deployer"].status("staging") is None


def _garbage(url: str, stop) -> None:
    """A hostile client: bad input for every customer (4xx), as fast as it can."""
    bodies = [b'{"inputs": [{"text": NaN, "customer_id": "C1"}]}', b"{",
              b'{"dataframe_split": {"columns": ["text", "text"], "data": [["a", "b"]]}}']
    i = 0
    while not stop.is_set():
        request = urllib.request.Request(f"{url}/invocations", data=bodies[i % len(bodies)],
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except urllib.error.HTTPError as e:
            assert e.code == 400
        i += 1


@pytest.mark.slow
def test_client_errors_cannot_fail_a_canary(defs, instance, versions):
    client, v1, v2, _ = versions
    prod = defs.resources["deployer"].status("prod")
    traffic, stop = Traffic(prod.url, rate=30.0), threading.Event()
    hostile = threading.Thread(target=_garbage, args=(prod.url, stop))
    hostile.start()
    try:
        result = promote(defs, instance, v2)
    finally:
        stop.set()
        hostile.join(10)
        traffic.stop()
    assert result.success
    assert defs.resources["deployer"].status("prod").version == v2


@pytest.mark.slow
def test_a_canary_without_traffic_is_not_promoted(defs, instance, versions):
    client, v1, v2, _ = versions
    result = promote(defs, instance, v2, max_bake_seconds=6.0)  # min_requests: 20 by default
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "fewer than the 20 needed to judge it" in error.message + str(error.cause)
    after = defs.resources["deployer"].status("prod")
    assert after.version == v1 and after.canary_version is None
    assert str(client.get_registered_model(AGENT).aliases["champion"]) == v1
