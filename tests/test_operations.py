"""Rollback against real serving processes and a real MLflow registry."""

import json
import urllib.request

import dagster as dg
import pytest

from agentops_pipelines.operations import RollbackConfig
from agentops_pipelines.vocabulary import VersionTag as gov
from tests.helpers import AGENT, promoted, register_versions


def served_version(url: str) -> str:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        return str(json.loads(resp.read())["version"])


def rollback(defs, instance, **config):
    job = defs.resolve_job_def(f"{AGENT}_rollback_job")
    return job.execute_in_process(instance=instance, raise_on_error=False,
                                  run_config=dg.RunConfig(ops={f"{AGENT}_rollback": RollbackConfig(**config)}))


def test_the_rollout_config_is_the_rollout_policy_as_run_config():
    """One definition: every field of the policy, with its defaults, and values passed through."""
    from dataclasses import asdict

    from agentops_pipelines.assets.deployment import DeploymentConfig
    from agentops_pipelines.operations import PromotionConfig, RolloutConfig
    from agentops_pipelines.rollout import RolloutPolicy

    assert RolloutConfig().policy() == RolloutPolicy()
    given = {"canary_share": 0.5, "bake_seconds": 4.0, "min_requests": 3, "max_bake_seconds": 9.0}
    assert asdict(PromotionConfig(version="2", **given).policy()) == {**asdict(RolloutPolicy()), **given}
    assert DeploymentConfig(**given).policy() == RolloutPolicy(**given)


@pytest.mark.slow
def test_rollback_returns_to_the_last_stable_version(defs, instance):
    store = defs.resources["mlflow_store"]
    client = store.configure()
    audit = defs.resources["audit"].store
    v1, v2 = register_versions(store.tracking_uri, 2, audit=audit)
    promoted(audit, v1)
    promoted(audit, v2)
    client.set_registered_model_alias(AGENT, "champion", v2)
    deployer = defs.resources["deployer"]
    deployed = deployer.deploy("prod", f"models:/{AGENT}/{v2}", v2)

    result = rollback(defs, instance, environment="prod", reason="AgentHighErrorRate firing", actor="test")
    assert result.success
    assert served_version(deployed.url) == v1  # same listener, previous version
    assert str(client.get_registered_model(AGENT).aliases["champion"]) == v1
    assert client.get_model_version(AGENT, v2).tags[gov.ROLLED_BACK] == "AgentHighErrorRate firing"
    entry = defs.resources["audit"].entries(AGENT)[-1]
    assert (entry.action, entry.version, entry.environment, entry.details) == ("rollback", v2, "prod", {"to_version": v1})
    # The job ran no asset code: it observes deployment[prod] (now v1) and materializes nothing.
    assert result.get_asset_materialization_events() == []
    (observed,) = [e.asset_observation_data.asset_observation for e in result.get_asset_observation_events()]
    assert (observed.asset_key.path, observed.partition) == ([AGENT, "deployment"], "prod")
    assert observed.metadata["version"].value == v1 and observed.metadata["rolled_back_from"].value == v2

    # Running it again (a repeated trigger) changes nothing and does not roll back further.
    assert rollback(defs, instance, environment="prod", reason="again", bad_version=v2, actor="test").success
    assert served_version(deployed.url) == v1


@pytest.mark.slow
def test_rollback_with_no_stable_version_stops_loudly(defs, instance):
    store = defs.resources["mlflow_store"]
    client = store.configure()
    (v1,) = register_versions(store.tracking_uri, 1, audit=defs.resources["audit"].store)
    deployed = defs.resources["deployer"].deploy("prod", f"models:/{AGENT}/{v1}", v1)
    result = rollback(defs, instance, environment="prod", reason="AgentHighLatencyP99 firing", actor="test")
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "ROLLBACK IMPOSSIBLE" in error.message + str(error.cause)
    assert served_version(deployed.url) == v1  # nothing torn down
    assert gov.ROLLED_BACK not in client.get_model_version(AGENT, v1).tags
    assert defs.resources["audit"].entries(AGENT)[-1].action == "rollback_impossible"
