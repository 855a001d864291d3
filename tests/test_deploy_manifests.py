"""What deploy/ ships, checked without Docker or a cluster.

- Kubernetes: every YAML under deploy/k8s and the manifests rendered for each environment and
  both roles, against the official schemas (kubernetes-validate, strict: unknown fields fail);
  the committed files are what the renderer produces today.
- The rollout plan (pure): initial deploy, update, canary, promote, abort, rollback, stop,
  idempotent re-apply; and the executor's flows against an in-memory stand-in for the
  ``kubernetes`` dynamic client (no API server).
- Helm values against the structure of the official chart's values.schema.json (the parts used),
  the Grafana dashboard's queries (only the serving process's metric names; PromQL syntax with
  promtool when it is installed), the Dockerfile's layers and user, the compose file's references.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import jsonschema
import kubernetes_validate
import pytest
import yaml

from agentops_pipelines.k8s.naming import (
    ANNOTATION_HASH,
    LABEL_ROLE,
    LABEL_VERSION,
)
from agentops_pipelines.k8s.plan import (
    deployment_status,
    object_key,
    plan_rollout,
    pod_problems,
    release_of,
)
from agentops_pipelines.k8s.render import (
    Release,
    ServingSpec,
    canary_replicas,
    render_environment,
    render_manifests,
    render_rbac,
    replica_share,
)
from agentops_pipelines.k8s.stats import (
    role_stats,
    stats_queries,
)
from agentops_pipelines.resources.deployers import Deployer, DeploymentError
from agentops_pipelines.resources.kubernetes_deployer import (
    KubernetesDeployer,
    committed_manifests,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# the oldest Kubernetes we support, and the newest kubernetes-validate ships (removed APIs)
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
ENVIRONMENTS = ("dev", "staging", "prod")
AGENT = "support_agent"
V1 = Release("1", f"models:/{AGENT}/1")
V2 = Release("2", f"models:/{AGENT}/2")
V3 = Release("3", f"models:/{AGENT}/3")
METRICS = {
    "agentops_requests_total",
    "agentops_request_latency_seconds",
    "agentops_request_latency_seconds_bucket",
    "agentops_request_latency_seconds_sum",
    "agentops_request_latency_seconds_count",
    "agentops_tool_calls_total",
    "agentops_escalations_total",
    "agentops_errors_total",
    "agentops_model_info",
    "agentops_canary_share",
}


def validate_k8s(manifest: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata'].get('name')} (Kubernetes {version}): "
                        f"{where}: {e.message}")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --------------------------------------------------------------------------------------------
# Kubernetes manifests


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
    hosts = next(a for a in container["args"] if a.startswith("--allowed-hosts="))
    assert "mlflow.agentops-platform.svc.cluster.local:*" in hosts  # the URL the pipeline uses
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert KubernetesDeployer().mlflow_tracking_uri == (
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:"
        f"{service['spec']['ports'][0]['port']}"
    )


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
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "agentops_pipelines.serving"]
    args = container["args"]
    assert args[args.index("--model-uri") + 1] == f"models:/{AGENT}/7"
    assert args[args.index("--version") + 1] == "7"
    assert args[args.index("--environment") + 1] == environment
    assert args[args.index("--port") + 1] == str(container["ports"][0]["containerPort"]) == "8080"
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
        "name": "agentops-serving-admin", "key": "token", "optional": False}  # a pod needs it to start
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
            assert folder == f"/var/lib/agentops/inference_log/{AGENT}/prod"
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "inference-log"]
            assert folder.startswith(mount["mountPath"] + "/")


def test_service_hpa_and_pdb_cover_the_right_pods():
    manifests = render_environment(AGENT, "prod", V1, V2, spec=KubernetesDeployer().spec_for("prod"))
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
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert pdb["spec"]["maxUnavailable"] == 1


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
    with pytest.raises(ValueError, match="label value"):
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
        committed_manifests(KubernetesDeployer(admin_token_secret=secret))


def test_rbac_grants_what_the_executor_does():
    manifests = render_rbac(ENVIRONMENTS)
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
    assert secrets == {"apiGroups": [""], "resources": ["secrets"],  # that one Secret, read only
                       "resourceNames": ["agentops-serving-admin"], "verbs": ["get"]}
    binding = next(m for m in manifests if m["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dagster", "namespace": "dagster"}]
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["serviceAccount"]["name"] == "dagster"  # the account the chart's pods run as


# --------------------------------------------------------------------------------------------
# The plan


def target(stable: Release | None, canary: Release | None = None, environment: str = "prod",
           count: int = 1) -> list[dict]:
    if stable is None:
        return []
    return KubernetesDeployer().target(environment, stable, canary, canary_replicas=count)


def applied(state: dict, actions) -> dict:
    """The live state after a plan, as a cluster would leave it (status and defaults added)."""
    state = copy.deepcopy(state)
    for action in actions:
        if action.op == "apply":
            obj = copy.deepcopy(action.manifest)
            obj["metadata"]["uid"] = f"uid-{action.name}"
            obj["metadata"]["managedFields"] = [{"manager": "agentops", "operation": "Apply"}]
            if obj["kind"] == "Deployment":
                obj["spec"].setdefault("replicas", 3)
                obj["status"] = {"replicas": obj["spec"]["replicas"], "readyReplicas": obj["spec"]["replicas"]}
            state[action.key] = obj
        elif action.op == "delete":
            del state[action.key]
    return state


def ops(actions) -> list[tuple[str, str, str]]:
    return [(a.op, a.kind, a.name) for a in actions]


def stable_name(environment="prod") -> str:
    return f"support-agent-{environment}"


def test_initial_deploy_applies_everything_in_order():
    plan = plan_rollout({}, target(V1))
    assert ops(plan) == [
        ("apply", "ServiceAccount", stable_name()),
        ("apply", "Service", stable_name()),
        ("apply", "PodDisruptionBudget", stable_name()),
        ("apply", "Deployment", stable_name()),
        ("wait_ready", "Deployment", stable_name()),
        ("apply", "HorizontalPodAutoscaler", stable_name()),
    ]
    assert all(a.reason == "new" for a in plan if a.op == "apply")
    assert all(a.namespace == "agentops-prod" for a in plan)


def test_update_rolls_only_the_deployment():
    live = applied({}, plan_rollout({}, target(V1)))
    plan = plan_rollout(live, target(V2))
    assert ops(plan) == [("apply", "Deployment", stable_name()), ("wait_ready", "Deployment", stable_name())]
    assert plan[0].reason == "changed"
    assert release_of(plan[0].manifest) == V2


def test_reapplying_the_same_target_changes_nothing():
    live = applied({}, plan_rollout({}, target(V1)))
    plan = plan_rollout(live, target(V1))
    assert ops(plan) == [("wait_ready", "Deployment", stable_name())]  # still confirms it serves
    assert applied(live, plan) == live
    forced = plan_rollout(live, target(V1), reapply=True)
    assert [a.kind for a in forced if a.op == "apply"] == [
        "ServiceAccount", "Service", "PodDisruptionBudget", "Deployment", "HorizontalPodAutoscaler"]
    assert applied(live, forced).keys() == live.keys()


def test_canary_adds_a_deployment_after_the_stable_one_is_ready():
    live = applied({}, plan_rollout({}, target(V1)))
    plan = plan_rollout(live, target(V1, V2, count=2))
    canary = stable_name() + "-canary"
    assert ops(plan) == [
        ("wait_ready", "Deployment", stable_name()),
        ("apply", "Deployment", canary),
        ("wait_ready", "Deployment", canary),
    ]
    manifest = plan[1].manifest
    assert manifest["spec"]["replicas"] == 2 and release_of(manifest) == V2
    assert manifest["metadata"]["labels"][LABEL_ROLE] == "canary"


def test_promote_rolls_stable_to_the_canary_version_then_removes_the_canary():
    live = applied({}, plan_rollout({}, target(V1, V2)))
    plan = plan_rollout(live, target(V2))
    assert ops(plan) == [
        ("apply", "Deployment", stable_name()),
        ("wait_ready", "Deployment", stable_name()),
        ("delete", "Deployment", stable_name() + "-canary"),  # only once the stable pods serve V2
    ]
    assert release_of(plan[0].manifest) == V2
    after = applied(live, plan)
    assert release_of(after[("Deployment", "agentops-prod", stable_name())]) == V2
    assert plan_rollout(after, target(V2)) == [plan[1]]  # converged


def test_abort_removes_only_the_canary():
    live = applied({}, plan_rollout({}, target(V1, V2)))
    plan = plan_rollout(live, target(V1))
    assert ops(plan) == [("wait_ready", "Deployment", stable_name()),
                         ("delete", "Deployment", stable_name() + "-canary")]


def test_rollback_reapplies_the_previous_versions_manifests():
    first = plan_rollout({}, target(V1))
    v1_live = applied({}, first)
    v2_live = applied(v1_live, plan_rollout(v1_live, target(V2)))
    plan = plan_rollout(v2_live, target(V1))
    assert ops(plan) == [("apply", "Deployment", stable_name()), ("wait_ready", "Deployment", stable_name())]
    original = next(a.manifest for a in first if a.kind == "Deployment")
    assert plan[0].manifest == original  # byte for byte what V1 was deployed with
    assert applied(v2_live, plan) == v1_live


def test_a_deploy_ends_a_running_canary():
    live = applied({}, plan_rollout({}, target(V1, V2)))
    plan = plan_rollout(live, target(V3))
    assert ops(plan) == [("apply", "Deployment", stable_name()), ("wait_ready", "Deployment", stable_name()),
                         ("delete", "Deployment", stable_name() + "-canary")]


def test_stop_deletes_everything_in_reverse_order_and_spares_foreign_objects():
    live = applied({}, plan_rollout({}, target(V1, V2)))
    foreign = {"kind": "Service", "metadata": {"name": "other", "namespace": "agentops-prod",
                                               "labels": {"app.kubernetes.io/managed-by": "Helm"}}}
    live[object_key(foreign)] = foreign
    plan = plan_rollout(live, [])
    assert ops(plan) == [
        ("delete", "HorizontalPodAutoscaler", stable_name()),
        ("delete", "Deployment", stable_name() + "-canary"),
        ("delete", "Deployment", stable_name()),
        ("delete", "PodDisruptionBudget", stable_name()),
        ("delete", "Service", stable_name()),
        ("delete", "ServiceAccount", stable_name()),
    ]
    assert applied(live, plan) == {object_key(foreign): foreign}
    assert plan_rollout({}, []) == []


def test_disabling_autoscaling_deletes_the_hpa_and_sets_replicas():
    live = applied({}, plan_rollout({}, target(V1)))
    manual = KubernetesDeployer(autoscaling=False).target("prod", V1)
    plan = plan_rollout(live, manual)
    assert ops(plan) == [("apply", "Deployment", stable_name()), ("wait_ready", "Deployment", stable_name()),
                         ("delete", "HorizontalPodAutoscaler", stable_name())]
    assert plan[0].manifest["spec"]["replicas"] == 3


def test_plan_refuses_a_target_with_duplicates():
    with pytest.raises(ValueError, match="same kind"):
        plan_rollout({}, target(V1) + target(V1)[:1])


def test_deployment_status():
    def deployment(generation=2, observed=2, replicas=3, updated=3, total=3, available=3, conditions=()):
        return {"metadata": {"name": "d", "generation": generation}, "spec": {"replicas": replicas},
                "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                           "availableReplicas": available, "conditions": list(conditions)}}

    assert deployment_status(deployment()).done
    assert "controller" in deployment_status(deployment(observed=1)).message
    assert "1 of 3 replicas updated" in deployment_status(deployment(updated=1)).message
    assert "old replicas" in deployment_status(deployment(total=4)).message
    assert "2 of 3" in deployment_status(deployment(available=2)).message
    stuck = deployment_status(deployment(updated=1, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "d-1" has timed out progressing.'}]))
    assert stuck.failed and not stuck.done and "timed out" in stuck.message
    assert deployment_status(deployment(replicas=0, updated=0, total=0, available=0)).done


def test_canary_sizing():
    assert canary_replicas(0.1, 3) == 1  # at least one pod
    assert canary_replicas(0.25, 3) == 1 and replica_share(1, 3) == 0.25
    assert canary_replicas(0.5, 4) == 4
    assert canary_replicas(0.2, 8) == 2
    assert replica_share(0, 0) == 0.0
    for share in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError):
            canary_replicas(share, 3)


def test_pod_problems_name_the_cause():
    pods = [{"metadata": {"name": "p1"}, "status": {"containerStatuses": [{
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}, "restartCount": 4}]}},
        {"metadata": {"name": "p2"}, "status": {"containerStatuses": [{
            "state": {"waiting": {"reason": "ContainerCreating"}}}],
            "conditions": [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes"}]}}]
    problems = pod_problems(pods)
    assert problems[0] == "p1: CrashLoopBackOff: back-off restarting"
    assert "restarted 4x, last exit 1 (Error)" in problems[1]
    assert problems[2] == "p2: unschedulable: 0/3 nodes"


def prometheus_answers(**by_version):
    """Answers to stats_queries: {version: (ok, client_error, server_error, p50_s, p99_s, escalations)}."""
    def vector(samples):
        return {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": metric, "value": [1700000000, str(value)]} for metric, value in samples]}}

    requests, p50, p99, escalations = [], [], [], []
    for version, (ok, client, server, q50, q99, esc) in by_version.items():
        requests += [({"version": version, "outcome": o}, n)
                     for o, n in (("ok", ok), ("client_error", client), ("server_error", server))]
        p50.append(({"version": version}, q50))
        p99.append(({"version": version}, q99))
        escalations.append(({"version": version}, esc))
    return {"requests": vector(requests), "p50": vector(p50), "p99": vector(p99),
            "escalations": vector(escalations)}


def test_stats_queries_and_parsing():
    queries = stats_queries(AGENT, "prod", 300)
    assert set(queries) == {"requests", "p50", "p99", "escalations"}
    for query in queries.values():
        assert set(re.findall(r"agentops_\w+", query)) <= METRICS
        assert f'agent="{AGENT}",environment="prod"' in query and "[300s]" in query
    answers = prometheus_answers(**{"1": (95.2, 3.0, 1.9, 0.004, 0.0201, 7.1), "2": (0, 0, 0, "NaN", "NaN", 0)})
    assert role_stats(answers, "1") == {"requests": 100, "errors": 2, "client_errors": 3, "error_rate": 0.02,
                                        "p50_ms": 4.0, "p99_ms": 20.1, "escalations": 7}
    idle = role_stats(answers, "2")
    assert idle["requests"] == 0 and idle["error_rate"] == 0.0 and idle["p99_ms"] is None
    assert role_stats(answers, "3")["requests"] == 0  # a version Prometheus has not seen


# --------------------------------------------------------------------------------------------
# The executor, against an in-memory stand-in for kubernetes.dynamic.DynamicClient


class StubCluster:
    """Objects by (kind, namespace, name). An applied Deployment is rolled out at once, unless its
    version is in ``failing`` (then its rollout exceeds the progress deadline)."""

    def __init__(self, failing=(), admin_token: str | None = "s3cret"):
        self.objects: dict[tuple, dict] = {}
        self.applies: list[dict] = []
        self.failing = set(failing)
        self.resources = SimpleNamespace(get=lambda api_version, kind: SimpleNamespace(kind=kind))
        if admin_token is not None:  # what `kubectl create secret generic` makes (deploy/k8s/README.md)
            for environment in ENVIRONMENTS:
                self.objects[("Secret", f"agentops-{environment}", "agentops-serving-admin")] = {
                    "metadata": {"name": "agentops-serving-admin"},
                    "data": {"token": base64.b64encode(admin_token.encode()).decode()}}

    @staticmethod
    def _result(payload):
        return SimpleNamespace(to_dict=lambda: copy.deepcopy(payload))

    def get(self, resource, name=None, namespace=None, label_selector=None):
        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import NotFoundError

        if name is not None:
            if (resource.kind, namespace, name) not in self.objects:
                raise NotFoundError(ApiException(status=404, reason="Not Found"))
            return self._result(self.objects[(resource.kind, namespace, name)])
        wanted = dict(pair.split("=") for pair in (label_selector or "").split(",") if pair)
        items = [o for (kind, ns, _), o in self.objects.items() if kind == resource.kind and ns == namespace
                 and wanted.items() <= o["metadata"].get("labels", {}).items()]
        return self._result({"items": items})

    def server_side_apply(self, resource, body, namespace, field_manager, force_conflicts):
        self.applies.append({"kind": resource.kind, "field_manager": field_manager, "force": force_conflicts})
        obj = copy.deepcopy(body)
        key = (resource.kind, namespace, obj["metadata"]["name"])
        if resource.kind == "Deployment":
            generation = self.objects.get(key, {}).get("metadata", {}).get("generation", 0) + 1
            obj["metadata"]["generation"] = generation
            replicas = obj["spec"].setdefault("replicas", 2)
            if obj["metadata"]["labels"][LABEL_VERSION] in self.failing:
                obj["status"] = {"observedGeneration": generation, "replicas": replicas + 1, "updatedReplicas": 1,
                                 "availableReplicas": replicas, "conditions": [{
                                     "type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                     "message": "timed out progressing"}]}
            else:
                obj["status"] = {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                                 "readyReplicas": replicas, "availableReplicas": replicas}
        self.objects[key] = obj
        return self._result(obj)

    def delete(self, resource, name, namespace, body):
        self.objects.pop((resource.kind, namespace, name), None)

    def version(self, name="support-agent-prod"):
        obj = self.objects.get(("Deployment", "agentops-prod", name))
        return obj and obj["metadata"]["labels"][LABEL_VERSION]


@pytest.fixture
def cluster():
    return StubCluster(failing={"9"})


@pytest.fixture
def deployer(cluster):
    d = KubernetesDeployer(rollout_timeout_s=5, poll_interval_s=0.01)
    d._dynamic = cluster
    return d


def test_the_deployer_is_a_configurable_resource(monkeypatch):
    assert issubclass(KubernetesDeployer, Deployer)
    monkeypatch.setenv("AGENTOPS_SERVING_IMAGE", "registry.example.com/agentops:1.2.3")
    resource = KubernetesDeployer(image=dg.EnvVar("AGENTOPS_SERVING_IMAGE"), namespace="agents")
    resource = resource.process_config_and_initialize()
    assert resource.spec_for("prod").image == "registry.example.com/agentops:1.2.3"
    assert resource.namespace_of("dev") == resource.namespace_of("prod") == "agents"
    assert KubernetesDeployer().url("prod") == "http://support-agent-prod.agentops-prod.svc.cluster.local"
    assert KubernetesDeployer(service_port=8080).url("dev").endswith(".agentops-dev.svc.cluster.local:8080")


def test_deploy_update_and_status(deployer, cluster):
    assert deployer.status("prod") is None
    first = deployer.deploy("prod", V1.model_uri, "1")
    assert (first.version, first.model_uri, first.environment) == ("1", V1.model_uri, "prod")
    assert first.url == deployer.url("prod")
    assert {a["field_manager"] for a in cluster.applies} == {"agentops"}
    assert all(a["force"] is True for a in cluster.applies)
    assert len(cluster.applies) == 5
    assert deployer.deploy("prod", V2.model_uri, "2").version == "2"
    assert len(cluster.applies) == 6  # only the Deployment changed
    assert deployer.deploy("prod", V2.model_uri, "2") == deployer.status("prod")  # idempotent
    assert len(cluster.applies) == 6


@pytest.mark.parametrize(("token", "message"), [
    (None, "Secret agentops-prod/agentops-serving-admin does not exist"),
    ("", "has no non-empty key 'token'"),
    (" \n", "has no non-empty key 'token'"),
])
def test_deploy_refuses_a_missing_or_empty_admin_token(token, message):
    cluster = StubCluster(admin_token=token)
    d = KubernetesDeployer(rollout_timeout_s=5, poll_interval_s=0.01)
    d._dynamic = cluster
    with pytest.raises(DeploymentError, match=message):
        d.deploy("prod", V1.model_uri, "1")
    assert cluster.applies == []  # nothing was applied
    # a canary is a rollout too: a token removed since the stable deploy stops it
    good = StubCluster()
    d._dynamic = good
    d.deploy("prod", V1.model_uri, "1")
    applied = len(good.applies)
    key = ("Secret", "agentops-prod", "agentops-serving-admin")
    if token is None:
        del good.objects[key]
    else:
        good.objects[key] = cluster.objects[key]
    with pytest.raises(DeploymentError, match=message):
        d.deploy_canary("prod", V2.model_uri, "2", 0.25)
    assert len(good.applies) == applied


def test_a_failed_rollout_is_rolled_back(deployer, cluster):
    deployer.deploy("prod", V2.model_uri, "2")
    with pytest.raises(DeploymentError, match="timed out progressing.*rolled back: version 2 serves"):
        deployer.deploy("prod", f"models:/{AGENT}/9", "9")
    assert cluster.version() == "2"
    assert deployer.status("prod").version == "2"


def test_canary_promote_and_abort(deployer, cluster):
    with pytest.raises(DeploymentError, match="no stable version"):
        deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    deployer.deploy("prod", V1.model_uri, "1")
    with pytest.raises(ValueError, match="canary share"):
        deployer.deploy_canary("prod", V2.model_uri, "2", 1.0)
    serving = deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    assert (serving.version, serving.canary_version, serving.canary_model_uri) == ("1", "2", V2.model_uri)
    assert serving.canary_share == pytest.approx(1 / 3)  # 1 canary pod next to 2 stable ones
    assert deployer.status("prod") == serving
    again = deployer.deploy_canary("prod", V2.model_uri, "2", 0.5)  # only the share changes
    assert again.canary_share == pytest.approx(0.5) and cluster.applies[-1]["kind"] == "Deployment"
    stats = deployer.stats("prod", 60)
    assert stats["stable"]["version"] == "1" and stats["canary"]["version"] == "2"
    assert stats["canary"]["ready_replicas"] == 2 and stats["canary_share_requested"] == 0.5
    assert stats["canary"]["requests"] is None and "prometheus_url" in stats["note"]
    promoted = deployer.promote_canary("prod")
    assert (promoted.version, promoted.canary_version, promoted.canary_share) == ("2", None, 0.0)
    assert cluster.version("support-agent-prod-canary") is None
    with pytest.raises(DeploymentError, match="no canary"):
        deployer.promote_canary("prod")
    deployer.deploy_canary("prod", V3.model_uri, "3", 0.1)
    aborted = deployer.abort_canary("prod")
    assert (aborted.version, aborted.canary_version) == ("2", None)
    assert cluster.version("support-agent-prod-canary") is None
    assert deployer.abort_canary("prod") == aborted  # nothing to abort: a no-op
    assert deployer.stats("prod")["canary"] is None
    deployer.stop("prod")
    with pytest.raises(DeploymentError, match="nothing is serving"):
        deployer.abort_canary("prod")


def test_stats_from_prometheus(deployer, cluster, monkeypatch):
    deployer.deploy("prod", V1.model_uri, "1")
    deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    queries = {q: name for name, q in stats_queries(AGENT, "prod", 120).items()}
    answers = prometheus_answers(**{"1": (196, 2, 2, 0.005, 0.03, 10), "2": (49, 0, 1, 0.006, 0.05, 3)})
    monkeypatch.setattr(KubernetesDeployer, "_prometheus", lambda self, query: answers[queries[query]])
    with_prometheus = KubernetesDeployer(prometheus_url="http://prometheus:9090")
    with_prometheus._dynamic = cluster
    result = with_prometheus.stats("prod", 120)
    assert result["source"] == "kubernetes+prometheus" and "note" not in result
    assert result["stable"].items() >= {"version": "1", "requests": 200, "errors": 2, "client_errors": 2,
                                        "error_rate": 0.01, "p50_ms": 5.0, "p99_ms": 30.0}.items()
    assert result["canary"]["requests"] == 50 and result["canary"]["error_rate"] == 0.02

    def unreachable(self, query):
        raise OSError("connection refused")

    monkeypatch.setattr(KubernetesDeployer, "_prometheus", unreachable)
    degraded = with_prometheus.stats("prod", 120)
    assert "did not answer" in degraded["note"] and degraded["stable"]["requests"] is None


def test_a_failing_canary_is_removed(deployer, cluster):
    deployer.deploy("prod", V1.model_uri, "1")
    with pytest.raises(DeploymentError, match="timed out progressing.*rolled back: version 1 serves"):
        deployer.deploy_canary("prod", f"models:/{AGENT}/9", "9", 0.2)
    assert cluster.version("support-agent-prod-canary") is None and cluster.version() == "1"


def test_a_failure_restores_both_the_stable_version_and_the_canary(deployer, cluster):
    deployer.deploy("prod", V1.model_uri, "1")
    deployer.deploy_canary("prod", V2.model_uri, "2", 0.25)
    canary_before = cluster.objects[("Deployment", "agentops-prod", "support-agent-prod-canary")]
    with pytest.raises(DeploymentError, match="rolled back: version 1 serves"):
        deployer.deploy("prod", f"models:/{AGENT}/9", "9")
    with pytest.raises(DeploymentError, match="rolled back: version 1 serves"):
        deployer.deploy_canary("prod", f"models:/{AGENT}/9", "9", 0.5)
    assert cluster.version() == "1" and cluster.version("support-agent-prod-canary") == "2"
    canary_after = cluster.objects[("Deployment", "agentops-prod", "support-agent-prod-canary")]
    assert canary_after["spec"] == canary_before["spec"]
    assert canary_after["metadata"]["annotations"] == canary_before["metadata"]["annotations"]


def test_stop_and_a_foreign_model(deployer, cluster):
    deployer.deploy("prod", V1.model_uri, "1")
    deployer.stop("prod")
    assert [key for key in cluster.objects if key[0] != "Secret"] == []  # the Secrets are not ours
    deployer.stop("prod")  # a no-op
    with pytest.raises(DeploymentError, match="other_agent"):
        deployer.deploy("prod", "models:/other_agent/1", "1")


# --------------------------------------------------------------------------------------------
# Helm values for the official Dagster chart

_OBJ = {"type": "object"}
_STR = {"type": "string"}
_ENV_SOURCE = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {"name": _STR, "optional": {"type": "boolean"}}}
_IMAGE = {"type": "object", "required": ["repository", "pullPolicy"], "additionalProperties": False,
          "properties": {"repository": _STR, "tag": {"type": ["string", "integer", "null"]},
                         "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}}
_ENV = {"anyOf": [{"type": "object", "additionalProperties": _STR},
                  {"type": "array", "items": {"type": "object", "required": ["name"]}}]}
# The structure of the chart's values.schema.json (dagster 1.13) for the keys these values use,
# strict where the chart is (additionalProperties: false) and where a typo would go unnoticed.
HELM_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "global": {"type": "object", "additionalProperties": False, "properties": {
            "postgresqlSecretName": _STR, "dagsterHome": _STR, "serviceAccountName": _STR,
            "celeryConfigSecretName": _STR}},
        "serviceAccount": {"type": "object", "additionalProperties": False, "properties": {
            "create": {"type": "boolean"}, "name": _STR, "annotations": _OBJ}},
        "generatePostgresqlPasswordSecret": {"type": "boolean"},
        "generateCeleryConfigSecret": {"type": "boolean"},
        "postgresql": {"type": "object", "additionalProperties": False, "properties": {
            "image": _OBJ, "enabled": {"type": "boolean"}, "postgresqlHost": _STR,
            "postgresqlUsername": _STR, "postgresqlPassword": _STR, "postgresqlDatabase": _STR,
            "postgresqlParams": _OBJ, "postgresqlScheme": _STR,
            "service": {"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}}}},
        "dagsterWebserver": {"type": "object", "additionalProperties": False, "properties": dict.fromkeys([
            "replicaCount", "image", "nameOverride", "pathPrefix", "service", "workspace", "env",
            "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity",
            "tolerations", "podSecurityContext", "securityContext", "resources", "readinessProbe",
            "livenessProbe", "startupProbe", "annotations", "enableReadOnly", "dbStatementTimeout",
            "dbPoolRecycle", "logLevel", "schedulerName", "volumeMounts", "volumes",
            "initContainerResources"], {})},
        "dagster-user-deployments": {"type": "object", "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"}, "enableSubchart": {"type": "boolean"},
            "imagePullSecrets": {"type": "array"},
            "deployments": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["name", "image", "port"],
                "oneOf": [{"required": ["dagsterApiGrpcArgs"]}, {"required": ["codeServerArgs"]}],
                "additionalProperties": False,
                "properties": {
                    "name": _STR, "image": _IMAGE, "port": {"type": "integer"},
                    "dagsterApiGrpcArgs": {"type": "array", "items": _STR},
                    "codeServerArgs": {"type": "array", "items": _STR},
                    "includeConfigInLaunchedRuns": {"type": "object", "required": ["enabled"],
                                                    "properties": {"enabled": {"type": "boolean"}}},
                    "deploymentNamespace": _STR, "env": _ENV,
                    "envConfigMaps": {"type": "array", "items": _ENV_SOURCE},
                    "envSecrets": {"type": "array", "items": _ENV_SOURCE},
                    **dict.fromkeys(["annotations", "nodeSelector", "affinity", "tolerations",
                                     "podSecurityContext", "securityContext", "resources",
                                     "livenessProbe", "readinessProbe", "startupProbe", "labels",
                                     "volumeMounts", "volumes", "schedulerName", "initContainers",
                                     "sidecarContainers", "replicaCount", "serviceAccount",
                                     "deploymentStrategy"], {}),
                }}},
        }},
        "runLauncher": {
            "type": "object", "required": ["type", "config"], "additionalProperties": False,
            "properties": {
                "type": {"enum": ["CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"]},
                "config": {"type": "object", "properties": {"k8sRunLauncher": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "image": _OBJ, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                        "jobNamespace": {"type": ["string", "null"]},
                        "loadInclusterConfig": {"type": "boolean"},
                        "kubeconfigFile": {"type": ["string", "null"]},
                        "envConfigMaps": {"type": "array", "items": _ENV_SOURCE},
                        "envSecrets": {"type": "array", "items": _ENV_SOURCE},
                        "envVars": {"type": "array", "items": _STR},
                        "volumeMounts": {"type": "array"}, "volumes": {"type": "array"},
                        "labels": _OBJ, "failPodOnRunFailure": {"type": "boolean"}, "resources": _OBJ,
                        "schedulerName": _STR, "securityContext": _OBJ,
                        "runK8sConfig": {"type": "object", "additionalProperties": False,
                                         "properties": dict.fromkeys([
                                             "containerConfig", "podSpecConfig", "podTemplateSpecMetadata",
                                             "jobSpecConfig", "jobMetadata"], _OBJ)}}}}},
            },
            "if": {"properties": {"type": {"const": "K8sRunLauncher"}}},
            "then": {"properties": {"config": {"required": ["k8sRunLauncher"]}}},
        },
        "dagsterDaemon": {"type": "object", "additionalProperties": False, "properties": {
            **dict.fromkeys(["image", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
                             "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations",
                             "podSecurityContext", "securityContext", "resources", "livenessProbe",
                             "readinessProbe", "startupProbe", "annotations", "runMonitoring",
                             "runRetries", "sensors", "schedules", "schedulerName", "volumeMounts",
                             "volumes", "initContainerResources"], {}),
            "enabled": {"type": "boolean"},
            "runCoordinator": {
                "type": "object", "required": ["enabled", "type", "config"], "additionalProperties": False,
                "properties": {
                    "enabled": {"type": "boolean"},
                    "type": {"enum": ["QueuedRunCoordinator", "CustomRunCoordinator"]},
                    "config": {"type": "object", "properties": {"queuedRunCoordinator": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "maxConcurrentRuns": {"type": ["integer", "null"]},
                            "dequeueIntervalSeconds": {"type": ["integer", "null"]},
                            "dequeueNumWorkers": {"type": ["integer", "null"]},
                            "dequeueUseThreads": {"type": ["boolean", "null"]},
                            "blockOpConcurrencyLimitedRuns": _OBJ,
                            "tagConcurrencyLimits": {"type": "array", "items": {
                                "type": "object", "required": ["key", "limit"], "additionalProperties": False,
                                "properties": {
                                    "key": _STR, "limit": {"type": "integer"},
                                    "value": {"anyOf": [_STR, {"type": "null"}, {
                                        "type": "object", "required": ["applyLimitPerUniqueValue"],
                                        "additionalProperties": False,
                                        "properties": {"applyLimitPerUniqueValue": {"type": "boolean"}}}]}}}}}}}},
                },
            },
        }},
        "telemetry": {"type": "object", "additionalProperties": False,
                      "properties": {"enabled": {"type": "boolean"}}},
        **dict.fromkeys(["rabbitmq", "redis", "flower", "ingress", "imagePullSecrets", "computeLogManager",
                         "scheduler", "pythonLogs", "busybox", "migrate", "retention",
                         "additionalInstanceConfig"], {}),
    },
}


@pytest.fixture(scope="module")
def helm_values():
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def test_helm_values_match_the_chart_structure(helm_values):
    jsonschema.Draft202012Validator.check_schema(HELM_SCHEMA)
    errors = sorted(jsonschema.Draft202012Validator(HELM_SCHEMA).iter_errors(helm_values), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_helm_values_say_what_the_project_needs(helm_values):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # external Postgres, password from the Secret the chart reads
    assert helm_values["postgresql"]["enabled"] is False
    assert helm_values["generatePostgresqlPasswordSecret"] is False
    assert helm_values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    assert {"postgresqlHost", "postgresqlUsername", "postgresqlDatabase"} <= set(helm_values["postgresql"])
    # the same driver as deploy/dagster-production.yaml (psycopg 3 breaks dagster-postgres)
    production = yaml.safe_load((DEPLOY / "dagster-production.yaml").read_text())
    scheme = production["storage"]["postgres"]["postgres_db"]["scheme"]
    assert helm_values["postgresql"]["postgresqlScheme"] == scheme == "postgresql+psycopg2"
    # the code location
    (code,) = helm_values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"] == ["-m", pyproject["tool"]["dagster"]["module_name"]]
    assert code["port"] == 4000
    assert str(code["image"]["tag"]) == pyproject["project"]["version"]
    env = {e["name"]: e.get("value") for e in code["env"]}
    assert env["AGENTOPS_MODE"] == "production"
    assert env["AGENTOPS_DEPLOYER"] == "kubernetes" and env["AGENTOPS_SERVING_IMAGE"]
    secrets = {s["name"] for s in code["envSecrets"]}
    assert secrets == {"agentops-mlflow", "agentops-feast", "agentops-redis"}
    assert code["podSecurityContext"]["runAsNonRoot"] is True
    # runs: one pod each, same Secrets
    launcher = helm_values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert {s["name"] for s in launcher["config"]["k8sRunLauncher"]["envSecrets"]} == secrets
    # one run per environment at a time, as in the repository's dagster.yaml
    coordinator = helm_values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    limits = coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())["run_coordinator"]["config"]
    assert limits == local["tag_concurrency_limits"]
    assert limits == [{"key": "agentops/environment", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    # every Secret the values name is created in the README
    readme = (DEPLOY / "helm" / "README.md").read_text()
    for name in secrets | {helm_values["global"]["postgresqlSecretName"]}:
        assert f"create secret generic {name}" in readme, name
    assert "postgresql-password" in readme
    assert "helm upgrade --install" in readme


def test_helm_schema_catches_typos(helm_values):
    broken = copy.deepcopy(helm_values)
    broken["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"][0][
        "value"] = {"applyLimitPerUniqueValues": True}
    broken["runLauncher"]["config"]["k8sRunLauncher"]["envSecret"] = []
    broken["dagster-user-deployments"]["deployments"][0].pop("dagsterApiGrpcArgs")
    errors = list(jsonschema.Draft202012Validator(HELM_SCHEMA).iter_errors(broken))
    assert len(errors) == 3


# --------------------------------------------------------------------------------------------
# Grafana


@pytest.fixture(scope="module")
def dashboard():
    return json.loads((DEPLOY / "grafana" / "agentops-dashboard.json").read_text())


def _targets(dashboard):
    return [(p, t) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_use_only_the_serving_metrics(dashboard):
    used = set()
    for panel, target in _targets(dashboard):
        expr = target["expr"]
        # every selector is a metric followed by its label matchers
        selected = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))
        assert selected <= METRICS, (panel["title"], selected - METRICS)
        assert set(re.findall(r"agentops_\w+", expr)) == selected, panel["title"]
        assert 'agent=~"$agent"' in expr and 'environment=~"$environment"' in expr, panel["title"]
        assert target["datasource"]["uid"] == "${datasource}"
        used |= selected
    assert {"agentops_requests_total", "agentops_request_latency_seconds_bucket", "agentops_errors_total",
            "agentops_tool_calls_total", "agentops_escalations_total", "agentops_canary_share",
            "agentops_model_info"} <= used


def test_dashboard_panels_and_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "agent", "environment"} <= set(variables)
    for name in ("agent", "environment"):
        query = variables[name]["query"]["query"]
        assert query.startswith("label_values(agentops_requests_total") and query.endswith(f"{name})")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for what in ("request rate by version and outcome", "p50 / p99", "error rate", "tool calls by tool",
                 "escalations", "canary share"):
        assert what in titles, what
    cells = set()
    for p in dashboard["panels"]:  # no two panels overlap on the 24-column grid
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    latency = [t["expr"] for p, t in _targets(dashboard) if "p50 / p99" in p["title"]]
    assert any("histogram_quantile(0.5," in e for e in latency)
    assert any("histogram_quantile(0.99," in e for e in latency)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_dashboard_queries_parse_as_promql(dashboard, tmp_path):
    def concrete(expr):
        return expr.replace("$__rate_interval", "5m").replace("$agent", ".*").replace("$environment", ".*")

    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": concrete(t["expr"])} for i, (_, t) in enumerate(_targets(dashboard))
    ] + [{"record": f"stats:{name}", "expr": q} for name, q in stats_queries(AGENT, "prod", 300).items()]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_installs_dependencies_before_the_source():
    final = dockerfile_stages()[-1]
    assert final[0] == ("FROM", "python:3.11-slim")
    steps = [f"{i} {a}" for i, a in final]
    deps = next(n for n, s in enumerate(steps) if s.startswith("RUN") and "pip install -r" in s)
    assert steps[deps - 1].startswith("COPY pyproject.toml"), "the dependency layer needs only pyproject.toml"
    source = [n for n, s in enumerate(steps) if s.startswith("COPY") and "pyproject.toml" not in s]
    assert source and min(source) > deps, "source copied before the dependencies are installed"
    assert any("--no-deps" in s for s in steps[deps + 1:] if s.startswith("RUN"))


def test_dockerfile_builds_every_package_folder():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {a.split()[0] for stage in dockerfile_stages() for i, a in stage if i == "COPY"}
    assert folders <= copied, folders - copied
    assert {"pyproject.toml"} <= {w for a in copied for w in a.split()} | copied
    # ... and the ignore file of that build lets them through
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**"
    allowed = {p.strip("!/") for p in ignore if p.startswith("!")}
    assert folders | {"pyproject.toml", "README.md"} <= allowed


def test_dockerfile_runs_as_non_root_and_serves_both_ports():
    final = dockerfile_stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [i for i, _ in final].index("USER") > max(n for n, (i, _) in enumerate(final) if i == "RUN")
    exposed = {p for i, a in final if i == "EXPOSE" for p in a.split()}
    assert {"4000", "8080"} <= exposed
    cmd = json.loads(next(a for i, a in final if i == "CMD"))
    assert cmd == ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m",
                   "agentops_pipelines.definitions"]
    uid = int(users[-1].split(":")[0])
    assert KubernetesDeployer().spec_for("prod").run_as_user == uid


# --------------------------------------------------------------------------------------------
# compose


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _interpolated(value: str) -> str:
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def test_compose_services_have_an_image_and_existing_files(compose):
    services = compose["services"]
    assert {"postgres", "redis", "mlflow", "dagster-code", "dagster-webserver", "dagster-daemon",
            "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}
        for arg in service.get("command") or []:
            if isinstance(arg, str) and arg.startswith("--config.file="):
                inside = arg.split("=", 1)[1]
                target = next(t for t in mounts if inside == t or inside.startswith(t + "/"))
                source = DEPLOY / (mounts[target] + inside[len(target):])
                assert source.is_file(), f"{name} reads {inside}: write {source.relative_to(ROOT)}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


def test_compose_variables_are_documented(compose):
    text = (DEPLOY / "compose.yaml").read_text()
    variables = set(re.findall(r"\$\{(\w+)", text))
    readme = (DEPLOY / "README.md").read_text()
    undocumented = {v for v in variables if f"| `{v}` |" not in readme}
    assert not undocumented, f"document {sorted(undocumented)} in deploy/README.md"


def test_compose_wiring(compose):
    services = compose["services"]
    code = services["dagster-code"]
    env = {k: _interpolated(str(v)) for k, v in code["environment"].items()}
    # the instance file reads exactly these variables
    instance = (DEPLOY / "dagster-production.yaml").read_text()
    for variable in set(re.findall(r"env: (DAGSTER_\w+)", instance)):
        assert variable in env, variable
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # the webserver and the daemon load the code server's gRPC endpoint
    workspace = yaml.safe_load((DEPLOY / "compose-workspace.yaml").read_text())
    (server,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert server["host"] == "dagster-code" and server["port"] == 4000
    assert server["location_name"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"][
        "code_location_name"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "/opt/dagster/app/workspace.yaml" in services[name]["command"]
        assert services[name]["image"] == code["image"] and services[name]["build"] == code["build"]
    # Grafana loads the dashboard it is told is home
    grafana = services["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert any(v.split(":")[1] == home for v in grafana["volumes"])
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/agentops.yaml").read_text())
    assert home.startswith(provider["providers"][0]["options"]["path"] + "/")
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    # MLflow answers the Host header the code server sends
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "mlflow:*" in mlflow_args and "--serve-artifacts" in mlflow_args


def test_compose_environment_passes_production_settings(compose, monkeypatch):
    from agentops_pipelines.resources.settings import load_settings

    for name, value in compose["services"]["dagster-code"]["environment"].items():
        monkeypatch.setenv(name, _interpolated(str(value)))
    settings = load_settings()  # production mode refuses embedded defaults: must not raise
    assert settings.mode == "production"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    # Prometheus scrapes the serving processes where the local deployer puts them
    from agentops_pipelines.definitions import build_deployer

    deployer = build_deployer(settings)
    assert deployer.host == "0.0.0.0" and deployer.admin_token is not None
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    (serving,) = [job for job in scrape if job["job_name"] == "agentops-serving"]
    targets = {t for c in serving["static_configs"] for t in c["targets"]}
    assert targets == {f"dagster-code:{port}" for port in deployer.ports.values()}
    assert set(deployer.ports) == {"dev", "staging", "prod"}
