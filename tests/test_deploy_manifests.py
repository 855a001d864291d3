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

import copy
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agentops_pipelines.k8s.render import (
    Release,
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


