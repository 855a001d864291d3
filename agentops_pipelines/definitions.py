"""The code location: every agent's lifecycle, with resources for the current environment.

Agents share the resources (one deployer, one MLflow, one audit log) and nothing else: each
lifecycle names its agent in every call it makes, and ``check_agents`` refuses at load two agents
whose names would meet anywhere (MLflow's registered model, the asset key prefix, the serving
state folder, Kubernetes object names) or a port given to two serving processes.
"""

import warnings
from collections.abc import Mapping, Sequence

import dagster as dg

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.agents import AGENTS
from agentops_pipelines.lifecycle import build_lifecycle
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.deployers import LocalProcessDeployer
from agentops_pipelines.resources.feast import FeastResource
from agentops_pipelines.resources.governance import GovernanceResource
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER, LakeIOManager
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.llm import LLMEndpointResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.resources.prometheus import PrometheusResource
from agentops_pipelines.resources.sandbox import ModelSandbox
from agentops_pipelines.resources.settings import Settings, load_settings
from agentops_pipelines.vocabulary import EnvVar

# Partitioned asset checks and backfill policies are marked preview/beta in 1.13; we rely on both
# deliberately (tests cover them), so their warnings would only be noise at every load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


class AgentsError(ValueError):
    """Agents that cannot run side by side in one code location."""


def check_agents(agents: Sequence[Agent]) -> None:
    """AgentsError naming the agents whose names would collide once made into a serving folder
    or a Kubernetes name (``a_b`` and ``a-b`` are both ``a-b``), or are not usable there."""
    from agentops_pipelines.k8s.naming import object_name

    if not agents:
        raise AgentsError("no agents: add one to agentops_pipelines/agents.py")
    seen: dict[str, str] = {}
    for agent in agents:
        name = getattr(agent, "name", "")
        try:
            key = object_name(name, "staging", "canary")  # the longest name it gets
        except ValueError as exc:
            raise AgentsError(f"agent {name!r} ({type(agent).__name__}): {exc}") from None
        if key in seen:
            other = seen[key]
            what = "twice" if other == name else f"and {other!r} become the same Kubernetes name"
            raise AgentsError(f"agent {name!r} {what}: rename one (names are MLflow models, asset "
                              "prefixes, serving folders and Kubernetes objects)")
        seen[key] = name


def serving_ports(settings: Settings, agents: Sequence[str]) -> dict[str, int]:
    """``AGENTOPS_SERVING_PORTS`` as ``{"<agent>/<environment>": port}``. A port named by
    environment alone (``dev=8081``) is the agent's when there is exactly one; with several it
    would be everyone's, so it is refused, and so is one port given twice."""
    ports: dict[str, int] = {}
    for key, port in settings.serving_ports.items():
        agent, _, environment = key.rpartition("/")
        if not agent:
            if len(agents) != 1:
                raise AgentsError(f"AGENTOPS_SERVING_PORTS names environment {key!r} without an agent, but "
                                  f"this code location serves {len(agents)} agents ({', '.join(agents)}): "
                                  f"write <agent>/{key}={port}")
            agent = agents[0]
        elif agent not in agents:
            raise AgentsError(f"AGENTOPS_SERVING_PORTS names {key!r}: no agent {agent!r} "
                              f"(agents: {', '.join(agents)})")
        ports[f"{agent}/{environment}"] = port
    owners: dict[int, str] = {}
    for key, port in ports.items():
        if port in owners:
            raise AgentsError(f"AGENTOPS_SERVING_PORTS gives port {port} to both {owners[port]} and {key}")
        owners[port] = key
    return ports


def build_resources(settings: Settings, agents: Sequence[Agent] | None = None) -> dict:
    """Resources for ``settings``. A Feast URL carrying a password is passed as ``dg.EnvVar``
    (resolved when a run starts; the UI shows the variable's name, not the password). MLflow's
    URI stays a plain string: the serving process inherits it as MLFLOW_TRACKING_URI anyway and
    ``agentops status`` calls the resource outside a run, where an EnvVar cannot be read. Keep
    passwords out of URLs altogether with libpq's PGPASSFILE (README, 'Production mode')."""

    from agentops_pipelines.agent.llm.endpoint import serving_connect_ports, serving_secrets

    agents = AGENTS if agents is None else agents

    def from_env(name: str):
        variable = settings.secret_env.get(name)  # set only when the value holds a password
        return dg.EnvVar(variable) if variable else getattr(settings, name)

    lake = LakeResource(root=str(settings.lake_dir))
    return {
        "lake": lake,
        LAKE_IO_MANAGER: LakeIOManager(root=lake.root),  # assets' results, handed downstream as inputs
        "feast": FeastResource(repo_dir=str(settings.feast_dir), registry=from_env("feast_registry"),
                               online_store=from_env("feast_online_store"), project=settings.feast_project),
        "mlflow_store": MlflowResource(tracking_uri=settings.mlflow_tracking_uri,
                                       artifact_root=settings.mlflow_artifact_root,
                                       ui_url=settings.mlflow_ui_url),
        "deployer": build_deployer(settings, [a.name for a in agents], serving_secrets(agents),
                                   serving_connect_ports(agents)),
        "audit": AuditLog(url=from_env("audit_db_url") if settings.audit_db_url else f"sqlite:///{settings.home / 'audit.db'}",
                          key_file=str(settings.audit_key_file), anchor_path=str(settings.audit_anchor),
                          create_key=not settings.production),
        "prometheus": PrometheusResource(url=settings.prometheus_url),
        "governance": GovernanceResource(approvers_file=str(settings.approvers_file)),
        "llm": LLMEndpointResource(base_url=settings.llm_base_url, model=settings.llm_model,
                                   response_format=settings.llm_response_format),
        "sandbox": ModelSandbox(require_landlock=settings.sandbox_require_landlock,
                                read=[settings.minilm_dir] if settings.minilm_dir else [],
                                hidden=[str(settings.home), str(settings.audit_key_file), str(settings.audit_anchor)]),
    }


def build_deployer(settings: Settings, agents: Sequence[str] | None = None,
                   agent_secret_env: Mapping[str, Sequence[str]] | None = None,
                   agent_connect_ports: Mapping[str, Sequence[int]] | None = None):
    """The local serving processes (default), or Kubernetes with ``AGENTOPS_DEPLOYER=kubernetes``.
    One deployer serves every agent, each in its own process (pods) per environment; each call
    names its agent, so the resource has no agent of its own. ``agent_secret_env``: the variables
    (names) only one agent's serving processes get (an LLM agent's key)."""
    agents = [a.name for a in AGENTS] if agents is None else list(agents)
    ports = serving_ports(settings, agents)
    if settings.deployer == "kubernetes":
        from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer

        options: dict = {"prometheus_url": settings.prometheus_url or None,
                         "agent_secret_env": {agent: list(names) for agent, names in (agent_secret_env or {}).items()}}
        for field, value in (("image", settings.serving_image), ("namespace", settings.k8s_namespace),
                             ("mlflow_tracking_uri", settings.serving_mlflow_uri),
                             ("inference_log_claim", settings.k8s_inference_log_claim),
                             ("feast_project", settings.feast_project)):
            if value:
                options[field] = value
        return KubernetesDeployer(**options)
    return LocalProcessDeployer(
        state_dir=str(settings.serving_dir),
        inference_log_dir=str(settings.inference_log_dir),
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        host=settings.serving_host, ports=ports,
        admin_token=dg.EnvVar(EnvVar.SERVING_ADMIN_TOKEN) if settings.serving_admin_token else None,
        agent_secret_env={agent: list(names) for agent, names in (agent_secret_env or {}).items()},
        agent_connect_ports={agent: list(ports) for agent, ports in (agent_connect_ports or {}).items()},
        require_landlock=settings.sandbox_require_landlock,
    )


def code_location_agents(settings: Settings) -> list[Agent]:
    """Every declared agent, and the LLM agent when settings name an endpoint."""
    from agentops_pipelines.agent.llm.agent import (
        configured_llm_agents,  # none unless AGENTOPS_LLM_BASE_URL
    )

    return [*AGENTS, *configured_llm_agents(settings)]


def build_definitions(settings: Settings | None = None, agents: Sequence[Agent] | None = None) -> dg.Definitions:
    """Every agent's lifecycle (default: ``AGENTS``) with the resources for ``settings``."""
    settings = settings or load_settings()
    agents = list(code_location_agents(settings) if agents is None else agents)
    check_agents(agents)
    lifecycles = [build_lifecycle(agent, inference_log_root=str(settings.inference_log_dir)) for agent in agents]
    return dg.Definitions(
        assets=[a for lc in lifecycles for a in lc.assets],
        asset_checks=[c for lc in lifecycles for c in lc.checks],
        jobs=[j for lc in lifecycles for j in lc.jobs.values()],
        sensors=[s for lc in lifecycles for s in lc.sensors],
        schedules=[s for lc in lifecycles for s in lc.schedules],
        resources=build_resources(settings, agents),
    )


defs = build_definitions()
