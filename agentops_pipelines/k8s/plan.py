"""Planning (pure): compare live objects with the desired ones; rollout status from live objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentops_pipelines.k8s.naming import (
    ANNOTATION_HASH,
    ANNOTATION_MODEL_URI,
    FIELD_MANAGER,
    LABEL_ROLE,
    LABEL_VERSION,
    MANAGED_BY,
    MANAGED_KINDS,
)
from agentops_pipelines.k8s.render import (
    Release,
)

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


