"""The code location: every agent's lifecycle, with resources for the current environment."""

import warnings

import dagster as dg

from agentops_pipelines.agents import AGENTS
from agentops_pipelines.lifecycle import build_lifecycle
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.deployers import LocalProcessDeployer
from agentops_pipelines.resources.feast import FeastResource
from agentops_pipelines.resources.governance import GovernanceResource
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.resources.prometheus import PrometheusResource
from agentops_pipelines.resources.settings import Settings, load_settings
from agentops_pipelines.vocabulary import EnvVar

# Partitioned asset checks and backfill policies are marked preview/beta in 1.13; we rely on both
# deliberately (tests cover them), so their warnings would only be noise at every load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_resources(settings: Settings) -> dict:
    """Resources for ``settings``. A Feast URL carrying a password is passed as ``dg.EnvVar``
    (resolved when a run starts; the UI shows the variable's name, not the password). MLflow's
    URI stays a plain string: the serving process inherits it as MLFLOW_TRACKING_URI anyway and
    ``agentops status`` calls the resource outside a run, where an EnvVar cannot be read. Keep
    passwords out of URLs altogether with libpq's PGPASSFILE (README, 'Production mode')."""

    def from_env(name: str):
        variable = settings.secret_env.get(name)  # set only when the value holds a password
        return dg.EnvVar(variable) if variable else getattr(settings, name)

    return {
        "lake": LakeResource(root=str(settings.lake_dir)),
        "feast": FeastResource(repo_dir=str(settings.feast_dir), registry=from_env("feast_registry"),
                               online_store=from_env("feast_online_store"), project=settings.feast_project),
        "mlflow_store": MlflowResource(tracking_uri=settings.mlflow_tracking_uri,
                                       artifact_root=settings.mlflow_artifact_root,
                                       ui_url=settings.mlflow_ui_url),
        "deployer": build_deployer(settings),
        "audit": AuditLog(url=from_env("audit_db_url") if settings.audit_db_url else f"sqlite:///{settings.home / 'audit.db'}",
                          key_file=str(settings.audit_key_file), anchor_path=str(settings.audit_anchor),
                          create_key=not settings.production),
        "prometheus": PrometheusResource(url=settings.prometheus_url),
        "governance": GovernanceResource(approvers_file=str(settings.approvers_file)),
    }


def build_deployer(settings: Settings):
    """The local serving process (default), or Kubernetes with ``AGENTOPS_DEPLOYER=kubernetes``.
    A deployer serves one agent per environment: the first of ``AGENTS``."""
    if settings.deployer == "kubernetes":
        from agentops_pipelines.resources.kubernetes_deployer import KubernetesDeployer

        options: dict = {"agent": AGENTS[0].name, "prometheus_url": settings.prometheus_url or None}
        for field, value in (("image", settings.serving_image), ("namespace", settings.k8s_namespace),
                             ("mlflow_tracking_uri", settings.serving_mlflow_uri),
                             ("inference_log_claim", settings.k8s_inference_log_claim)):
            if value:
                options[field] = value
        return KubernetesDeployer(**options)
    return LocalProcessDeployer(
        state_dir=str(settings.serving_dir), agent=AGENTS[0].name,
        inference_log_dir=str(settings.inference_log_dir),
        host=settings.serving_host, ports=dict(settings.serving_ports),
        admin_token=dg.EnvVar(EnvVar.SERVING_ADMIN_TOKEN) if settings.serving_admin_token else None,
    )


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    from agentops_pipelines.agent.llm.agent import (
        configured_llm_agents,  # none unless AGENTOPS_LLM_BASE_URL
    )

    agents = [*AGENTS, *configured_llm_agents(settings)]
    lifecycles = [build_lifecycle(agent, inference_log_root=str(settings.inference_log_dir)) for agent in agents]
    return dg.Definitions(
        assets=[a for lc in lifecycles for a in lc.assets],
        asset_checks=[c for lc in lifecycles for c in lc.checks],
        jobs=[j for lc in lifecycles for j in lc.jobs.values()],
        sensors=[s for lc in lifecycles for s in lc.sensors],
        schedules=[s for lc in lifecycles for s in lc.schedules],
        resources=build_resources(settings),
    )


defs = build_definitions()
