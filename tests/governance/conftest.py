import pytest


@pytest.fixture
def setup(defs, reviewers):
    """(MLflow client, audit store, tracking URI) of a fresh state folder with signing keys."""
    store = defs.resources["mlflow_store"]
    client = store.configure()
    audit = defs.resources["audit"].store
    return client, audit, store.tracking_uri
