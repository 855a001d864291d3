"""Kubernetes names, labels and annotations of the objects the deployer manages (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from agentops_pipelines.vocabulary import EnvVar

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
ADMIN_TOKEN_ENV = EnvVar.SERVING_ADMIN_TOKEN.value  # read by the serving process (serving/server.py)
ADMIN_TOKEN_KEY = "token"  # the key in the admin token Secret
# The admin token Secret of each agent, in each serving namespace: "{agent}" becomes the agent's
# DNS name (support-agent-serving-admin), so no agent's pods or deployer read another's token.
ADMIN_TOKEN_SECRET = "{agent}-serving-admin"
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


def admin_token_secret_name(template: str, agent: str) -> str:
    """``template`` with ``{agent}`` replaced by the agent's DNS name; a name without the
    placeholder is one Secret shared by every agent in the namespace (a deliberate choice)."""
    name = template.replace("{agent}", dns_name(agent))
    if name.strip() and (len(name) > 253 or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name)):
        raise ValueError(f"admin token Secret name {name!r} (from {template!r}) is not a valid Secret name")
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


