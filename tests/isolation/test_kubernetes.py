"""Two agents on Kubernetes: one deployer resource, manifests that never collide, rollouts that
never touch the other agent's objects (the real ``kubernetes`` client against the in-process API
server of tests/deploy/fake_kube_api.py)."""

from __future__ import annotations

import base64
import copy
import tempfile

import pytest

from agentops_pipelines.k8s.naming import LABEL_AGENT
from agentops_pipelines.k8s.plan import object_key
from agentops_pipelines.k8s.render import Release
from agentops_pipelines.resources.deployers import DeploymentError
from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer, committed_manifests
from agentops_pipelines.vocabulary import ENVIRONMENTS
from tests.deploy.fake_kube_api import FakeKubeAPI
from tests.isolation.conftest import A, B


def release(agent: str, version: str) -> Release:
    return Release(version, f"models:/{agent}/{version}")


def _selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("namespace", [None, "agents"])  # a namespace per environment, or one for all
def test_two_agents_manifests_do_not_collide(namespace):
    deployer = KubernetesDeployer(namespace=namespace)
    for env in ENVIRONMENTS:
        mine = deployer.target(env, release(A, "1"), release(A, "2"), agent=A)
        theirs = deployer.target(env, release(B, "1"), release(B, "2"), agent=B)
        assert not {object_key(m) for m in mine} & {object_key(m) for m in theirs}  # names
        for ours, other in ((mine, theirs), (theirs, mine)):
            pods = [m["spec"]["template"]["metadata"]["labels"] for m in other if m["kind"] == "Deployment"]
            for m in ours:  # selectors: no Service, PDB or Deployment of one agent selects the other's pods
                selector = (m.get("spec") or {}).get("selector") or {}
                selector = selector.get("matchLabels", selector) if m["kind"] != "Service" else selector
                if selector:
                    assert not any(_selects(selector, labels) for labels in pods), (m["kind"], env)
            hpa = next(m for m in ours if m["kind"] == "HorizontalPodAutoscaler")
            assert hpa["spec"]["scaleTargetRef"]["name"] == hpa["metadata"]["name"]
        secrets = {env_var["valueFrom"]["secretKeyRef"]["name"]
                   for m in mine + theirs if m["kind"] == "Deployment"
                   for env_var in m["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in env_var}
        # a token each; the environment's system of record (the same for every agent of it, never another environment's)
        assert secrets == {"support-agent-serving-admin", "billing-agent-serving-admin", f"agentops-sor-{env}"}
        logs = {arg for m in mine + theirs if m["kind"] == "Deployment"
                for arg in m["spec"]["template"]["spec"]["containers"][0]["args"] if "inference_log" in arg}
        assert not logs  # no claim configured; with one, each agent logs under its own folder:
    spec = KubernetesDeployer(inference_log_claim="logs")
    folders = {agent: next(a for m in spec.target("prod", release(agent, "1"), agent=agent) if m["kind"] == "Deployment"
                           for a in m["spec"]["template"]["spec"]["containers"][0]["args"] if "inference_log" in a)
               for agent in (A, B)}
    assert folders == {A: f"/var/lib/agentops/inference_log/{A}/prod", B: f"/var/lib/agentops/inference_log/{B}/prod"}
    # ports: each pod listens on its own IP, each Service has its own name (and cluster IP)
    assert deployer.url("prod", A) != deployer.url("prod", B)


def test_committed_manifests_and_rbac_cover_every_agent():
    files = committed_manifests(KubernetesDeployer(), agents=[A, B])
    import yaml

    prod = list(yaml.safe_load_all(files["serving/prod.yaml"]))
    assert {m["metadata"]["labels"][LABEL_AGENT] for m in prod} == {A, B}
    assert len({object_key(m) for m in prod}) == len(prod)
    rbac = list(yaml.safe_load_all(files["rbac.yaml"]))
    role = next(m for m in rbac if m["kind"] == "Role")
    (secrets,) = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert secrets["resourceNames"] == ["billing-agent-serving-admin", "support-agent-serving-admin"]


def test_a_deployer_without_an_agent_never_guesses_one():
    deployer = KubernetesDeployer()
    with pytest.raises(DeploymentError, match="name the agent"):
        deployer.url("prod")
    with pytest.raises(DeploymentError, match="name the agent"):
        deployer.status("prod")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the client's discovery cache, per test
    with FakeKubeAPI(failing=("9",)) as api:
        for env in ENVIRONMENTS:
            for agent, token in ((A, "token-a"), (B, "token-b")):
                api.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                         "metadata": {"name": f"{agent.replace('_', '-')}-serving-admin",
                                      "namespace": f"agentops-{env}"},
                         "data": {"token": base64.b64encode(token.encode()).decode()}})
        yield api


@pytest.fixture
def deployer(cluster, tmp_path):
    return KubernetesDeployer(kubeconfig=str(cluster.kubeconfig(tmp_path / "kubeconfig")), in_cluster=False,
                              rollout_timeout_s=5, poll_interval_s=0.01)


def _specs_of(cluster, agent: str) -> dict:
    """What the deployer writes of ``agent``'s objects (metadata and spec; status is the cluster's)."""
    return {k: copy.deepcopy({f: v.get(f) for f in ("metadata", "spec")}) for k, v in cluster.objects.items()
            if (v.get("metadata", {}).get("labels") or {}).get(LABEL_AGENT) == agent}


def test_rolling_out_one_agent_never_touches_the_others_objects(deployer, cluster):
    deployer.deploy("prod", f"models:/{A}/1", "1")
    deployer.deploy("prod", f"models:/{B}/1", "1")  # the same version number, another agent
    theirs, seen = _specs_of(cluster, B), len(cluster.requests)
    assert len(theirs) == 5

    canary = deployer.deploy_canary("prod", f"models:/{A}/2", "2", 0.25)
    assert canary.agent == A and canary.canary_version == "2"
    assert deployer.status("prod", agent=B).canary_version is None
    assert deployer.stats("prod", agent=B)["canary"] is None
    deployer.abort_canary("prod", agent=A)
    deployer.deploy_canary("prod", f"models:/{A}/2", "2", 0.25)
    assert deployer.promote_canary("prod", agent=A).version == "2"
    with pytest.raises(DeploymentError, match="no canary"):
        deployer.promote_canary("prod", agent=B)  # A's canary was never B's
    with pytest.raises(DeploymentError, match="rolled back: version 2 serves"):
        deployer.deploy("prod", f"models:/{A}/9", "9")  # a failing rollout, rolled back
    deployer.stop("prod", agent=A)
    assert deployer.status("prod", agent=A) is None
    writes = [(method, path) for method, path, _ in cluster.requests[seen:] if method in ("PATCH", "DELETE")]
    assert writes and all("support-agent" in path for _, path in writes)  # A's objects only
    assert _specs_of(cluster, B) == theirs
    assert deployer.status("prod", agent=B).version == "1"


def test_an_agents_rollout_needs_its_own_admin_secret(deployer, cluster):
    del cluster.objects[("Secret", "agentops-prod", "billing-agent-serving-admin")]
    deployer.deploy("prod", f"models:/{A}/1", "1")  # A's secret is there
    with pytest.raises(DeploymentError, match="billing-agent-serving-admin does not exist"):
        deployer.deploy("prod", f"models:/{B}/1", "1")  # A's token is never B's
