"""Each agent's customer features are its own Feast project: two agents ingesting the same day
keep separate values offline, in the registry and online (SQLite; Redis when reachable), and a
served model of one agent reads its own agent's values, never the other's.

Before: both agents wrote ``offline/customer_*/date=D.parquet`` and the one project's online
rows, so the agent that ingested last decided every agent's features (and served models).
"""

from __future__ import annotations

import os
import uuid
from datetime import date

import numpy as np
import pandas as pd
import pytest

from agentops_pipelines.data.generator import customer_ids, customer_snapshot
from agentops_pipelines.feature_repo.definitions import PROFILE_FEATURES
from agentops_pipelines.features.online import (
    OnlineLookup,
    agent_environ,
    agent_project,
    config_from_environ,
    default_home,
    served_config,
)
from tests.isolation.conftest import A, B

DAY = "2026-11-02"
SEEDS = {A: 7, B: 8}  # different generated customers per agent: their features must differ
CUSTOMERS = [f"C{i:05d}" for i in range(1, 41)]


def _ingest(defs, instance, agent: str, seed: int):
    job = defs.resolve_job_def(f"{agent}_ingest_job")
    config = {"ops": {f"{agent}__dataset": {"config": {"seed": seed, "rows_per_day": 300}}}}
    result = job.execute_in_process(instance=instance, partition_key=DAY, run_config=config,
                                    raise_on_error=False)
    assert result.success, agent


def _served_lookup(environ: dict[str, str], agent: str) -> dict[str, list]:
    """What a served model of ``agent`` reads: the environment its deployer gives it, read the
    way agentops_pipelines.agent.model reads it."""
    from agentops_pipelines.resources.deployers import (
        agent_serving_environment,
        serving_environment,
    )

    child = {**serving_environment(environ), **agent_serving_environment(serving_environment(environ), agent)}
    return OnlineLookup(config_from_environ(child, default_home(child)))(CUSTOMERS)


def _distinct_profiles() -> list[str]:
    """Profile features on which the two seeds' snapshots differ for the customers looked up."""
    a, b = (customer_snapshot(date.fromisoformat(DAY), seed=s).set_index("customer_id").loc[CUSTOMERS]
            for s in SEEDS.values())
    return [name for name in PROFILE_FEATURES if (a[name] != b[name]).any()]


@pytest.fixture
def defs(home):
    """Two agents with customer features and the support desk's labels (the billing agent of
    conftest gates out the generator's other tools), in one code location."""
    from agentops_pipelines.agent.support_desk import SupportDeskAgent
    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings

    class SecondDesk(SupportDeskAgent):
        name = B

    return build_definitions(load_settings(), agents=[SupportDeskAgent(), SecondDesk()])


@pytest.mark.slow
def test_two_agents_ingesting_the_same_day_keep_their_own_features(defs, instance):
    for agent, seed in SEEDS.items():  # B ingests last: before, its values replaced A's
        _ingest(defs, instance, agent, seed)
    feast = defs.resources["feast"]
    day = date.fromisoformat(DAY)
    differing = _distinct_profiles()
    assert differing, "the two seeds must give different customers for this test to mean anything"

    paths = set()
    for agent, seed in SEEDS.items():
        scoped = feast.for_agent(agent)
        assert scoped.project == agent_project(feast.project, agent)
        paths.add(scoped.partition_path("customer_profile", day))
        assert scoped.partition_path("customer_profile", day).exists()
        # the registry holds this agent's views under its project
        assert {v.name for v in scoped.store().list_feature_views()} == {"customer_profile", "customer_activity"}
        expected = customer_snapshot(day, seed=seed).set_index("customer_id").loc[CUSTOMERS]
        online = scoped.online_features(CUSTOMERS).set_index("customer_id")
        served = pd.DataFrame(_served_lookup(dict(os.environ), agent)).set_index("customer_id")
        # a served model given only the state folder (`mlflow models serve`, an in-process
        # evaluation) reads its own agent's store too, not the unscoped project (before: defaults)
        bare = {"AGENTOPS_HOME": os.environ["AGENTOPS_HOME"]}
        alone = pd.DataFrame(OnlineLookup(served_config(bare, agent))(CUSTOMERS)).set_index("customer_id")
        for name in differing:
            assert online[name].tolist() == expected[name].tolist(), (agent, name)
            assert served[name].tolist() == expected[name].tolist(), (agent, name, "served")
            assert alone[name].tolist() == expected[name].tolist(), (agent, name, "served with AGENTOPS_HOME only")
    assert len(paths) == 2  # each agent's offline partitions in its own folder
    # nothing was written to the shared (unscoped) project's offline folder
    assert not feast.partition_path("customer_profile", day).exists()


def _redis_or_skip():
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, db=13, socket_connect_timeout=1)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at 127.0.0.1:6379 ({exc})")
    return client


def _activity(escalations: int) -> pd.DataFrame:
    ids = customer_ids()
    return pd.DataFrame({"customer_id": ids, "requests_7d": np.full(len(ids), 3 * escalations, dtype="int64"),
                         "escalations_30d": np.full(len(ids), escalations, dtype="int64")})


def test_two_agents_keep_their_own_values_on_redis(tmp_path, monkeypatch):
    """Redis keys are per project: the same day, same customers, each agent reads its own counts,
    through the resource and through the environment its served model gets."""
    from agentops_pipelines.resources.feast import FeastResource

    client = _redis_or_skip()
    base_project = f"agentops_iso_{uuid.uuid4().hex[:8]}"
    feast = FeastResource(repo_dir=str(tmp_path / "feast"), registry=str(tmp_path / "feast" / "registry.db"),
                          online_store="redis://127.0.0.1:6379/13", project=base_project)
    day = date(2026, 11, 2)
    escalations = {A: 2, B: 9}
    try:
        for agent, count in escalations.items():
            scoped = feast.for_agent(agent)
            scoped.write_partition(day, customer_snapshot(day), _activity(count))
            scoped.apply()
            scoped.materialize(pd.Timestamp(day).to_pydatetime(), pd.Timestamp(day).to_pydatetime())
        environ = {"AGENTOPS_HOME": str(tmp_path), "AGENTOPS_FEAST_DIR": str(tmp_path / "feast"),
                   "AGENTOPS_FEAST_REGISTRY": str(tmp_path / "feast" / "registry.db"),
                   "AGENTOPS_FEAST_REDIS": "redis://127.0.0.1:6379/13", "AGENTOPS_FEAST_PROJECT": base_project}
        for agent, count in escalations.items():
            assert set(feast.for_agent(agent).online_features(CUSTOMERS)["escalations_30d"]) == {count}
            child = {**environ, **agent_environ(environ, agent)}
            assert child["AGENTOPS_FEAST_PROJECT"] == agent_project(base_project, agent)
            served = OnlineLookup(config_from_environ(child, default_home(child)))(CUSTOMERS)
            assert set(served["escalations_30d"]) == {count}, agent
        # the unscoped project has no online rows: nothing mixes through it
        assert not list(client.scan_iter(match=f"*{base_project}", count=1000))
    finally:
        for key in client.scan_iter(match=f"*{base_project}_*", count=1000):
            client.delete(key)


def test_agent_projects_are_valid_feast_names_and_distinct(tmp_path):
    from agentops_pipelines.features.online import StoreConfig

    assert agent_project("agentops", "support_agent") == "agentops_support_agent"
    assert agent_project("agentops", "billing-bot.v2") == "agentops_billing_bot_v2"
    with pytest.raises(ValueError, match="no Feast project"):
        agent_project("agentops", "--")
    base = StoreConfig(repo_dir=tmp_path / "feast", registry=str(tmp_path / "feast" / "registry.db"))
    a, b = base.for_agent(A), base.for_agent(B)
    assert a.repo_dir != b.repo_dir and a.registry != b.registry and a.project != b.project
    sql = StoreConfig(repo_dir=tmp_path, registry="postgresql+psycopg://u:pw@db/feast", online_store="h:1")
    # a SQL registry and Redis are shared (rows and keys per project); their URLs (passwords)
    # are not re-exported by the per-agent variables
    assert sql.for_agent(A).registry == sql.registry
    assert "AGENTOPS_FEAST_REGISTRY" not in sql.for_agent(A).environ()
    # scoping twice is scoping once: a deployer's child environment already names the agent's store
    assert a.for_agent(A) == a and a.for_agent(B) != a
    child = {"AGENTOPS_HOME": str(tmp_path), **agent_environ({"AGENTOPS_HOME": str(tmp_path)}, A)}
    assert served_config(child, A) == served_config({"AGENTOPS_HOME": str(tmp_path)}, A)
    assert served_config(child, A).project == agent_project("agentops", A)


def test_kubernetes_pods_read_their_agents_project():
    from agentops_pipelines.k8s.render import ServingSpec, render_manifests

    def project_of(agent: str) -> str:
        manifests = render_manifests(agent, "dev", "1", "models:/x/1", spec=ServingSpec(feast_project="acme"))
        deployment = next(m for m in manifests if m["kind"] == "Deployment")
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        return next(e["value"] for e in env if e["name"] == "AGENTOPS_FEAST_PROJECT")

    assert project_of(A) == "acme_support_agent"
    assert project_of(B) == "acme_billing_agent"
