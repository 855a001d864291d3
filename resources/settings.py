"""The one place that reads the environment.

Every path and service address the code location uses is derived here, so the embedded default
(everything under one state folder, ``AGENTOPS_HOME``) and production mode (Postgres, Redis,
Kubernetes) differ by environment variables alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def agentops_home() -> Path:
    """The state folder: ``$AGENTOPS_HOME``, or ``.agentops/`` at the project root."""
    return Path(os.environ.get("AGENTOPS_HOME") or PROJECT_ROOT / ".agentops").resolve()


@dataclass(frozen=True)
class Settings:
    home: Path
    mode: str  # "local" (embedded default) or "production"
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    mlflow_ui_url: str
    lake_dir: Path
    feast_dir: Path
    feast_online_store: str  # "sqlite" or a Redis connection string
    feast_registry: str  # a file path, or a SQLAlchemy URL for a SQL registry
    serving_dir: Path

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME") or self.home / "dagster")


def load_settings() -> Settings:
    """Settings for the current environment. Cheap: no I/O beyond reading variables."""
    home = agentops_home()
    mode = os.environ.get("AGENTOPS_MODE", "local")
    if mode not in ("local", "production"):
        raise ValueError(f"AGENTOPS_MODE must be 'local' or 'production', not {mode!r}")
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    artifacts = os.environ.get("AGENTOPS_MLFLOW_ARTIFACT_ROOT") or str(home / "mlflow" / "artifacts")
    return Settings(
        home=home,
        mode=mode,
        mlflow_tracking_uri=tracking,
        mlflow_artifact_root=artifacts,
        mlflow_ui_url=os.environ.get("AGENTOPS_MLFLOW_UI_URL", "http://127.0.0.1:5000"),
        lake_dir=Path(os.environ.get("AGENTOPS_LAKE_DIR") or home / "lake"),
        feast_dir=Path(os.environ.get("AGENTOPS_FEAST_DIR") or home / "feast"),
        feast_online_store=os.environ.get("AGENTOPS_FEAST_REDIS") or "sqlite",
        feast_registry=os.environ.get("AGENTOPS_FEAST_REGISTRY")
        or str(home / "feast" / "registry.db"),
        serving_dir=home / "serving",
    )
