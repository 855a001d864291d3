"""The Dagster CLI a CI job or a data scientist uses: validate, and backfill three days."""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _env(home: Path) -> dict:
    env = dict(os.environ, AGENTOPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def test_definitions_validate():
    out = subprocess.run([DAGSTER, "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Validation successful" in out.stdout + out.stderr


def test_definitions_hold_the_lifecycle():
    from agentops_pipelines.definitions import defs

    keys = {"/".join(k.path) for k in defs.resolve_all_asset_keys()}
    assert keys == {f"support_agent/{n}" for n in (
        "dataset", "customer_features", "training_set", "trained_agent", "evaluation_report",
        "trajectory_evaluation", "registered_version", "deployment", "drift_report")}
    graph = defs.resolve_asset_graph()
    upstream = {k.path[-1]: {p.path[-1] for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert upstream["deployment"] == {"registered_version"}
    assert upstream["registered_version"] == {"evaluation_report", "trajectory_evaluation"}
    assert upstream["trajectory_evaluation"] == {"trained_agent"}
    assert "training_set" in upstream["trained_agent"]
    assert upstream["customer_features"] == {"dataset"}
    assert upstream["drift_report"] == {"deployment", "training_set"}
    jobs = {j.name for j in defs.jobs}
    assert {f"support_agent_{j}_job" for j in ("ingest", "training", "retraining", "reevaluation", "deploy",
                                                "promotion", "rollback", "drift")} == jobs


@pytest.mark.slow
def test_cli_backfill_of_three_partitions(tmp_path):
    home = tmp_path / "agentops"
    (home / "dagster").mkdir(parents=True)
    # Runs launch at once (no daemon needed): the default coordinator, not the queued one.
    (home / "dagster" / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n  module: dagster.core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n")
    out = subprocess.run([DAGSTER, "job", "backfill", "-w", "workspace.yaml", "-j", "support_agent_ingest_job",
                          "--from", "2026-11-01", "--to", "2026-11-03", "--noprompt"],
                         cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    deadline = time.time() + 240
    while time.time() < deadline:
        runs = instance.get_runs()
        if len(runs) == 3 and all(r.is_finished for r in runs):
            break
        time.sleep(0.5)
    runs = instance.get_runs()
    assert sorted(r.tags["dagster/partition"] for r in runs) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert len({r.tags["dagster/backfill"] for r in runs}) == 1
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
    for asset in ("dataset", "customer_features"):
        parts = instance.get_materialized_partitions(dg.AssetKey(["support_agent", asset]))
        assert parts == {"2026-11-01", "2026-11-02", "2026-11-03"}
    instance.dispose()
