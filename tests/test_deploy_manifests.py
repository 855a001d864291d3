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
import tomllib
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import jsonschema
import kubernetes_validate
import pytest
import yaml

from agentops_pipelines.k8s.naming import (
    LABEL_VERSION,
)
from agentops_pipelines.k8s.render import (
    Release,
)
from agentops_pipelines.k8s.stats import (
    stats_queries,
)
from agentops_pipelines.resources.deployers import Deployer, DeploymentError
from agentops_pipelines.resources.kubernetes_deployer import (
    KubernetesDeployer,
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


