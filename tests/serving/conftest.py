"""Fixtures of the serving tests: one MLflow registry with two versions of a tiny router, one
deployer (real processes, ephemeral ports) and one deployment, shared by the package."""

from __future__ import annotations

import pytest

from agentops_pipelines.resources.deployers import Deployment, LocalProcessDeployer
from tests.serving.support import OTHER_AGENT, log_test_models


@pytest.fixture(scope="package")
def registry(tmp_path_factory):
    import mlflow

    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # servers inherit them
            mp.setenv(name, uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)  # another test may have left its own
        models = log_test_models(tmp)
        models["other"] = log_test_models(tmp, OTHER_AGENT)["1"]  # another agent's model
        yield models
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri("")


@pytest.fixture(scope="package")
def deployer(registry, tmp_path_factory):
    d = LocalProcessDeployer(
        state_dir=str(tmp_path_factory.mktemp("serving")),
        health_timeout_s=60,
        stop_timeout_s=10,
        inference_log_dir=str(tmp_path_factory.mktemp("inference_log")),
        trace_sample_rate=0.0,
    )
    yield d
    for environment in ("test", "second", "broken", "canary", "logged", "bake", "exporter"):
        d.stop(environment)


@pytest.fixture(scope="package")
def deployment(deployer, registry) -> Deployment:
    return deployer.deploy("test", registry["1"], "1")
