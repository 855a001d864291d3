"""The committed YAML under deploy/k8s: valid for the supported Kubernetes versions (strict:
unknown fields fail), what the renderer produces today, and the MLflow server it deploys."""

from __future__ import annotations

import pytest

from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer, committed_manifests

from .common import DEPLOY, ENVIRONMENTS, load_all, validate_k8s

K8S_FILES = sorted((DEPLOY / "k8s").rglob("*.yaml"))


def test_the_k8s_folder_has_the_expected_files():
    names = {str(p.relative_to(DEPLOY / "k8s")) for p in K8S_FILES}
    assert {"mlflow.yaml", "rbac.yaml", *(f"serving/{e}.yaml" for e in ENVIRONMENTS)} <= names


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_committed_k8s_yaml_is_valid(path):
    docs = load_all(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_k8s(doc)


def test_committed_manifests_are_up_to_date():
    for relative, text in committed_manifests().items():
        path = DEPLOY / "k8s" / relative
        assert path.exists() and path.read_text() == text, (
            f"deploy/k8s/{relative} is stale: run `.venv/bin/python -m "
            "agentops_pipelines.resources.kubernetes_deployer render deploy/k8s`"
        )


def test_mlflow_server_manifest():
    docs = {d["kind"]: d for d in load_all(DEPLOY / "k8s" / "mlflow.yaml")}
    assert {"Namespace", "Deployment", "Service", "PersistentVolumeClaim"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in container["args"]
    assert any(a.startswith("--artifacts-destination=") for a in container["args"])
    # the backend store (with its password) comes from a Secret, read by `mlflow server` itself
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-credentials"
    assert not any("postgres" in a for a in container["args"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    # the URL the pipeline and the serving pods use reaches this Service, and MLflow accepts its Host
    uri = KubernetesDeployer().mlflow_tracking_uri
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert uri == f"http://{host}:{service['spec']['ports'][0]['port']}"
    hosts = next(a for a in container["args"] if a.startswith("--allowed-hosts="))
    assert f"{host}:*" in hosts.removeprefix("--allowed-hosts=").split(",")
    assert pod["securityContext"]["runAsNonRoot"] is True
