"""The real Banking77 training file through the file source, by configuration alone."""

import pytest

from tests.conftest import BANKING77
from tests.helpers import AGENT, dataset_config, metadata, run_job

pytestmark = pytest.mark.skipif(not (BANKING77 / "train.csv").exists(),
                                reason=f"Banking77 is not at {BANKING77} (it lives in ../shared, beside the project)")

CONFIG = {"ops": {
    **dataset_config(source="file", path="../shared/datasets/banking77/train.csv", label_column="category",
                     labels_file="../shared/datasets/banking77/categories.json")["ops"],
    f"{AGENT}__training_set": {"config": {"days": 1, "end_date": "2026-11-01", "holdout_share": 0.2}},
    f"{AGENT}__trained_agent": {"config": {"params": {"embeddings": 1, "use_features": 0}, "trace_samples": 5}},
    f"{AGENT}__evaluation_report": {"config": {"min_accuracy": 0.91, "latency_samples": 50}},
}}


@pytest.mark.slow
def test_banking77_routes_with_at_least_91_percent_accuracy(defs, instance):
    ingest = {"ops": {k: v for k, v in CONFIG["ops"].items() if k.endswith("__dataset")}}
    assert run_job(defs, instance, "ingest", partition_key="2026-11-01", run_config=ingest).success
    assert metadata(instance, "dataset")["rows"] == 10003
    training = {"ops": {k: v for k, v in CONFIG["ops"].items() if not k.endswith("__dataset")}}
    assert run_job(defs, instance, "training", run_config=training).success

    report = metadata(instance, "evaluation_report")
    assert report["holdout_rows"] == pytest.approx(2000, rel=0.08)  # a stable 20% by request id
    assert report["accuracy"] >= 0.91, f"tool-selection accuracy {report['accuracy']:.4f} on {report['holdout_rows']} held-out requests"
    assert report["gate_passed"] is True
    assert metadata(instance, "registered_version")["version"] == "1"
