"""The gates before registration: one builder (assets/checks.py) for the evaluation and trajectory
gates, reporting the gate record their asset stored in the lake, blocking what waits on them."""

import dagster as dg
import pytest

from agentops_pipelines.assets.checks import build_gate_check, gate_record
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER, LakeIOManager


class Verdict(dg.Config):
    accuracy: float


def gated(tmp_path):
    """An evaluation that stores a gate record (minimum accuracy 0.8), its gate, and a
    registration that waits on the gate."""
    registered = []

    @dg.asset(io_manager_key=LAKE_IO_MANAGER)
    def evaluation(config: Verdict) -> dg.MaterializeResult:
        reasons = [] if config.accuracy >= 0.8 else [f"accuracy {config.accuracy} is below the minimum 0.8"]
        record = gate_record("run-1", not reasons, reasons, "3", {"accuracy": config.accuracy, "delta_accuracy": -0.1},
                             {"candidate_vs_champion": "| metric | candidate |"})
        return dg.MaterializeResult(value=record, metadata={"accuracy": config.accuracy})

    gate = build_gate_check(evaluation, "evaluation_gate", description="accuracy at least 0.8",
                            missing="no evaluation report yet")

    @dg.asset(deps=[evaluation])
    def registration() -> None:
        registered.append(True)

    resources = {LAKE_IO_MANAGER: LakeIOManager(root=str(tmp_path / "lake"))}
    return [evaluation, gate, registration], resources, registered


@pytest.mark.parametrize("accuracy", [0.9, 0.5])
def test_the_gate_reports_the_record_and_blocks_registration_when_it_failed(tmp_path, instance, accuracy):
    assets, resources, registered = gated(tmp_path)
    result = dg.materialize(assets, instance=instance, resources=resources, raise_on_error=False,
                            run_config={"ops": {"evaluation": {"config": {"accuracy": accuracy}}}})
    (check,) = result.get_asset_check_evaluations()
    metadata = {k: v.value for k, v in check.metadata.items()}
    assert check.passed is (accuracy >= 0.8) and check.severity == dg.AssetCheckSeverity.ERROR
    assert metadata["candidate_run_id"] == "run-1" and metadata["champion_version"] == "3"
    assert metadata["accuracy"] == accuracy and metadata["delta_accuracy"] == -0.1
    assert metadata["candidate_vs_champion"] == "| metric | candidate |"
    assert metadata["reasons"] == ("none" if accuracy >= 0.8 else "- accuracy 0.5 is below the minimum 0.8")
    assert registered == ([True] if accuracy >= 0.8 else [])


def test_a_gate_with_no_record_fails_and_says_what_is_missing(tmp_path, instance):
    (evaluation, gate, _), resources, _ = gated(tmp_path)
    result = dg.materialize([evaluation, gate], instance=instance, resources=resources, raise_on_error=False,
                            selection=dg.AssetSelection.checks(gate))
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["problem"].value == "no evaluation report yet"
