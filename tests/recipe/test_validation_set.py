"""An agent's declared validation file through the real ``trained_agent`` asset: it places the
threshold, and the training run names it and its digest (it is not a Dagster asset, so the run is
its lineage). MLflow on SQLite, the lake on disk, BANKING77 intents as the agent's tools."""

import hashlib

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from agentops_pipelines.agent.config import ConfiguredAgent, parse
from agentops_pipelines.assets.training import build_training_asset
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER, LakeIOManager
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource


@pytest.mark.slow
@pytest.mark.parametrize("rewritten", [False, True], ids=["as_declared", "rewritten_after_the_run_started"])
def test_the_training_run_names_the_validation_file_and_its_digest(banking77, tmp_path, monkeypatch, rewritten):
    """The digest recorded is that of the bytes the router learned from. Until 2026-12-05 the
    asset hashed the file when the run started and training read it again later: a file
    rewritten in between was recorded under the old content's digest."""
    intents = sorted(banking77["tool"].unique())[:8]
    df = banking77[banking77["tool"].isin(intents)].sample(frac=1.0, random_state=0).reset_index(drop=True)
    val, rows = df.iloc[:200], df.iloc[200:].reset_index(drop=True)
    file = tmp_path / "val.csv"
    val.rename(columns={"text": "utterance", "tool": "intent"}).to_csv(file, index=False)
    agent = ConfiguredAgent(parse({
        "name": "bank_val", "labels": intents, "fallback_tool": intents[0],
        "recipe": {"params": {"C": 0.5, "embeddings": 0}},
        "abstention": {"max_accuracy_loss": 0.02},
        "validation_set": {"path": str(file), "text_column": "utterance", "label_column": "intent"},
    }, "bank_val.yaml"))
    learned = val
    if rewritten:  # a writer replaces the file after the run started, before training reads it
        learned = val.iloc[:150]
        real_train = agent.train

        def train_after_a_rewrite(training_set, params):
            learned.rename(columns={"text": "utterance", "tool": "intent"}).to_csv(file, index=False)
            return real_train(training_set, params)

        monkeypatch.setattr(agent, "train", train_after_a_rewrite)
    lake = LakeResource(root=str(tmp_path / "lake"))
    store = MlflowResource(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                           artifact_root=str(tmp_path / "artifacts"), ui_url="http://mlflow")
    lake.write("bank_val/training_set", rows.assign(
        split=np.where(np.arange(len(rows)) % 5 == 0, "holdout", "train"),
        timestamp=pd.Timestamp("2026-12-01"), request_id=[f"r{i}" for i in range(len(rows))]), run_id="v1")

    training_set = dg.AssetSpec(["bank_val", "training_set"])
    result = dg.materialize(
        [training_set, build_training_asset(agent, training_set)], instance=dg.DagsterInstance.ephemeral(),
        resources={"lake": lake, LAKE_IO_MANAGER: LakeIOManager(root=lake.root), "mlflow_store": store},
        run_config={"ops": {"bank_val__trained_agent": {"config": {"trace_samples": 0}}}})

    (materialization,) = result.asset_materializations_for_node("bank_val__trained_agent")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert metadata["val_declared_set"] == 1 and metadata["val_rows"] == len(learned)
    assert metadata["validation_set"] == str(file) and metadata["validation_set_sha256"] == digest
    assert 0 < metadata["val_in_scope_accuracy_loss"] <= 0.02
    store.configure()
    tags = mlflow.get_run(metadata["mlflow_run_id"]).data.tags
    assert tags["agentops.validation_set"] == str(file)
    assert tags["agentops.validation_set_sha256"] == digest
