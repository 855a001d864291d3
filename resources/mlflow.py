"""A small MLflow resource around ``mlflow.MlflowClient`` (dagster-mlflow is a legacy beta)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import dagster as dg


class MlflowResource(dg.ConfigurableResource):
    """Tracking and registry in one store: SQLite under the state folder, or Postgres/a server."""

    tracking_uri: str
    artifact_root: str = ""  # where new experiments keep artifacts (empty: the server's default)
    ui_url: str = ""  # the MLflow UI, for links in asset metadata

    def configure(self):
        """Point the mlflow module at this store and return a client."""
        import mlflow

        if self.tracking_uri.startswith(("http://", "https://")):
            # A sensor tick must not hang on a server that is down: fail within seconds.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow.MlflowClient(self.tracking_uri, self.tracking_uri)

    def experiment_id(self, name: str) -> str:
        import mlflow

        client = self.configure()
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
        if location and not re.match(r"^[A-Za-z][\w+.-]*:", location):  # a plain path, not a URI
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created concurrently by another run
            return client.get_experiment_by_name(name).experiment_id

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}"
