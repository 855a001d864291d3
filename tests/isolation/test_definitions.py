"""Two agents in one Definitions: everything named per agent, nothing defaulting to the first."""

from __future__ import annotations

import pytest

from agentops_pipelines.definitions import (
    AgentsError,
    build_definitions,
    build_deployer,
    check_agents,
)
from agentops_pipelines.resources.settings import load_settings
from tests.isolation.conftest import A, B, BillingAgent, agents


def test_each_agent_has_its_own_assets_jobs_sensors_and_schedules(defs):
    keys = {key.path[0] for key in defs.resolve_all_asset_keys()}
    assert keys == {A, B}
    graph = defs.resolve_asset_graph()
    for key in defs.resolve_all_asset_keys():  # groups are per agent too
        group = graph.get(key).group_name
        assert group.startswith(key.path[0]), (key, group)
    names = {
        "jobs": [j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")],
        "sensors": [s.name for s in defs.sensors],
        "schedules": [s.name for s in defs.schedules],
    }
    for kind, found in names.items():
        assert len(found) == len(set(found)), kind
        mine = {n.removeprefix(f"{A}_") for n in found if n.startswith(f"{A}_")}
        theirs = {n.removeprefix(f"{B}_") for n in found if n.startswith(f"{B}_")}
        assert mine == theirs and mine, kind  # the same lifecycle, under each agent's name
        assert len(mine) + len(theirs) == len(found), kind
    # jobs launched for an agent carry its tag (the queue and the UI filter on it)
    for job in defs.resolve_all_job_defs():
        owner = A if job.name.startswith(f"{A}_") else B if job.name.startswith(f"{B}_") else None
        if owner and "agentops/agent" in job.tags:
            assert job.tags["agentops/agent"] == owner, job.name


def test_one_deployer_serves_every_agent_and_has_no_agent_of_its_own(defs):
    deployer = defs.resources["deployer"]
    assert deployer.agent == ""  # each call names its agent: nothing falls back to the first


def test_serving_ports_by_environment_alone_are_refused_with_two_agents(home, monkeypatch):
    monkeypatch.setenv("AGENTOPS_SERVING_PORTS", "dev=8081")
    with pytest.raises(AgentsError, match=r"names environment 'dev' without an agent.*2 agents.*<agent>/dev=8081"):
        build_definitions(load_settings(), agents=agents())
    # one agent: the port is that agent's, stated explicitly
    assert build_deployer(load_settings(), [A]).ports == {f"{A}/dev": 8081}


def test_one_port_for_two_agents_is_refused(home, monkeypatch):
    monkeypatch.setenv("AGENTOPS_SERVING_PORTS", f"{A}/prod=8083,{B}/prod=8083")
    with pytest.raises(AgentsError, match=f"port 8083 to both {A}/prod and {B}/prod"):
        build_definitions(load_settings(), agents=agents())
    monkeypatch.setenv("AGENTOPS_SERVING_PORTS", f"{A}/prod=8083,{B}/prod=8093")
    deployer = build_definitions(load_settings(), agents=agents()).resources["deployer"]
    assert deployer.port("prod", A) == 8083 and deployer.port("prod", B) == 8093


def test_a_port_for_an_unknown_agent_is_refused(home, monkeypatch):
    monkeypatch.setenv("AGENTOPS_SERVING_PORTS", "nobody/prod=8083")
    with pytest.raises(AgentsError, match="no agent 'nobody'"):
        build_definitions(load_settings(), agents=agents())


def test_agents_whose_names_would_meet_are_refused():
    class Dashed(BillingAgent):
        name = "support-agent"  # the same Kubernetes name as support_agent

    with pytest.raises(AgentsError, match="'support-agent' and 'support_agent'|'support_agent' and"):
        check_agents([agents()[0], Dashed()])
    with pytest.raises(AgentsError, match="twice"):
        check_agents([agents()[0], agents()[0]])

    class TooLong(BillingAgent):
        name = "a" * 60

    with pytest.raises(AgentsError, match="longer than 63"):
        check_agents([TooLong()])


def test_drift_thresholds_are_per_agent(defs):
    descriptions = {s.name: s.description for s in defs.sensors if s.name.endswith("_drift_sensor")}
    assert "0.5" in descriptions[f"{A}_drift_sensor"] and "0.8" in descriptions[f"{B}_drift_sensor"]


def test_the_run_queue_serializes_rollouts_per_agent_and_environment(defs):
    """A rollout of one agent never waits in the queue behind another agent's (dagster.yaml limits
    one run per value of agentops/rollout, which is <agent>/<environment>)."""
    import yaml

    from agentops_pipelines.resources.settings import PROJECT_ROOT
    from agentops_pipelines.vocabulary import RunTag

    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["run_coordinator"]["config"]
    assert config["tag_concurrency_limits"] == [
        {"key": RunTag.ROLLOUT, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    tags = {agent: defs.resolve_job_def(f"{agent}_deploy_job").partitioned_config.get_tags_for_partition_key("prod")
            for agent in (A, B)}
    assert tags[A][RunTag.ROLLOUT] == f"{A}/prod" and tags[B][RunTag.ROLLOUT] == f"{B}/prod"
    assert defs.resolve_job_def(f"{B}_promotion_job").tags[RunTag.ROLLOUT] == f"{B}/prod"
