"""Rendering (agentops_pipelines/k8s/render.py, naming.py): the manifests for each environment and
both roles, valid for the supported Kubernetes versions, and what they promise each other (selectors,
probes, ports, secrets, the RBAC the executor needs)."""

from __future__ import annotations

import pytest

from agentops_pipelines.k8s.naming import ANNOTATION_HASH, LABEL_ROLE, LABEL_VERSION
from agentops_pipelines.k8s.render import (
    ServingSpec,
    canary_replicas,
    render_environment,
    render_manifests,
    render_rbac,
    replica_share,
)
from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer, committed_manifests

from .common import AGENT, ENVIRONMENTS, V1, V2, validate_k8s


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("role", ["stable", "canary"])
def test_rendered_manifests_are_valid(environment, role):
    deployer = KubernetesDeployer()
    manifests = render_manifests(AGENT, environment, "7", f"models:/{AGENT}/7", role=role,
                                 spec=deployer.spec_for(environment), canary_replicas=2,
                                 canary_share=0.25)
    kinds = [m["kind"] for m in manifests]
    if role == "stable":
        assert kinds == ["ServiceAccount", "Service", "PodDisruptionBudget", "Deployment",
                         "HorizontalPodAutoscaler"]
    else:
        assert kinds == ["Deployment"]
    for manifest in manifests:
        validate_k8s(manifest)
        assert manifest["metadata"]["namespace"] == f"agentops-{environment}"
        labels = manifest["metadata"]["labels"]
        assert labels["agentops/agent"] == AGENT and labels["agentops/environment"] == environment
        assert labels["app.kubernetes.io/managed-by"] == "agentops"
        assert ANNOTATION_HASH in manifest["metadata"]["annotations"]

    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == f"support-agent-{environment}" + ("-canary" if role == "canary" else "")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert labels[LABEL_ROLE] == role and labels[LABEL_VERSION] == "7"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert LABEL_VERSION not in deployment["spec"]["selector"]["matchLabels"]  # selectors are immutable
    (container,) = pod["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    # Prometheus scrapes the port the server listens on
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["command"] == ["python", "-m", "agentops_pipelines.serving"]
    args = container["args"]
    assert args[args.index("--model-uri") + 1] == f"models:/{AGENT}/7"
    assert args[args.index("--version") + 1] == "7"
    assert args[args.index("--environment") + 1] == environment
    assert args[args.index("--port") + 1] == str(port)
    # readiness (and start-up): model loaded, not draining; liveness: the process answers
    assert {probe: container[probe]["httpGet"]["path"] for probe in
            ("startupProbe", "readinessProbe", "livenessProbe")} == {
        "startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    assert all(container[probe]["httpGet"]["port"] == "http" for probe in ("readinessProbe", "livenessProbe"))
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == deployer.mlflow_tracking_uri
    assert env["AGENTOPS_SERVING_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "support-agent-serving-admin", "key": "token", "optional": False}  # the agent's own; a pod needs it
    if role == "canary":
        assert deployment["spec"]["replicas"] == 2
        assert deployment["metadata"]["annotations"]["agentops/canary-share"] == "0.25"
    else:
        assert "replicas" not in deployment["spec"]  # the HPA owns the count


def test_inference_log_volume_when_a_claim_is_given():
    """Pods log requests to a shared ReadWriteMany claim, in the folder layout the drift asset
    reads; without a claim they log nothing (and mount nothing)."""
    plain = KubernetesDeployer().spec_for("prod")
    with_log = KubernetesDeployer(inference_log_claim="agentops-inference-log").spec_for("prod")
    for spec, claim in ((plain, None), (with_log, "agentops-inference-log")):
        for manifest in render_environment(AGENT, "prod", V1, V2, spec=spec):
            validate_k8s(manifest)
            if manifest["kind"] != "Deployment":
                continue
            pod = manifest["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
            args = container["args"]
            if claim is None:
                assert claims == [] and "--inference-log-dir" not in args
                continue
            assert claims == [claim]
            folder = args[args.index("--inference-log-dir") + 1]
            assert folder == f"{spec.inference_log_mount}/{AGENT}/prod"
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "inference-log"]
            assert folder.startswith(mount["mountPath"] + "/")


def test_service_hpa_and_pdb_cover_the_right_pods():
    spec = KubernetesDeployer().spec_for("prod")
    manifests = render_environment(AGENT, "prod", V1, V2, spec=spec)
    by_kind: dict[str, list[dict]] = {}
    for m in manifests:
        by_kind.setdefault(m["kind"], []).append(m)
    stable, canary = by_kind["Deployment"]
    (service,) = by_kind["Service"]
    (pdb,) = by_kind["PodDisruptionBudget"]
    (hpa,) = by_kind["HorizontalPodAutoscaler"]
    for deployment in (stable, canary):  # traffic splits across both roles by replica count
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": stable["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (spec.replicas, spec.max_replicas)
    assert pdb["spec"]["maxUnavailable"] == 1  # never blocks a node drain, one pod at a time


def test_rendering_options():
    spec = ServingSpec(autoscaling=False, replicas=2, max_replicas=2, admin_token_secret="team-admin",
                       mlflow_secret="")
    manifests = render_manifests(AGENT, "dev", "1", V1.model_uri, spec=spec, namespace="shared")
    assert [m["kind"] for m in manifests] == ["ServiceAccount", "Service", "PodDisruptionBudget", "Deployment"]
    deployment = manifests[-1]
    assert deployment["spec"]["replicas"] == 2 and deployment["metadata"]["namespace"] == "shared"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container
    token = next(e for e in container["env"] if e["name"] == "AGENTOPS_SERVING_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "team-admin"
    for m in manifests:
        validate_k8s(m)
    with pytest.raises(ValueError, match="role"):
        render_manifests(AGENT, "dev", "1", V1.model_uri, role="blue")
    with pytest.raises(ValueError, match="does not match model_uri"):  # the version is the URI's
        render_manifests(AGENT, "dev", "not a version!", V1.model_uri)
    with pytest.raises(ValueError, match="replicas"):
        ServingSpec(replicas=3, max_replicas=2)
    # rendering is deterministic: the hash only changes with the content
    again = render_manifests(AGENT, "dev", "1", V1.model_uri, spec=spec, namespace="shared")
    assert again == manifests


@pytest.mark.parametrize("secret", ["", "  "])
def test_rendering_refuses_an_empty_admin_secret(secret):
    """The admin API of a serving pod always has a token: no secret name, no manifests."""
    message = "admin_token_secret is empty.*non-empty key 'token'"
    with pytest.raises(ValueError, match=message):
        ServingSpec(admin_token_secret=secret)
    with pytest.raises(ValueError, match=message):
        KubernetesDeployer(admin_token_secret=secret).target("prod", V1)
    with pytest.raises(ValueError, match=message):
        committed_manifests(KubernetesDeployer(admin_token_secret=secret), agents=[AGENT])


def test_each_environments_pods_read_their_own_system_of_record_secret():
    """Rendered prod and dev pods reference different Secrets, and with the Secret absent a pod
    does not act (no throwaway SQLite per pod). The RBAC of the run pods never reads them."""
    deployer = KubernetesDeployer()
    refs = {}
    for environment in ENVIRONMENTS:
        manifests = render_manifests(AGENT, environment, "7", f"models:/{AGENT}/7",
                                     spec=deployer.spec_for(environment))
        (container,) = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
        (sor,) = [e for e in container["env"] if e["name"] == "AGENTOPS_SOR_URL"]
        refs[environment] = sor["valueFrom"]["secretKeyRef"]
        args = container["args"]
        assert args[args.index("--sor-fallback") + 1] == "off"
    assert refs["prod"] == {"name": "agentops-sor-prod", "key": "url", "optional": True}
    assert refs["dev"]["name"] == "agentops-sor-dev" and refs["staging"]["name"] == "agentops-sor-staging"
    rbac = str(render_rbac(ENVIRONMENTS, agents=[AGENT]))
    assert "agentops-sor" not in rbac


def test_rbac_grants_what_the_executor_does(helm_values):
    manifests = render_rbac(ENVIRONMENTS, agents=[AGENT])
    for m in manifests:
        validate_k8s(m)
    roles = [m for m in manifests if m["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(f"agentops-{e}" for e in ENVIRONMENTS)
    granted = {(g, r, v) for rule in roles[0]["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    for group, resource in [("apps", "deployments"), ("", "services"), ("", "serviceaccounts"),
                            ("autoscaling", "horizontalpodautoscalers"),
                            ("policy", "poddisruptionbudgets")]:
        for verb in ("get", "list", "patch", "delete"):  # read, server-side apply, delete
            assert (group, resource, verb) in granted, (group, resource, verb)
    (secrets,) = [rule for rule in roles[0]["rules"] if rule["resources"] == ["secrets"]]
    assert secrets == {"apiGroups": [""], "resources": ["secrets"],  # the pods' admin Secret, read only
                       "resourceNames": [KubernetesDeployer().admin_secret_of(AGENT)], "verbs": ["get"]}
    binding = next(m for m in manifests if m["kind"] == "RoleBinding")
    # bound to the account the chart's pods (and so the run pods that deploy) run as
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": helm_values["serviceAccount"]["name"],
                                    "namespace": "dagster"}]


def test_canary_sizing():
    assert canary_replicas(0.1, 3) == 1  # at least one pod
    assert canary_replicas(0.25, 3) == 1 and replica_share(1, 3) == 0.25
    assert canary_replicas(0.5, 4) == 4
    assert canary_replicas(0.2, 8) == 2
    assert replica_share(0, 0) == 0.0
    for share in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError):
            canary_replicas(share, 3)
