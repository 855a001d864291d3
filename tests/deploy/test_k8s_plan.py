"""Rollout planning and status (agentops_pipelines/k8s/plan.py), pure: initial deploy, update,
canary, promote, abort, rollback, stop, idempotent re-apply; Deployment and pod status."""

from __future__ import annotations

import copy

import pytest

from agentops_pipelines.k8s.naming import LABEL_ROLE
from agentops_pipelines.k8s.plan import (
    deployment_status,
    object_key,
    plan_rollout,
    pod_problems,
    release_of,
)
from agentops_pipelines.k8s.render import Release
from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer

from .common import V1, V2, V3


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
    manual = KubernetesDeployer(autoscaling=False)
    plan = plan_rollout(live, manual.target("prod", V1))
    assert ops(plan) == [("apply", "Deployment", stable_name()), ("wait_ready", "Deployment", stable_name()),
                         ("delete", "HorizontalPodAutoscaler", stable_name())]
    assert plan[0].manifest["spec"]["replicas"] == manual.spec_for("prod").replicas


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
