"""Rendering (pure): the manifests one agent needs in one environment, and the RBAC."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentops_pipelines.features.online import agent_project
from agentops_pipelines.k8s.naming import (
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_KEY,
    ADMIN_TOKEN_SECRET,
    ANNOTATION_CANARY_SHARE,
    ANNOTATION_HASH,
    ANNOTATION_MODEL_URI,
    DEFAULT_IMAGE,
    DEFAULT_MLFLOW_URI,
    FIELD_MANAGER,
    LABEL_ROLE,
    LABEL_VERSION,
    LIVENESS_PATH,
    MANAGED_BY,
    READINESS_PATH,
    ROLES,
    SERVING_MODULE,
    Role,
    admin_token_secret_name,
    label_value,
    namespace_for,
    object_name,
    selector_labels,
)
from agentops_pipelines.vocabulary import EnvVar, pinned_version

# --------------------------------------------------------------------------------------------
# Rendering (pure)

SOR_SECRET_KEY = "url"  # the key of the system-of-record Secret (ServingSpec.sor_secret)


def sor_secret_name(template: str, environment: str) -> str:
    """The system-of-record Secret of ``environment`` ("{environment}" in ``template``)."""
    return template.replace("{environment}", environment)


@dataclass(frozen=True)
class ServingSpec:
    """How an environment's serving pods run: everything rendering needs besides the version."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    port: int = 8080
    service_port: int = 80
    replicas: int = 2  # the HPA's minimum when autoscaling, else the Deployment's replicas
    max_replicas: int = 4
    autoscaling: bool = True
    target_cpu_utilization: int = 70
    cpu_request: str = "250m"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "1Gi"
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_URI
    mlflow_secret: str = "agentops-mlflow"  # envFrom (optional): MLFLOW_TRACKING_USERNAME, ...
    # The Secret (key "token", non-empty) holding the bearer token of the pods' /admin/*; required.
    # "{agent}" in it becomes the agent's DNS name: one token per (agent, namespace).
    admin_token_secret: str = ADMIN_TOKEN_SECRET  # required: rendering fails when empty
    startup_timeout_s: int = 300  # time a pod may take to load its model
    run_as_user: int = 10001  # the image's non-root user (deploy/Dockerfile)
    # The inference log (requests and predictions, for drift): a ReadWriteMany
    # PersistentVolumeClaim in the serving namespace, on the share the Dagster run pods see as
    # AGENTOPS_INFERENCE_LOG_DIR; pods write <mount>/<agent>/<environment>/date=.../*.parquet,
    # named by pod. "" logs nothing.
    inference_log_claim: str = ""
    inference_log_mount: str = "/var/lib/agentops/inference_log"
    # The Feast project prefix (AGENTOPS_FEAST_PROJECT of the code location): a pod of agent A reads
    # project "<prefix>_A" (agentops_pipelines.features.online.agent_project), never another agent's.
    feast_project: str = "agentops"
    # Secrets only some agents' pods get (an LLM agent's key): (agent, variable) pairs; the pod
    # reads the variable from the Secret ``agent_secret`` names ("{agent}" becomes the agent's
    # DNS name), under a key of the variable's name. Other agents' pods never reference it.
    agent_secret_env: tuple[tuple[str, str], ...] = ()
    agent_secret: str = "agentops-{agent}-secrets"
    # The environment's system of record: the Secret ("{environment}" becomes the environment's
    # name) whose key ``url`` the pods read as AGENTOPS_SOR_URL. One per environment, so dev's
    # pods (serving versions nobody approved yet) never hold prod's URL. Optional: without it the
    # pods do not act (``--sor-fallback off``: one-step answers, no tools), never on a throwaway
    # SQLite file of their own that replicas would not share and a restart would lose.
    sor_secret: str = "agentops-sor-{environment}"

    def __post_init__(self) -> None:
        if not self.admin_token_secret.strip():
            raise ValueError(
                "admin_token_secret is empty: the serving pods' /admin/* (which loads model "
                "versions) would have no token. Name a Secret with a non-empty key "
                f"{ADMIN_TOKEN_KEY!r} in each serving namespace (deploy/k8s/README.md)"
            )
        if "{environment}" not in self.sor_secret:
            raise ValueError(f"sor_secret {self.sor_secret!r} must contain '{{environment}}': one system "
                             f"of record per environment, so dev's pods never hold prod's URL")
        if self.replicas < 1 or self.max_replicas < self.replicas:
            raise ValueError(
                f"need 1 <= replicas ({self.replicas}) <= max_replicas ({self.max_replicas})"
            )


@dataclass(frozen=True)
class Release:
    """A version of the model as served by one Deployment."""

    version: str
    model_uri: str


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """A hash of everything in ``manifest`` except the hash annotation itself."""
    body = copy.deepcopy(dict(manifest))
    body.get("metadata", {}).get("annotations", {}).pop(ANNOTATION_HASH, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["metadata"].setdefault("annotations", {})[ANNOTATION_HASH] = manifest_hash(manifest)
    return manifest


def _metadata(name: str, namespace: str, labels: Mapping[str, str], **annotations: str) -> dict:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def _common_labels(agent: str, environment: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "agentops-serving",
        "app.kubernetes.io/instance": object_name(agent, environment),
        "app.kubernetes.io/component": "serving",
        "app.kubernetes.io/part-of": "agentops",
        MANAGED_BY: FIELD_MANAGER,
        **selector_labels(agent, environment),
    }


def _probe(path: str, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _container(
    agent: str, environment: str, release: Release, role: Role, spec: ServingSpec
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": spec.mlflow_tracking_uri},
        # a pod serves one model: its role is this label's, not an in-process split's
        {"name": EnvVar.SERVING_ROLE.value, "value": role},
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only
        {"name": EnvVar.HOME.value, "value": "/tmp/agentops"},
        {"name": EnvVar.FEAST_PROJECT.value, "value": agent_project(spec.feast_project, agent)},
        # required: a pod does not start without the Secret (the deployer checks the key is not
        # empty before a rollout, and the server refuses to start without a token)
        {"name": ADMIN_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
            "name": admin_token_secret_name(spec.admin_token_secret, agent), "key": ADMIN_TOKEN_KEY,
            "optional": False}}},
    ]
    env += [{"name": variable, "valueFrom": {"secretKeyRef": {
        "name": admin_token_secret_name(spec.agent_secret, agent), "key": variable, "optional": False}}}
        for owner, variable in spec.agent_secret_env if owner == agent]
    env.append({"name": EnvVar.SOR_URL.value, "valueFrom": {"secretKeyRef": {
        "name": sor_secret_name(spec.sor_secret, environment), "key": SOR_SECRET_KEY, "optional": True}}})
    container: dict[str, Any] = {
        "name": "serving",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python", "-m", SERVING_MODULE],
        "args": [
            "--model-uri", release.model_uri,
            "--version", release.version,
            "--environment", environment,
            "--host", "0.0.0.0",
            "--port", str(spec.port),
            "--sor-fallback", "off",  # no Secret: do not act (see ServingSpec.sor_secret)
        ],
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": env,
        "resources": {
            "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
            "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit},
        },
        # /readyz answers 503 until the model is loaded and while draining: the startup probe
        # allows for a slow load, readiness keeps a pod out of the Service until it serves (and
        # from the moment it drains); liveness (/livez: the process answers) restarts a server
        # that stopped answering, never one that is only loading or draining.
        "startupProbe": _probe(READINESS_PATH, 5, max(1, math.ceil(spec.startup_timeout_s / 5))),
        "readinessProbe": _probe(READINESS_PATH, 5, 3),
        "livenessProbe": _probe(LIVENESS_PATH, 10, 3, timeout=3),
        # let endpoints and kube-proxy drop the pod before the server stops on SIGTERM
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.inference_log_claim:
        container["args"] += ["--inference-log-dir", inference_log_dir(agent, environment, spec)]
        container["volumeMounts"].append(
            {"name": "inference-log", "mountPath": spec.inference_log_mount}
        )
    if spec.mlflow_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.mlflow_secret, "optional": True}}]
    return container


def inference_log_dir(agent: str, environment: str, spec: ServingSpec) -> str:
    """The folder a pod logs to: the layout the drift asset reads (<root>/<agent>/<environment>)."""
    return f"{spec.inference_log_mount.rstrip('/')}/{agent}/{environment}"


def _volumes(spec: ServingSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if spec.inference_log_claim:
        volumes.append({
            "name": "inference-log",
            "persistentVolumeClaim": {"claimName": spec.inference_log_claim},
        })
    return volumes


def _deployment(
    agent: str,
    environment: str,
    release: Release,
    role: Role,
    spec: ServingSpec,
    namespace: str,
    replicas: int | None,
    canary_share: float | None,
) -> dict[str, Any]:
    version = label_value(release.version)
    labels = {**_common_labels(agent, environment), LABEL_ROLE: role, LABEL_VERSION: version,
              "app.kubernetes.io/version": version}
    annotations = {ANNOTATION_MODEL_URI: release.model_uri}
    if canary_share is not None:
        annotations[ANNOTATION_CANARY_SHARE] = f"{canary_share:g}"
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.port),
        "prometheus.io/path": "/metrics",
        ANNOTATION_MODEL_URI: release.model_uri,
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(agent, environment, role)},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "minReadySeconds": 5,
        "progressDeadlineSeconds": max(600, spec.startup_timeout_s * 2),
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {"labels": labels, "annotations": pod_annotations},
            "spec": {
                "serviceAccountName": object_name(agent, environment),
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 30,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": spec.run_as_user,
                    "runAsGroup": spec.run_as_user,
                    "fsGroup": spec.run_as_user,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "topologySpreadConstraints": [{
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": selector_labels(agent, environment, role)},
                }],
                "containers": [_container(agent, environment, release, role, spec)],
                "volumes": _volumes(spec),
            },
        },
    }
    # With an HPA the Deployment leaves replicas alone: applying a count would fight the HPA.
    if replicas is not None:
        deployment_spec = {"replicas": replicas, **deployment_spec}
    return _stamp({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(object_name(agent, environment, role), namespace, labels, **annotations),
        "spec": deployment_spec,
    })


def render_manifests(
    agent: str,
    environment: str,
    version: str,
    model_uri: str,
    *,
    role: Role = "stable",
    spec: ServingSpec | None = None,
    namespace: str | None = None,
    canary_replicas: int = 1,
    canary_share: float | None = None,
) -> list[dict[str, Any]]:
    """The objects ``agent`` needs in ``environment`` to serve ``model_uri`` in ``role``.

    ``stable``: ServiceAccount, Service (selecting both roles), Deployment, HPA (when
    ``spec.autoscaling``), PodDisruptionBudget. ``canary``: one Deployment of
    ``canary_replicas`` pods, ``canary_share`` recorded as an annotation.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    spec = spec or ServingSpec()
    namespace = namespace or namespace_for(environment)
    # A pod serves a pinned version, labelled as the URI names it: never an alias, which whoever
    # can move it in MLflow would point elsewhere at the next pod restart.
    release = Release(pinned_version(model_uri, version), model_uri)
    if role == "canary":
        if canary_replicas < 1:
            raise ValueError("a canary needs at least one replica")
        return [_deployment(agent, environment, release, "canary", spec, namespace,
                            canary_replicas, canary_share)]
    manifests = _shared_objects(agent, environment, spec, namespace)
    manifests.append(_deployment(agent, environment, release, "stable", spec, namespace,
                                 None if spec.autoscaling else spec.replicas, None))
    if spec.autoscaling:
        manifests.append(_autoscaler(agent, environment, spec, namespace))
    return [m if m["kind"] == "Deployment" else _stamp(m) for m in manifests]


def render_bootstrap(agent: str, environment: str, *, spec: ServingSpec | None = None,
                     namespace: str | None = None) -> list[dict[str, Any]]:
    """What may exist before the pipeline's first deploy: ServiceAccount, Service and
    PodDisruptionBudget, with no Deployment (so no pod): a pod starts only when the deployer
    renders a pinned version, never from an alias nobody audited."""
    spec = spec or ServingSpec()
    namespace = namespace or namespace_for(environment)
    return [_stamp(m) for m in _shared_objects(agent, environment, spec, namespace)]


def _shared_objects(agent: str, environment: str, spec: ServingSpec, namespace: str) -> list[dict[str, Any]]:
    """The objects both roles' pods share: ServiceAccount, Service, PodDisruptionBudget."""
    name = object_name(agent, environment)
    labels = _common_labels(agent, environment)
    everyone = selector_labels(agent, environment)  # stable and canary pods
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(name, namespace, labels),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(name, namespace, labels),
            "spec": {
                "type": "ClusterIP",
                "selector": everyone,
                "ports": [{"name": "http", "port": spec.service_port, "targetPort": "http",
                           "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(name, namespace, labels),
            "spec": {
                # maxUnavailable (not minAvailable) never blocks a node drain, even at 1 replica
                "maxUnavailable": 1,
                "selector": {"matchLabels": everyone},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        },
    ]


def _autoscaler(agent: str, environment: str, spec: ServingSpec, namespace: str) -> dict[str, Any]:
    """The stable Deployment's HorizontalPodAutoscaler."""
    name = object_name(agent, environment)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, namespace, _common_labels(agent, environment)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec.replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": spec.target_cpu_utilization}},
            }],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def render_environment(
    agent: str,
    environment: str,
    stable: Release,
    canary: Release | None = None,
    *,
    spec: ServingSpec | None = None,
    namespace: str | None = None,
    canary_replicas: int = 1,
    canary_share: float | None = None,
) -> list[dict[str, Any]]:
    """Everything that should exist for ``agent`` in ``environment``: the target of a plan."""
    manifests = render_manifests(agent, environment, stable.version, stable.model_uri,
                                 spec=spec, namespace=namespace)
    if canary is not None:
        manifests += render_manifests(
            agent, environment, canary.version, canary.model_uri, role="canary", spec=spec,
            namespace=namespace, canary_replicas=canary_replicas, canary_share=canary_share,
        )
    return manifests


def canary_replicas(share: float, stable_replicas: int) -> int:
    """Canary pods next to ``stable_replicas`` so that the canary gets about ``share``."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"canary share must be between 0 and 1 (exclusive), not {share}")
    return max(1, round(share * max(1, stable_replicas) / (1.0 - share)))


def replica_share(canary: int, stable: int) -> float:
    """The share of requests a Service sends to the canary: its share of the ready pods."""
    return canary / (canary + stable) if canary + stable else 0.0


def render_rbac(
    environments: Sequence[str],
    *,
    namespace: str | None = None,
    namespace_prefix: str = "agentops-",
    dagster_namespace: str = "dagster",
    dagster_service_account: str = "dagster",
    admin_token_secret: str = ADMIN_TOKEN_SECRET,
    agents: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """What an administrator applies once: the namespaces and a Role per namespace that lets
    the Dagster run pods (the chart's service account) manage the serving objects, and read
    each agent's admin token Secret (only those) to check it is not empty before a rollout.
    Re-render and apply it when an agent is added."""
    secrets = sorted({admin_token_secret_name(admin_token_secret, a) for a in agents})
    if not secrets:
        raise ValueError("render_rbac needs the agents whose admin token Secrets the deployer reads")
    namespaces = sorted({namespace_for(e, namespace, namespace_prefix) for e in environments})
    labels = {"app.kubernetes.io/part-of": "agentops"}
    rules = [
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
        {"apiGroups": [""], "resources": ["services", "serviceaccounts"],
         "verbs": ["get", "list", "create", "patch", "update", "delete"]},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
         "verbs": ["get", "list", "create", "patch", "update", "delete"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
         "verbs": ["get", "list", "create", "patch", "update", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},  # failure reasons
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets,
         "verbs": ["get"]},
    ]
    manifests: list[dict[str, Any]] = []
    for ns in namespaces:
        manifests.append({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": ns, "labels": {**labels,
                                       "pod-security.kubernetes.io/enforce": "restricted"}}})
        manifests.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "agentops-deployer", "namespace": ns, "labels": labels},
            "rules": rules,
        })
        manifests.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "agentops-deployer", "namespace": ns, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "agentops-deployer"},
            "subjects": [{"kind": "ServiceAccount", "name": dagster_service_account,
                          "namespace": dagster_namespace}],
        })
    return manifests


def to_yaml(manifests: Sequence[Mapping[str, Any]], header: str = "") -> str:
    import yaml

    body = yaml.safe_dump_all([dict(m) for m in manifests], sort_keys=False, width=100)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


