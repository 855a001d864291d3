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
import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from agentops_pipelines.k8s.naming import (
    _API_VERSION,
    ADMIN_TOKEN_KEY,
    ANNOTATION_CANARY_SHARE,
    FIELD_MANAGER,
    MANAGED_BY,
    MANAGED_KINDS,
    ROLES,
    Role,
    admin_token_secret_name,
    label_selector,
    namespace_for,
    object_name,
    selector_labels,
)
from agentops_pipelines.k8s.plan import (
    Action,
    ObjectKey,
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
    render_bootstrap,
    render_environment,
    render_rbac,
    replica_share,
    to_yaml,
)
from agentops_pipelines.k8s.stats import (
    role_stats,
    stats_queries,
)
from agentops_pipelines.resources.deployers import Deployer, Deployment, DeploymentError, pinned
from agentops_pipelines.vocabulary import ENVIRONMENTS, pinned_version

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The resource


_SPEC = ServingSpec()  # the pods' defaults, defined once (k8s/render.py)


class KubernetesDeployer(Deployer):
    """Serve an agent's versions on Kubernetes, one namespace per environment by default.

    String fields accept ``dg.EnvVar(...)``. Rendering and planning are pure functions of this
    module; this class reads the live objects, applies plans and waits. One resource serves every
    agent: ``deploy`` and ``deploy_canary`` take the agent from ``models:/<agent>/...``, the other
    calls name it (``agent=``); each agent's objects have their own names, labels, selectors and
    admin token Secret, so no plan for one agent can apply to or delete another's. The
    ``Deployment`` it returns has the Service's in-cluster URL and ``pid=0`` (pods, not a local process). The cluster is reached
    in-cluster (the run pod's service account, see deploy/k8s/rbac.yaml) or through
    ``kubeconfig`` / ``kube_context``; ``in_cluster=None`` picks in-cluster when
    ``KUBERNETES_SERVICE_HOST`` is set.
    """

    # The agent of calls that name none, for a deployer of one agent (a test, the committed
    # bootstrap manifests). The code location leaves it empty: every call names its agent.
    agent: str = ""
    namespace: str | None = None  # one namespace for all environments, else namespace_prefix+env
    namespace_prefix: str = "agentops-"
    image: str = _SPEC.image
    image_pull_policy: str = _SPEC.image_pull_policy
    mlflow_tracking_uri: str = _SPEC.mlflow_tracking_uri
    mlflow_secret: str = _SPEC.mlflow_secret
    # The Secret holding each agent's admin token; ``{agent}`` becomes the agent's DNS name, so
    # each (agent, namespace = environment) has its own token. Required: rendering fails when empty.
    admin_token_secret: str = _SPEC.admin_token_secret
    port: int = _SPEC.port
    service_port: int = _SPEC.service_port
    replicas: dict[str, int] = {"dev": 1, "staging": 2, "prod": 3}
    max_replicas: dict[str, int] = {"dev": 2, "staging": 4, "prod": 10}
    autoscaling: bool = _SPEC.autoscaling
    target_cpu_utilization: int = _SPEC.target_cpu_utilization
    cpu_request: str = _SPEC.cpu_request
    cpu_limit: str = _SPEC.cpu_limit
    memory_request: str = _SPEC.memory_request
    memory_limit: str = _SPEC.memory_limit
    startup_timeout_s: int = _SPEC.startup_timeout_s
    in_cluster: bool | None = None  # None: in-cluster when KUBERNETES_SERVICE_HOST is set
    kubeconfig: str | None = None
    kube_context: str | None = None
    cluster_domain: str = "cluster.local"
    rollout_timeout_s: float = 600.0
    poll_interval_s: float = 2.0
    prometheus_url: str | None = None
    inference_log_claim: str = _SPEC.inference_log_claim  # see ServingSpec: "" logs nothing
    inference_log_mount: str = _SPEC.inference_log_mount
    feast_project: str = _SPEC.feast_project  # see ServingSpec: pods of agent A read project "<this>_A"
    # agent -> variables only its pods get, from the Secret ``agent_secret`` (see ServingSpec):
    # the key of the LLM endpoint an agent declares (definitions.py fills it from the agents)
    agent_secret_env: dict[str, list[str]] = {}
    agent_secret: str = _SPEC.agent_secret
    # each environment's system-of-record Secret, key "url" (see ServingSpec): pods only, never
    # read by this deployer; without it the environment's pods do not act
    sor_secret: str = _SPEC.sor_secret

    _dynamic: Any = PrivateAttr(default=None)

    # -- pure helpers

    def _agent(self, agent: str | None) -> str:
        """The agent a call acts on: the one it names, else this resource's own (if any)."""
        name = agent or self.agent
        if not name:
            raise DeploymentError("name the agent (agent=...): this deployer serves every agent "
                                  "of the code location")
        if agent and self.agent and agent != self.agent:
            raise DeploymentError(f"this deployer serves {self.agent!r} only, not {agent!r}")
        return name

    def spec_for(self, environment: str) -> ServingSpec:
        minimum = self.replicas.get(environment, 2)
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ServingSpec)
                  if f.name not in ("replicas", "max_replicas", "run_as_user", "agent_secret_env")}  # same name, same meaning
        secrets = tuple((agent, name) for agent, names in sorted(self.agent_secret_env.items()) for name in names)
        return ServingSpec(**shared, replicas=minimum, agent_secret_env=secrets,
                           max_replicas=max(minimum, self.max_replicas.get(environment, 2 * minimum)))

    def admin_secret_of(self, agent: str | None = None) -> str:
        """The name of ``agent``'s admin token Secret (in each serving namespace)."""
        return admin_token_secret_name(self.admin_token_secret, self._agent(agent))

    def namespace_of(self, environment: str) -> str:
        return namespace_for(environment, self.namespace, self.namespace_prefix)

    def url(self, environment: str, agent: str | None = None) -> str:
        name = object_name(self._agent(agent), environment)
        host = f"{name}.{self.namespace_of(environment)}.svc.{self.cluster_domain}"
        return f"http://{host}" + ("" if self.service_port == 80 else f":{self.service_port}")

    def target(
        self,
        environment: str,
        stable: Release,
        canary: Release | None = None,
        canary_replicas: int = 1,
        canary_share: float | None = None,
        agent: str | None = None,
    ) -> list[dict[str, Any]]:
        agent = self._agent(agent or self._agent_of_uri(stable.model_uri))
        return render_environment(
            agent, environment, stable, canary, spec=self.spec_for(environment),
            namespace=self.namespace_of(environment), canary_replicas=canary_replicas,
            canary_share=canary_share,
        )

    @staticmethod
    def _agent_of_uri(model_uri: str) -> str | None:
        """The registered model's name in ``models:/<name>/...`` (None for other URIs)."""
        if model_uri.startswith("models:/"):
            return re.split(r"[/@]", model_uri.removeprefix("models:/"), maxsplit=1)[0]
        return None

    def _check_model_uri(self, model_uri: str, version: str) -> str:
        """The agent ``model_uri`` is a version of; DeploymentError if it does not pin ``version``
        (``models:/<agent>/<version>``), if this resource serves another agent, or if the URI
        names no registered model and no agent is configured."""
        pinned(model_uri, version)
        name = self._agent_of_uri(model_uri)
        if name and self.agent and name != self.agent:
            raise DeploymentError(
                f"{model_uri} is a version of {name!r}, but this deployer serves {self.agent!r}"
            )
        return self._agent(name)

    # -- the Deployer interface

    def status(self, environment: str, agent: str | None = None) -> Deployment | None:
        """The stable version (and the canary, if any) when a stable pod is available."""
        agent = self._agent(agent)
        return self._status(environment, agent, {role: self._get(self._deployment_key(environment, role, agent))
                                                 for role in ROLES})

    def deploy(self, environment: str, model_uri: str, version: str) -> Deployment:
        """Roll the stable Deployment to ``version`` (ending any canary) and wait until it is
        available; if it does not become available, re-apply what was there before."""
        agent = self._check_model_uri(model_uri, version)
        current = self._live(environment, agent)
        self._rollout(environment, agent, current,
                      self.target(environment, Release(str(version), model_uri), agent=agent))
        return self._require_status(environment, agent)

    def stop(self, environment: str, agent: str | None = None) -> None:
        agent = self._agent(agent)
        self._execute(environment, plan_rollout(self._live(environment, agent), []))

    def deploy_canary(
        self, environment: str, model_uri: str, version: str, share: float
    ) -> Deployment:
        """Run ``version`` next to the stable version on enough pods for about ``share``
        (0 < share < 1) of the requests: the Service splits by ready pods (module docstring).
        Again with the same version, only the canary's replica count changes. A canary that
        does not become ready is removed (or the previous canary restored)."""
        agent = self._check_model_uri(model_uri, version)
        current = self._live(environment, agent)
        stable_obj = current.get(self._deployment_key(environment, "stable", agent))
        stable = release_of(stable_obj)
        if stable_obj is None or stable is None:
            raise DeploymentError(f"{environment}: no stable version to run a canary next to; "
                                  "deploy one first")
        try:  # a Deployment from an old bootstrap serves an alias: never render it again
            pinned_version(stable.model_uri, stable.version)
        except ValueError as e:
            raise DeploymentError(f"{environment}: the stable Deployment does not serve a pinned "
                                  f"version ({e}); deploy one first") from None
        stable_count = (stable_obj.get("spec") or {}).get("replicas") or self.replicas.get(environment, 1)
        count = canary_replicas(share, stable_count)
        canary = Release(str(version), model_uri)
        self._rollout(environment, agent, current,
                      self.target(environment, stable, canary, count, share, agent=agent))
        logger.info("%s: %s canary %s on %d pod(s) next to %d stable (about %.0f%% of requests)",
                    environment, agent, version, count, stable_count, 100 * replica_share(count, stable_count))
        return self._require_status(environment, agent)

    def promote_canary(self, environment: str, agent: str | None = None) -> Deployment:
        """Roll the stable Deployment to the canary's version, then remove the canary."""
        agent = self._agent(agent)
        current = self._live(environment, agent)
        canary = release_of(current.get(self._deployment_key(environment, "canary", agent)))
        if canary is None:
            raise DeploymentError(f"{environment}: no canary of {agent} to promote")
        self._rollout(environment, agent, current, self.target(environment, canary, agent=agent))
        return self._require_status(environment, agent)

    def abort_canary(self, environment: str, agent: str | None = None) -> Deployment:
        """Remove the canary; the stable version keeps serving. A no-op without a canary."""
        agent = self._agent(agent)
        current = self._live(environment, agent)
        stable = release_of(current.get(self._deployment_key(environment, "stable", agent)))
        if stable is None:  # remove a stray canary, then say that nothing serves
            key = self._deployment_key(environment, "canary", agent)
            self._execute(environment, [Action("delete", *key)] if key in current else [])
            raise DeploymentError(f"{environment}: nothing is serving ({agent}); deploy a stable version first")
        self._execute(environment, plan_rollout(current, self.target(environment, stable, agent=agent)))
        return self._require_status(environment, agent)

    def stats(self, environment: str, window_s: float = 60.0, agent: str | None = None) -> dict[str, Any]:
        """Per role (``stable``, ``canary``: None when absent): version, model_uri, replicas,
        ready_replicas and, from Prometheus (``prometheus_url``), requests, errors (5xx),
        client_errors (4xx), error_rate, p50_ms, p99_ms and escalations over the last
        ``window_s`` seconds. Without Prometheus those are None and ``note`` says why: the
        pods' own ``/admin/stats`` sees one pod each, not the environment."""
        agent = self._agent(agent)
        result: dict[str, Any] = {"environment": environment, "agent": agent,
                                  "window_s": window_s, "covered_s": window_s, "source": "kubernetes"}
        roles: dict[str, dict[str, Any]] = {}
        annotations: dict[str, str] = {}
        for role in ROLES:
            obj = self._get(self._deployment_key(environment, role, agent))
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
                       for name, query in stats_queries(agent, environment, window_s).items()}
        except (OSError, ValueError) as e:
            result["note"] = f"Prometheus at {self.prometheus_url} did not answer: {e}"
            return result
        result["source"] = "kubernetes+prometheus"
        for r in roles.values():
            r.update(role_stats(answers, r["version"]))
        return result

    # -- execution

    def _deployment_key(self, environment: str, role: Role, agent: str) -> ObjectKey:
        return ("Deployment", self.namespace_of(environment), object_name(agent, environment, role))

    def _status(self, environment: str, agent: str,
                live: Mapping[str, Mapping[str, Any] | None]) -> Deployment | None:
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
            environment=environment, url=self.url(environment, agent), model_uri=stable.model_uri,
            version=stable.version, pid=0, started_at=str(started),
            canary_version=canary.version if canary else None,
            canary_model_uri=canary.model_uri if canary else None,
            canary_share=replica_share(ready.get("canary", 0), ready["stable"]) if canary else 0.0,
            agent=agent,
        )

    def _require_status(self, environment: str, agent: str) -> Deployment:
        deployment = self.status(environment, agent)
        if deployment is None:
            raise DeploymentError(f"{environment}: {agent} rolled out, but no stable pod is available")
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

    def _live(self, environment: str, agent: str) -> dict[ObjectKey, dict[str, Any]]:
        """``agent``'s objects in ``environment`` (by label), keyed like ``plan_rollout`` wants:
        a plan over them can never apply to or delete another agent's objects."""
        namespace = self.namespace_of(environment)
        selector = label_selector({MANAGED_BY: FIELD_MANAGER, **selector_labels(agent, environment)})
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

    def _previous_target(self, environment: str, agent: str,
                         current: Mapping[ObjectKey, Mapping]) -> list[dict] | None:
        """The manifests of what ``current`` serves (stable and canary), to roll back to."""
        stable = release_of(current.get(self._deployment_key(environment, "stable", agent)))
        if stable is None:
            return None
        canary_obj = current.get(self._deployment_key(environment, "canary", agent)) or {}
        share = ((canary_obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CANARY_SHARE)
        return self.target(environment, stable, release_of(canary_obj),
                           (canary_obj.get("spec") or {}).get("replicas") or 1,
                           float(share) if share else None, agent=agent)

    def _check_admin_secret(self, environment: str, agent: str) -> None:
        """DeploymentError unless the admin token Secret exists with a non-empty token: pods
        without one would serve an unauthenticated /admin/* (or, with a server that refuses to
        start without a token, never become ready)."""
        from kubernetes.dynamic.exceptions import NotFoundError

        namespace, name = self.namespace_of(environment), self.admin_secret_of(agent)
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

    def _rollout(self, environment: str, agent: str, current: dict[ObjectKey, dict], target: list[dict]) -> None:
        """Apply ``target``; if a Deployment does not become ready, re-apply the previous state.
        Nothing is applied unless the agent's admin token Secret has a token."""
        self._check_admin_secret(environment, agent)
        previous = self._previous_target(environment, agent, current)
        try:
            self._execute(environment, plan_rollout(current, target))
        except DeploymentError as e:
            if previous is None or previous == target:
                raise
            version = release_of(next(m for m in previous if m["kind"] == "Deployment"))
            logger.warning("%s: %s; rolling back to version %s", environment, e, version.version)
            try:
                self._execute(environment, plan_rollout(self._live(environment, agent), previous))
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
        from agentops_pipelines.prometheus_api import PrometheusAPI

        return PrometheusAPI(self.prometheus_url, timeout_seconds=10).query(query)


# --------------------------------------------------------------------------------------------
# The committed manifests: deploy/k8s/serving/<environment>.yaml and deploy/k8s/rbac.yaml

COMMITTED_ENVIRONMENTS = ENVIRONMENTS
_HEADER = (
    "Generated by `python -m agentops_pipelines.resources.kubernetes_deployer render deploy/k8s`"
    "\nfrom resources/kubernetes_deployer.py; do not edit (tests check it is up to date)."
)


def committed_manifests(deployer: KubernetesDeployer | None = None,
                        agents: Sequence[str] | None = None) -> dict[str, str]:
    """{relative path: YAML}: per environment, each agent's bootstrap (ServiceAccount, Service,
    PodDisruptionBudget, and no Deployment: no pod serves until the pipeline's deployer renders
    a pinned version, ``render_bootstrap``), and the RBAC (which reads each agent's admin token
    Secret). ``agents``: the code location's."""
    deployer = deployer or KubernetesDeployer()
    if agents is None:
        agents = [deployer.agent] if deployer.agent else _code_location_agents()
    files = {}
    for environment in COMMITTED_ENVIRONMENTS:
        manifests = []
        for agent in agents:
            manifests += render_bootstrap(agent, environment, spec=deployer.spec_for(environment),
                                          namespace=deployer.namespace_of(environment))
        secrets = ", ".join(deployer.admin_secret_of(a) for a in agents)
        files[f"serving/{environment}.yaml"] = to_yaml(
            manifests,
            f"{_HEADER}\n{', '.join(agents)} in {environment}: apply deploy/k8s/rbac.yaml and the "
            f"secrets ({secrets}) first (deploy/k8s/README.md).",
        )
    files["rbac.yaml"] = to_yaml(
        render_rbac(COMMITTED_ENVIRONMENTS, namespace=deployer.namespace,
                    namespace_prefix=deployer.namespace_prefix,
                    admin_token_secret=deployer.admin_token_secret, agents=agents),
        f"{_HEADER}\nNamespaces and the rights the Dagster run pods need to deploy (apply once).",
    )
    return files


def _code_location_agents() -> list[str]:
    from agentops_pipelines.agents import AGENTS

    return [a.name for a in AGENTS]


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
