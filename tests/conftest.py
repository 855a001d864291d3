import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database with MLflow's schema and nothing else, made once per session.

    MLflow makes a new SQLite store by running every one of its schema migrations: seconds each
    time (about 3 s on a quiet 2-core machine, 7 s on a busy one), for every test with a state
    folder of its own. A copy of this file is the same empty store at once.
    """
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{path}", f"sqlite:///{path}")
    client.search_experiments()  # creates the tables (and MLflow's Default experiment)
    client.search_registered_models()
    return path


@pytest.fixture
def mlflow_db(tmp_path, empty_mlflow_db) -> str:
    """The tracking URI of a new, empty MLflow store of this test's own (``tmp_path/mlflow.db``)."""
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _mlflow_uris_do_not_leak():
    """MLflow keeps the tracking and registry URIs that code sets (resources/mlflow.py sets both)
    in module globals, which win over the environment: a later test in the same worker would talk
    to a store that is gone (a dropped Postgres database). Each test leaves them as it found them
    (after its module's fixtures, which may set them for all their tests)."""
    import sys

    def uris():
        if "mlflow" not in sys.modules:
            return None, None
        from mlflow.tracking._model_registry import utils as registry
        from mlflow.tracking._tracking_service import utils as tracking

        return tracking, registry

    tracking, registry = uris()
    saved = (tracking._tracking_uri, registry._registry_uri) if tracking else (None, None)
    yield
    tracking, registry = uris()
    if tracking:
        tracking._tracking_uri, registry._registry_uri = saved


@pytest.fixture
def home(tmp_path, monkeypatch, empty_mlflow_db):
    """A fresh AGENTOPS_HOME: everything the embedded default writes goes here. Its MLflow
    database is a copy of an empty one (``empty_mlflow_db``)."""
    h = tmp_path / "agentops"
    (h / "mlflow").mkdir(parents=True)
    shutil.copyfile(empty_mlflow_db, h / "mlflow" / "mlflow.db")
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
