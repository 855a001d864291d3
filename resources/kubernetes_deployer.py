"""Serve model versions on Kubernetes: render manifests, plan a rollout, apply it.

Three layers, each usable on its own:

1. **Rendering** (pure): ``render_manifests(agent, environment, version, model_uri, role=...)``
   returns the objects one agent needs in one environment. The ``stable`` role is a
   ServiceAccount, a Service, a Deployment, a HorizontalPodAutoscaler (autoscaling/v2) and a
   PodDisruptionBudget; the ``canary`` role is one more Deployment running the candidate version.
   ``render_rbac`` renders what an administrator applies once (namespaces and the rights the
   Dagster run pods need). ``python -m agentops_pipelines.resources.kubernetes_deployer render
   deploy/k8s`` writes the committed YAML under ``deploy/k8s``.
2. **Planning** (pure): ``plan_rollout(current, target)`` compares the live objects with the
   desired ones and returns ordered ``Action`` s: server-side apply what is new or changed (each
   rendered object carries a hash of itself), wait for every Deployment of the target to be
   rolled out, delete what the target no longer has. Every operation of the deployer, including
   ``stop`` (an empty target) and rollback (the previous version's manifests as the target), is
   a plan.
3. **Executing** (thin): ``KubernetesDeployer`` reads the live objects with the official
   ``kubernetes`` client (imported lazily), applies with ``field_manager="agentops"`` and
   ``force=True``, and polls Deployment status until it is rolled out or ``rollout_timeout_s``
   passes. A stable rollout that does not become ready is rolled back (the previous version's
   manifests are applied again), a canary that does not become ready is removed: like the local
   deployer, a failed deploy leaves the previous version serving.

Canary traffic. The Service selects an agent's pods in an environment across both roles, so
Kubernetes spreads requests over stable and canary pods by their number: the share is
``canary / (stable + canary)`` replicas, which is coarse (one canary pod next to three stable
ones is 25 %) and drifts when the HPA scales the stable Deployment (the canary has a fixed
replica count and no HPA). A precise share needs a service mesh or an ingress that splits by
weight (Istio ``VirtualService``, Gateway API ``HTTPRoute`` weights, ingress-nginx
``canary-weight``). The local deployer does not need either: the serving process splits traffic
between its two models itself. Each serving pod here runs exactly one model, and the
``agentops/role`` label on its pod says whether it is the stable or the canary one.

Stats. ``stats`` returns, per role, what the serving process's ``/admin/stats`` returns for one
process (version, requests, errors = 5xx, client_errors = 4xx, error_rate, p50_ms, p99_ms), for
the whole environment: replica counts from the Deployments, and the rest from Prometheus when
``prometheus_url`` is set (the pods' ``agentops_*`` metrics, scraped through their
``prometheus.io/*`` annotations; ``stats_queries`` has the PromQL). Without Prometheus those
values are None and ``note`` says why: one pod's ``/admin/stats`` does not describe the others.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import PrivateAttr

from agentops_pipelines.resources.deployers import Deployer, Deployment, DeploymentError

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Names, labels, annotations

FIELD_MANAGER = "agentops"
MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_AGENT = "agentops/agent"
LABEL_ENVIRONMENT = "agentops/environment"
LABEL_ROLE = "agentops/role"
LABEL_VERSION = "agentops/version"
ANNOTATION_HASH = "agentops/manifest-hash"
ANNOTATION_MODEL_URI = "agentops/model-uri"
ANNOTATION_CANARY_SHARE = "agentops/canary-share"

ROLES = ("stable", "canary")
Role = Literal["stable", "canary"]
DEFAULT_IMAGE = "agentops-pipelines:0.1.0"
DEFAULT_MLFLOW_URI = "http://mlflow.agentops-platform.svc.cluster.local:5000"
SERVING_MODULE = "agentops_pipelines.serving"
ADMIN_TOKEN_ENV = "AGENTOPS_SERVING_ADMIN_TOKEN"  # read by agentops_pipelines.serving.app
ADMIN_TOKEN_KEY = "token"  # the key in the admin token Secret
LIVENESS_PATH = "/livez"  # the process is up
READINESS_PATH = "/readyz"  # a model is loaded and the server is not draining (else 503)

# (apiVersion, kind) of everything the deployer manages, in apply order.
MANAGED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
)

_API_VERSION = {kind: api_version for api_version, kind in MANAGED_KINDS}
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def dns_name(value: str) -> str:
    """``support_agent`` -> ``support-agent``: a name Kubernetes accepts for any object."""
    name = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
    if not _DNS_LABEL.match(name):
        raise ValueError(f"{value!r} cannot be made a Kubernetes name")
    return name


def label_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"{value!r} is not a valid Kubernetes label value")
    return value


def object_name(agent: str, environment: str, role: Role = "stable") -> str:
    """``support-agent-prod`` (stable, and the Service) or ``support-agent-prod-canary``."""
    name = f"{dns_name(agent)}-{dns_name(environment)}" + ("-canary" if role == "canary" else "")
    if len(name) > 63:
        raise ValueError(f"{name!r} is longer than 63 characters")
    return name


def namespace_for(environment: str, namespace: str | None = None, prefix: str = "agentops-") -> str:
    """One namespace per environment (``agentops-prod``), or ``namespace`` for all of them."""
    name = namespace or f"{prefix}{dns_name(environment)}"
    if not _DNS_LABEL.match(name) or len(name) > 63:
        raise ValueError(f"{name!r} is not a valid namespace name")
    return name


def selector_labels(agent: str, environment: str, role: Role | None = None) -> dict[str, str]:
    labels = {LABEL_AGENT: label_value(agent), LABEL_ENVIRONMENT: label_value(environment)}
    if role is not None:
        labels[LABEL_ROLE] = role
    return labels


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


# --------------------------------------------------------------------------------------------
# Rendering (pure)


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
    admin_token_secret: str = "agentops-serving-admin"  # required: rendering fails when empty
    startup_timeout_s: int = 300  # time a pod may take to load its model
    run_as_user: int = 10001  # the image's non-root user (deploy/Dockerfile)
    # The inference log (requests and predictions, for drift): a ReadWriteMany
    # PersistentVolumeClaim in the serving namespace, on the share the Dagster run pods see as
    # AGENTOPS_INFERENCE_LOG_DIR; pods write <mount>/<agent>/<environment>/date=.../*.parquet,
    # named by pod. "" logs nothing.
    inference_log_claim: str = ""
    inference_log_mount: str = "/var/lib/agentops/inference_log"

    def __post_init__(self) -> None:
        if not self.admin_token_secret.strip():
            raise ValueError(
                "admin_token_secret is empty: the serving pods' /admin/* (which loads model "
                "versions) would have no token. Name a Secret with a non-empty key "
                f"{ADMIN_TOKEN_KEY!r} in each serving namespace (deploy/k8s/README.md)"
            )
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
        {"name": "AGENTOPS_SERVING_ROLE", "value": role},
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only
        {"name": "AGENTOPS_HOME", "value": "/tmp/agentops"},
        # required: a pod does not start without the Secret (the deployer checks the key is not
        # empty before a rollout, and the server refuses to start without a token)
        {"name": ADMIN_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
            "name": spec.admin_token_secret, "key": ADMIN_TOKEN_KEY, "optional": False}}},
    ]
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
    release = Release(str(version), model_uri)
    if role == "canary":
        if canary_replicas < 1:
            raise ValueError("a canary needs at least one replica")
        return [_deployment(agent, environment, release, "canary", spec, namespace,
                            canary_replicas, canary_share)]

    name = object_name(agent, environment)
    labels = _common_labels(agent, environment)
    everyone = selector_labels(agent, environment)  # stable and canary pods
    manifests: list[dict[str, Any]] = [
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
        _deployment(agent, environment, release, "stable", spec, namespace,
                    None if spec.autoscaling else spec.replicas, None),
    ]
    if spec.autoscaling:
        manifests.append({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(name, namespace, labels),
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
        })
    return [m if m["kind"] == "Deployment" else _stamp(m) for m in manifests]


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
    admin_token_secret: str = "agentops-serving-admin",
) -> list[dict[str, Any]]:
    """What an administrator applies once: the namespaces and a Role per namespace that lets
    the Dagster run pods (the chart's service account) manage the serving objects, and read
    the admin token Secret (only that one) to check it is not empty before a rollout."""
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
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [admin_token_secret],
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


# --------------------------------------------------------------------------------------------
# Planning (pure)

ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


def object_key(obj: Mapping[str, Any], kind: str | None = None) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return (kind or obj["kind"], metadata.get("namespace") or "", metadata["name"])


@dataclass(frozen=True)
class Action:
    """One step of a rollout: ``apply`` a manifest, ``wait_ready`` for a Deployment to be
    rolled out, or ``delete`` an object."""

    op: Literal["apply", "wait_ready", "delete"]
    kind: str
    namespace: str
    name: str
    manifest: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    reason: str = field(default="", compare=False)

    @property
    def key(self) -> ObjectKey:
        return (self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.op} {self.kind}/{self.namespace}/{self.name}" + (
            f" ({self.reason})" if self.reason else ""
        )


def _order(obj: Mapping[str, Any]) -> tuple[int, int]:
    kinds = [k for _, k in MANAGED_KINDS]
    kind = obj["kind"]
    role = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_ROLE)
    return (kinds.index(kind) if kind in kinds else len(kinds), 1 if role == "canary" else 0)


def _live_hash(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HASH)


def _managed(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) == FIELD_MANAGER


def plan_rollout(
    current: Mapping[ObjectKey, Mapping[str, Any]],
    target: Sequence[Mapping[str, Any]],
    *,
    reapply: bool = False,
) -> list[Action]:
    """The ordered steps that turn ``current`` (the live objects, by key) into ``target``.

    - apply, in dependency order (ServiceAccount, Service, PodDisruptionBudget, stable
      Deployment, canary Deployment, HPA), each object that is missing or whose hash differs
      (all of them with ``reapply``);
    - after each Deployment of the target, wait for it to be rolled out (even when unchanged:
      a deploy confirms that what it leaves in place serves);
    - then delete the objects the deployer manages that the target no longer has (a canary
      after a promote or an abort, everything for ``stop``), canaries first, in reverse order.

    Objects in ``current`` without ``app.kubernetes.io/managed-by: agentops`` are never deleted.
    """
    actions: list[Action] = []
    wanted = {object_key(m): m for m in target}
    if len(wanted) != len(target):
        raise ValueError("the target has two objects of the same kind, namespace and name")
    for manifest in sorted(target, key=_order):
        key = object_key(manifest)
        live = current.get(key)
        if live is None:
            reason = "new"
        elif _live_hash(live) != _live_hash(manifest):
            reason = "changed"
        else:
            reason = "unchanged, re-applied" if reapply else ""
        if reason:
            actions.append(Action("apply", *key, manifest=dict(manifest), reason=reason))
        if key[0] == "Deployment":
            actions.append(Action("wait_ready", *key, reason="rolled out and available"))
    stale = [(key, obj) for key, obj in current.items() if key not in wanted and _managed(obj)]
    stale.sort(key=lambda item: _order({**item[1], "kind": item[0][0]}), reverse=True)
    for key, _ in stale:
        actions.append(Action("delete", *key, reason="not in the target"))
    return actions


@dataclass(frozen=True)
class RolloutStatus:
    done: bool
    failed: bool
    message: str


def deployment_status(obj: Mapping[str, Any]) -> RolloutStatus:
    """Where a Deployment's rollout stands, as ``kubectl rollout status`` judges it."""
    metadata, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = metadata.get("name", "?")
    if (status.get("observedGeneration") or 0) < (metadata.get("generation") or 0):
        return RolloutStatus(False, False, f"{name}: waiting for the controller to see the update")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return RolloutStatus(False, True, f"{name}: {condition.get('message', 'progress deadline exceeded')}")
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas") or 0
    total = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if updated < desired:
        return RolloutStatus(False, False, f"{name}: {updated} of {desired} replicas updated")
    if total > updated:
        return RolloutStatus(False, False, f"{name}: {total - updated} old replicas terminating")
    if available < updated:
        return RolloutStatus(False, False, f"{name}: {available} of {updated} updated replicas available")
    return RolloutStatus(True, False, f"{name}: {available} of {desired} replicas available")


def release_of(deployment: Mapping[str, Any] | None) -> Release | None:
    """The version a live (or rendered) Deployment serves, from its label and annotation."""
    if not deployment:
        return None
    metadata = deployment.get("metadata") or {}
    version = (metadata.get("labels") or {}).get(LABEL_VERSION)
    model_uri = (metadata.get("annotations") or {}).get(ANNOTATION_MODEL_URI)
    return Release(version, model_uri) if version and model_uri else None


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why pods are not ready (image pulls, crash loops, unschedulable), one line each."""
    problems = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
                problems.append(f"{name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": "))
            terminated = (cs.get("lastState") or {}).get("terminated") or {}
            if terminated.get("reason") and cs.get("restartCount"):
                problems.append(f"{name}: restarted {cs['restartCount']}x, last exit "
                                f"{terminated.get('exitCode')} ({terminated['reason']})")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                problems.append(f"{name}: unschedulable: {condition.get('message', '')}")
    return problems


# --------------------------------------------------------------------------------------------
# Prometheus (stats)

_PROMQL = {
    "requests": "sum by (version, outcome) (increase(agentops_requests_total{{{sel}}}[{w}]))",
    "escalations": "sum by (version) (increase(agentops_escalations_total{{{sel}}}[{w}]))",
    "p50": "histogram_quantile(0.5, sum by (version, le) "
    "(rate(agentops_request_latency_seconds_bucket{{{sel}}}[{w}])))",
    "p99": "histogram_quantile(0.99, sum by (version, le) "
    "(rate(agentops_request_latency_seconds_bucket{{{sel}}}[{w}])))",
}


def stats_queries(agent: str, environment: str, window_s: float) -> dict[str, str]:
    """The PromQL behind ``KubernetesDeployer.stats`` (instant queries over ``window_s``)."""
    sel = f'agent="{agent}",environment="{environment}"'
    w = f"{max(1, int(window_s))}s"
    return {name: q.format(sel=sel, w=w) for name, q in _PROMQL.items()}


def _samples(response: Mapping[str, Any]) -> list[tuple[dict[str, str], float]]:
    out = []
    for sample in (response.get("data") or {}).get("result") or []:
        value = float(sample["value"][1])
        if not math.isnan(value):
            out.append((sample.get("metric") or {}, value))
    return out


def role_stats(answers: Mapping[str, Mapping[str, Any]], version: str) -> dict[str, Any]:
    """One version's stats from the answers to ``stats_queries``, in the shape of the serving
    process's ``/admin/stats`` (requests, errors = 5xx, client_errors = 4xx, error_rate, p50_ms,
    p99_ms) plus escalations. Counts from ``increase()`` are estimates, hence rounded."""
    outcomes = {m.get("outcome"): v for m, v in _samples(answers["requests"]) if m.get("version") == version}
    requests = round(sum(outcomes.values()))
    errors = round(outcomes.get("server_error", 0.0))

    def one(name: str, scale: float = 1.0) -> float | None:
        values = [v for m, v in _samples(answers[name]) if m.get("version") == version]
        return round(values[0] * scale, 3) if values else None

    return {
        "requests": requests,
        "errors": errors,
        "client_errors": round(outcomes.get("client_error", 0.0)),
        "error_rate": round(errors / requests, 6) if requests else 0.0,
        "p50_ms": one("p50", 1000.0) if requests else None,
        "p99_ms": one("p99", 1000.0) if requests else None,
        "escalations": round(one("escalations") or 0.0),
    }


# --------------------------------------------------------------------------------------------
# The resource


class KubernetesDeployer(Deployer):
    """Serve an agent's versions on Kubernetes, one namespace per environment by default.

    String fields accept ``dg.EnvVar(...)``. Rendering and planning are pure functions of this
    module; this class reads the live objects, applies plans and waits. One resource serves one
    agent (``agent``, the registered model's name); the ``Deployment`` it returns has the
    Service's in-cluster URL and ``pid=0`` (pods, not a local process). The cluster is reached
    in-cluster (the run pod's service account, see deploy/k8s/rbac.yaml) or through
    ``kubeconfig`` / ``kube_context``; ``in_cluster=None`` picks in-cluster when
    ``KUBERNETES_SERVICE_HOST`` is set.
    """

    agent: str = "support_agent"
    namespace: str | None = None  # one namespace for all environments, else namespace_prefix+env
    namespace_prefix: str = "agentops-"
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_URI
    mlflow_secret: str = "agentops-mlflow"
    admin_token_secret: str = "agentops-serving-admin"  # required: rendering fails when empty
    port: int = 8080
    service_port: int = 80
    replicas: dict[str, int] = {"dev": 1, "staging": 2, "prod": 3}
    max_replicas: dict[str, int] = {"dev": 2, "staging": 4, "prod": 10}
    autoscaling: bool = True
    target_cpu_utilization: int = 70
    cpu_request: str = "250m"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "1Gi"
    startup_timeout_s: int = 300
    in_cluster: bool | None = None  # None: in-cluster when KUBERNETES_SERVICE_HOST is set
    kubeconfig: str | None = None
    kube_context: str | None = None
    cluster_domain: str = "cluster.local"
    rollout_timeout_s: float = 600.0
    poll_interval_s: float = 2.0
    prometheus_url: str | None = None
    inference_log_claim: str = ""  # see ServingSpec: "" logs nothing
    inference_log_mount: str = "/var/lib/agentops/inference_log"

    _dynamic: Any = PrivateAttr(default=None)

    # -- pure helpers

    def spec_for(self, environment: str) -> ServingSpec:
        minimum = self.replicas.get(environment, 2)
        return ServingSpec(
            image=self.image,
            image_pull_policy=self.image_pull_policy,
            port=self.port,
            service_port=self.service_port,
            replicas=minimum,
            max_replicas=max(minimum, self.max_replicas.get(environment, 2 * minimum)),
            autoscaling=self.autoscaling,
            target_cpu_utilization=self.target_cpu_utilization,
            cpu_request=self.cpu_request,
            cpu_limit=self.cpu_limit,
            memory_request=self.memory_request,
            memory_limit=self.memory_limit,
            mlflow_tracking_uri=self.mlflow_tracking_uri,
            mlflow_secret=self.mlflow_secret,
            admin_token_secret=self.admin_token_secret,
            startup_timeout_s=self.startup_timeout_s,
            inference_log_claim=self.inference_log_claim,
            inference_log_mount=self.inference_log_mount,
        )

    def namespace_of(self, environment: str) -> str:
        return namespace_for(environment, self.namespace, self.namespace_prefix)

    def url(self, environment: str) -> str:
        host = f"{object_name(self.agent, environment)}.{self.namespace_of(environment)}.svc.{self.cluster_domain}"
        return f"http://{host}" + ("" if self.service_port == 80 else f":{self.service_port}")

    def target(
        self,
        environment: str,
        stable: Release,
        canary: Release | None = None,
        canary_replicas: int = 1,
        canary_share: float | None = None,
    ) -> list[dict[str, Any]]:
        return render_environment(
            self.agent, environment, stable, canary, spec=self.spec_for(environment),
            namespace=self.namespace_of(environment), canary_replicas=canary_replicas,
            canary_share=canary_share,
        )

    def _check_model_uri(self, model_uri: str) -> None:
        if model_uri.startswith("models:/"):
            name = re.split(r"[/@]", model_uri.removeprefix("models:/"), maxsplit=1)[0]
            if name != self.agent:
                raise DeploymentError(
                    f"{model_uri} is a version of {name!r}, but this deployer serves {self.agent!r}"
                )

    # -- the Deployer interface

    def status(self, environment: str) -> Deployment | None:
        """The stable version (and the canary, if any) when a stable pod is available."""
        return self._status(environment, {role: self._get(self._deployment_key(environment, role))
                                          for role in ROLES})

    def deploy(self, environment: str, model_uri: str, version: str) -> Deployment:
        """Roll the stable Deployment to ``version`` (ending any canary) and wait until it is
        available; if it does not become available, re-apply what was there before."""
        self._check_model_uri(model_uri)
        current = self._live(environment)
        self._rollout(environment, current, self.target(environment, Release(str(version), model_uri)))
        return self._require_status(environment)

    def stop(self, environment: str) -> None:
        self._execute(environment, plan_rollout(self._live(environment), []))

    def deploy_canary(
        self, environment: str, model_uri: str, version: str, share: float
    ) -> Deployment:
        """Run ``version`` next to the stable version on enough pods for about ``share``
        (0 < share < 1) of the requests: the Service splits by ready pods (module docstring).
        Again with the same version, only the canary's replica count changes. A canary that
        does not become ready is removed (or the previous canary restored)."""
        self._check_model_uri(model_uri)
        current = self._live(environment)
        stable_obj = current.get(self._deployment_key(environment, "stable"))
        stable = release_of(stable_obj)
        if stable_obj is None or stable is None:
            raise DeploymentError(f"{environment}: no stable version to run a canary next to; "
                                  "deploy one first")
        stable_count = (stable_obj.get("spec") or {}).get("replicas") or self.replicas.get(environment, 1)
        count = canary_replicas(share, stable_count)
        canary = Release(str(version), model_uri)
        self._rollout(environment, current, self.target(environment, stable, canary, count, share))
        logger.info("%s: canary %s on %d pod(s) next to %d stable (about %.0f%% of requests)",
                    environment, version, count, stable_count, 100 * replica_share(count, stable_count))
        return self._require_status(environment)

    def promote_canary(self, environment: str) -> Deployment:
        """Roll the stable Deployment to the canary's version, then remove the canary."""
        current = self._live(environment)
        canary = release_of(current.get(self._deployment_key(environment, "canary")))
        if canary is None:
            raise DeploymentError(f"{environment}: no canary to promote")
        self._rollout(environment, current, self.target(environment, canary))
        return self._require_status(environment)

    def abort_canary(self, environment: str) -> Deployment:
        """Remove the canary; the stable version keeps serving. A no-op without a canary."""
        current = self._live(environment)
        stable = release_of(current.get(self._deployment_key(environment, "stable")))
        if stable is None:  # remove a stray canary, then say that nothing serves
            key = self._deployment_key(environment, "canary")
            self._execute(environment, [Action("delete", *key)] if key in current else [])
            raise DeploymentError(f"{environment}: nothing is serving; deploy a stable version first")
        self._execute(environment, plan_rollout(current, self.target(environment, stable)))
        return self._require_status(environment)

    def stats(self, environment: str, window_s: float = 60.0) -> dict[str, Any]:
        """Per role (``stable``, ``canary``: None when absent): version, model_uri, replicas,
        ready_replicas and, from Prometheus (``prometheus_url``), requests, errors (5xx),
        client_errors (4xx), error_rate, p50_ms, p99_ms and escalations over the last
        ``window_s`` seconds. Without Prometheus those are None and ``note`` says why: the
        pods' own ``/admin/stats`` sees one pod each, not the environment."""
        result: dict[str, Any] = {"environment": environment, "agent": self.agent,
                                  "window_s": window_s, "covered_s": window_s, "source": "kubernetes"}
        roles: dict[str, dict[str, Any]] = {}
        annotations: dict[str, str] = {}
        for role in ROLES:
            obj = self._get(self._deployment_key(environment, role))
            release = release_of(obj)
            if obj is None or release is None:
                result[role] = None
                continue
            if role == "canary":
                annotations = (obj.get("metadata") or {}).get("annotations") or {}
            status = obj.get("status") or {}
            roles[role] = result[role] = {
                "version": release.version, "model_uri": release.model_uri,
                "replicas": status.get("replicas") or 0, "ready_replicas": status.get("readyReplicas") or 0,
                **dict.fromkeys(("requests", "errors", "client_errors", "error_rate", "p50_ms",
                                 "p99_ms", "escalations")),
            }
        ready = {role: r["ready_replicas"] for role, r in roles.items()}
        result["canary_share"] = replica_share(ready.get("canary", 0), ready.get("stable", 0))
        requested = annotations.get(ANNOTATION_CANARY_SHARE)
        result["canary_share_requested"] = float(requested) if requested else None
        if not self.prometheus_url:
            result["note"] = "prometheus_url is not set: replica counts only"
            return result
        try:
            answers = {name: self._prometheus(query)
                       for name, query in stats_queries(self.agent, environment, window_s).items()}
        except (OSError, ValueError) as e:
            result["note"] = f"Prometheus at {self.prometheus_url} did not answer: {e}"
            return result
        result["source"] = "kubernetes+prometheus"
        for r in roles.values():
            r.update(role_stats(answers, r["version"]))
        return result

    # -- execution

    def _deployment_key(self, environment: str, role: Role) -> ObjectKey:
        return ("Deployment", self.namespace_of(environment), object_name(self.agent, environment, role))

    def _status(self, environment: str, live: Mapping[str, Mapping[str, Any] | None]) -> Deployment | None:
        stable_obj, canary_obj = live.get("stable"), live.get("canary")
        stable, canary = release_of(stable_obj), release_of(canary_obj)
        ready = {role: ((obj or {}).get("status") or {}).get("availableReplicas") or 0
                 for role, obj in live.items()}
        if stable_obj is None or stable is None or not ready.get("stable"):
            return None
        started = (stable_obj.get("metadata") or {}).get("creationTimestamp") or ""
        for condition in (stable_obj.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "Progressing" and condition.get("reason") == "NewReplicaSetAvailable":
                started = condition.get("lastUpdateTime") or started
        return Deployment(
            environment=environment, url=self.url(environment), model_uri=stable.model_uri,
            version=stable.version, pid=0, started_at=str(started),
            canary_version=canary.version if canary else None,
            canary_model_uri=canary.model_uri if canary else None,
            canary_share=replica_share(ready.get("canary", 0), ready["stable"]) if canary else 0.0,
        )

    def _require_status(self, environment: str) -> Deployment:
        deployment = self.status(environment)
        if deployment is None:
            raise DeploymentError(f"{environment}: rolled out, but no stable pod is available")
        return deployment

    def _client(self) -> Any:
        if self._dynamic is None:
            from kubernetes import client, config, dynamic

            in_cluster = self.in_cluster
            if in_cluster is None:
                in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
            try:
                if in_cluster:
                    config.load_incluster_config()
                    api = client.ApiClient()
                else:
                    api = config.new_client_from_config(config_file=self.kubeconfig,
                                                        context=self.kube_context)
                self._dynamic = dynamic.DynamicClient(api)  # reads the API server's discovery
            except Exception as e:
                where = "in-cluster config" if in_cluster else f"kubeconfig {self.kubeconfig or '(default)'}"
                raise DeploymentError(f"cannot reach the Kubernetes API ({where}): {e}") from e
        return self._dynamic

    def _api(self, api_version: str, kind: str) -> Any:
        return self._client().resources.get(api_version=api_version, kind=kind)

    def _get(self, key: ObjectKey) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        kind, namespace, name = key
        try:
            obj = self._client().get(self._api(_API_VERSION[kind], kind), name=name, namespace=namespace)
        except NotFoundError:
            return None
        except DeploymentError:
            raise
        except Exception as e:  # ApiException, connection errors
            raise DeploymentError(f"could not read {kind} {namespace}/{name}: {e}") from e
        return obj.to_dict()

    def _live(self, environment: str) -> dict[ObjectKey, dict[str, Any]]:
        """This agent's objects in ``environment`` (by label), keyed like ``plan_rollout`` wants."""
        namespace = self.namespace_of(environment)
        selector = label_selector({MANAGED_BY: FIELD_MANAGER, **selector_labels(self.agent, environment)})
        live: dict[ObjectKey, dict[str, Any]] = {}
        try:
            for api_version, kind in MANAGED_KINDS:
                listed = self._client().get(self._api(api_version, kind), namespace=namespace,
                                            label_selector=selector).to_dict()
                for item in listed.get("items") or []:
                    item = {"apiVersion": api_version, "kind": kind, **item}
                    live[object_key(item, kind)] = item
        except DeploymentError:
            raise
        except Exception as e:  # ApiException, connection errors
            raise DeploymentError(f"{environment}: could not read the cluster: {e}") from e
        return live

    def _previous_target(self, environment: str, current: Mapping[ObjectKey, Mapping]) -> list[dict] | None:
        """The manifests of what ``current`` serves (stable and canary), to roll back to."""
        stable = release_of(current.get(self._deployment_key(environment, "stable")))
        if stable is None:
            return None
        canary_obj = current.get(self._deployment_key(environment, "canary")) or {}
        share = ((canary_obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CANARY_SHARE)
        return self.target(environment, stable, release_of(canary_obj),
                           (canary_obj.get("spec") or {}).get("replicas") or 1,
                           float(share) if share else None)

    def _check_admin_secret(self, environment: str) -> None:
        """DeploymentError unless the admin token Secret exists with a non-empty token: pods
        without one would serve an unauthenticated /admin/* (or, with a server that refuses to
        start without a token, never become ready)."""
        from kubernetes.dynamic.exceptions import NotFoundError

        namespace, name = self.namespace_of(environment), self.admin_token_secret
        where = f"Secret {namespace}/{name}"
        try:
            secret = self._client().get(self._api("v1", "Secret"), name=name, namespace=namespace).to_dict()
        except NotFoundError:
            raise DeploymentError(
                f"{environment}: {where} does not exist: create it with a non-empty key "
                f"{ADMIN_TOKEN_KEY!r} before deploying (deploy/k8s/README.md)"
            ) from None
        except DeploymentError:
            raise
        except Exception as e:  # ApiException (403: the Role predates this check), connection errors
            raise DeploymentError(
                f"{environment}: could not read {where} to check the admin token: {e} "
                "(deploy/k8s/rbac.yaml grants get on it)"
            ) from e
        encoded = (secret.get("data") or {}).get(ADMIN_TOKEN_KEY) or ""
        try:
            token = base64.b64decode(encoded).decode().strip()
        except (ValueError, UnicodeDecodeError):
            token = ""
        if not token:
            raise DeploymentError(
                f"{environment}: {where} has no non-empty key {ADMIN_TOKEN_KEY!r}: the serving "
                "pods' /admin/* needs a token; refusing to deploy (deploy/k8s/README.md)"
            )

    def _rollout(self, environment: str, current: dict[ObjectKey, dict], target: list[dict]) -> None:
        """Apply ``target``; if a Deployment does not become ready, re-apply the previous state.
        Nothing is applied unless the admin token Secret has a token."""
        self._check_admin_secret(environment)
        previous = self._previous_target(environment, current)
        try:
            self._execute(environment, plan_rollout(current, target))
        except DeploymentError as e:
            if previous is None or previous == target:
                raise
            version = release_of(next(m for m in previous if m["kind"] == "Deployment"))
            logger.warning("%s: %s; rolling back to version %s", environment, e, version.version)
            try:
                self._execute(environment, plan_rollout(self._live(environment), previous))
            except DeploymentError as again:
                raise DeploymentError(f"{e}; the rollback failed too: {again}") from e
            raise DeploymentError(f"{e}; rolled back: version {version.version} serves") from e

    def _execute(self, environment: str, plan: Sequence[Action]) -> None:
        dyn = self._client()
        for action in plan:
            logger.info("%s: %s", environment, action)
            kind, namespace, name = action.key
            api_version = _API_VERSION[kind]
            try:
                if action.op == "apply":
                    dyn.server_side_apply(self._api(api_version, kind), body=action.manifest,
                                          namespace=namespace, field_manager=FIELD_MANAGER,
                                          force_conflicts=True)
                elif action.op == "delete":
                    self._delete(api_version, kind, namespace, name)
                else:
                    self._wait_ready(namespace, name)
            except DeploymentError:
                raise
            except Exception as e:  # ApiException, connection errors
                raise DeploymentError(f"{environment}: {action} failed: {e}") from e

    def _delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            self._client().delete(self._api(api_version, kind), name=name, namespace=namespace,
                                  body={"propagationPolicy": "Background"})
        except NotFoundError:
            pass

    def _wait_ready(self, namespace: str, name: str) -> None:
        deadline = time.monotonic() + self.rollout_timeout_s
        while True:
            live = self._get(("Deployment", namespace, name))
            if live is None:
                raise DeploymentError(f"Deployment {namespace}/{name} disappeared during the rollout")
            status = deployment_status(live)
            if status.done:
                return
            if status.failed or time.monotonic() > deadline:
                raise DeploymentError(
                    f"{status.message}" + ("" if status.failed else
                                           f" after {self.rollout_timeout_s:.0f}s")
                    + "".join(f"\n  {p}" for p in self._pod_problems(namespace, live))
                )
            time.sleep(self.poll_interval_s)

    def _pod_problems(self, namespace: str, deployment: Mapping[str, Any]) -> list[str]:
        labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        try:
            pods = self._client().get(self._api("v1", "Pod"), namespace=namespace,
                                      label_selector=label_selector(labels)).to_dict()
        except Exception:  # only a better message is at stake
            return []
        return pod_problems(pods.get("items") or [])

    def _prometheus(self, query: str) -> dict[str, Any]:
        url = f"{self.prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise ValueError(f"query failed: {body.get('error', body)}")
        return body


# --------------------------------------------------------------------------------------------
# The committed manifests: deploy/k8s/serving/<environment>.yaml and deploy/k8s/rbac.yaml

COMMITTED_ENVIRONMENTS = ("dev", "staging", "prod")
_HEADER = (
    "Generated by `python -m agentops_pipelines.resources.kubernetes_deployer render deploy/k8s`"
    "\nfrom resources/kubernetes_deployer.py; do not edit (tests check it is up to date)."
)


def committed_manifests(deployer: KubernetesDeployer | None = None) -> dict[str, str]:
    """{relative path: YAML}: each environment's stable bundle serving the ``champion`` alias
    (the bootstrap before the pipeline deploys a pinned version), and the RBAC."""
    deployer = deployer or KubernetesDeployer()
    files = {}
    for environment in COMMITTED_ENVIRONMENTS:
        release = Release("champion", f"models:/{deployer.agent}@champion")
        files[f"serving/{environment}.yaml"] = to_yaml(
            deployer.target(environment, release),
            f"{_HEADER}\n{deployer.agent} in {environment}: apply deploy/k8s/rbac.yaml and the "
            "secrets first (deploy/k8s/README.md).",
        )
    files["rbac.yaml"] = to_yaml(
        render_rbac(COMMITTED_ENVIRONMENTS, namespace=deployer.namespace,
                    namespace_prefix=deployer.namespace_prefix,
                    admin_token_secret=deployer.admin_token_secret),
        f"{_HEADER}\nNamespaces and the rights the Dagster run pods need to deploy (apply once).",
    )
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentops_pipelines.resources.kubernetes_deployer")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="write the committed manifests")
    render.add_argument("out", type=Path, help="e.g. deploy/k8s")
    render.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in committed_manifests().items():
        path = args.out / relative
        if path.exists() and path.read_text() == text:
            continue
        stale.append(str(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "differ" if args.check else "written"
    print(f"{len(stale)} file(s) {verb}" + "".join(f"\n  {p}" for p in stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
