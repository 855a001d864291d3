"""A state folder where the lifecycle ran, for the UI tests: three good days, one day that fails
its gates, and a training run (trained agent, evaluation report, registered version)."""

import os
import shutil
from pathlib import Path

import pandas as pd

GOOD_DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
BAD_DAY = "2026-11-04"
ROOT = Path(__file__).resolve().parents[2]


def build_state(home: Path) -> Path:
    """Run the lifecycle into ``home`` (AGENTOPS_HOME, set by the caller); returns DAGSTER_HOME."""
    import dagster as dg

    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings
    from tests.helpers import dataset_config, run_job

    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    defs = build_definitions(load_settings())
    bad = home / "bad-day.csv"
    pd.DataFrame({"text": ["where is my order", "refund me please", "x"],
                  "tool": ["track_order", "teleport_customer", "request_refund"],
                  "customer_id": ["C00001", None, "C00003"]}).to_csv(bad, index=False)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        for day in GOOD_DAYS:
            assert run_job(defs, instance, "ingest", partition_key=day).success
        assert not run_job(defs, instance, "ingest", partition_key=BAD_DAY,
                           run_config=dataset_config(source="file", path=str(bad))).success
        assert run_job(defs, instance, "training").success
    finally:
        instance.dispose()
    return dagster_home
