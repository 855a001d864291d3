import os
from pathlib import Path

import dagster as dg
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh AGENTOPS_HOME: everything the embedded default writes goes here."""
    h = tmp_path / "agentops"
    monkeypatch.setenv("AGENTOPS_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Each test decides with its own approvers file (empty: nobody may approve) and signing keys.
    approvers = tmp_path / "approvers.yaml"
    approvers.write_text("agents: {}\n")
    monkeypatch.setenv("AGENTOPS_APPROVERS_FILE", str(approvers))
    monkeypatch.setenv("AGENTOPS_SIGNING_KEY_DIR", str(tmp_path / "keys"))
    return h


@pytest.fixture
def reviewers(home, tmp_path):
    from tests.helpers import Reviewers

    return Reviewers(tmp_path / "keys", tmp_path / "approvers.yaml")


@pytest.fixture
def defs(home):
    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings

    d = build_definitions(load_settings())
    yield d
    # stop serving processes a test started
    from agentops_pipelines.partitions import ENVIRONMENTS
    deployer = d.resources["deployer"]
    for env in ENVIRONMENTS:
        try:
            deployer.stop(env)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst
