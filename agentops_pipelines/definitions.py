"""The code location: every agent's lifecycle, with resources for the current environment."""

import dagster as dg

from agentops_pipelines.agents import AGENTS
from agentops_pipelines.lifecycle import build_lifecycle
from agentops_pipelines.resources.deployers import LocalProcessDeployer
from agentops_pipelines.resources.feast import FeastResource
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.resources.settings import Settings, load_settings


def build_resources(settings: Settings) -> dict:
    return {
        "lake": LakeResource(root=str(settings.lake_dir)),
        "feast": FeastResource(repo_dir=str(settings.feast_dir), registry=settings.feast_registry,
                               online_store=settings.feast_online_store),
        "mlflow_store": MlflowResource(tracking_uri=settings.mlflow_tracking_uri,
                                       artifact_root=settings.mlflow_artifact_root,
                                       ui_url=settings.mlflow_ui_url),
        "deployer": LocalProcessDeployer(state_dir=str(settings.serving_dir)),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    lifecycles = [build_lifecycle(agent) for agent in AGENTS]
    return dg.Definitions(
        assets=[a for lc in lifecycles for a in lc.assets],
        asset_checks=[c for lc in lifecycles for c in lc.checks],
        jobs=[j for lc in lifecycles for j in lc.jobs.values()],
        sensors=[s for lc in lifecycles for s in lc.sensors],
        schedules=[s for lc in lifecycles for s in lc.schedules],
        resources=build_resources(settings or load_settings()),
    )


defs = build_definitions()
