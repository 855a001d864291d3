"""Assets' results through the lake (resources/io_manager.py): which record a downstream step gets.

Small assets stand in for the lifecycle's (an evaluation, then a registration that loads it); the
IO manager, the lake and the Dagster runs are the real ones. tests/test_reevaluation_overlap.py
runs the same race through the lifecycle's own evaluation and registry assets.
"""

import json
from pathlib import Path

import dagster as dg
import pytest

from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER, LakeIOManager
from agentops_pipelines.resources.lake import LakeResource


class Candidate(dg.Config):
    name: str


class LatestOnly(LakeIOManager):
    """The naive hand-off: every input gets the newest record, whoever wrote it."""

    def load_input(self, context: dg.InputContext):
        return self.lake.read_record("/".join(context.asset_key.path))


def race(manager: LakeIOManager, instance) -> dict[str, str]:
    """Run A evaluates "a"; while it is between evaluation and registration, run B evaluates and
    registers "b"; then A registers. Returns {run: the candidate it registered}."""
    registered: dict[str, str] = {}
    resources = {LAKE_IO_MANAGER: manager}

    @dg.asset(io_manager_key=LAKE_IO_MANAGER)
    def evaluation(config: Candidate) -> dict:
        return {"candidate": config.name}

    @dg.asset(deps=[evaluation])
    def meanwhile(config: Candidate) -> None:
        if config.name == "a":  # run B starts and finishes while run A is here
            assert dg.materialize(assets, instance=instance, resources=resources, run_config=run_config("b")).success

    @dg.asset(deps=[meanwhile])
    def registration(config: Candidate, evaluation: dict) -> None:
        registered[config.name] = evaluation["candidate"]

    assets = [evaluation, meanwhile, registration]

    def run_config(name: str) -> dict:
        return {"ops": {step: {"config": {"name": name}} for step in ("evaluation", "meanwhile", "registration")}}

    assert dg.materialize(assets, instance=instance, resources=resources, run_config=run_config("a")).success
    return registered


@pytest.mark.parametrize("manager_class", [
    LakeIOManager,
    pytest.param(LatestOnly, marks=pytest.mark.xfail(strict=True, reason="the naive hand-off registers b twice")),
])
def test_each_of_two_overlapping_runs_registers_the_candidate_it_evaluated(tmp_path, instance, manager_class):
    lake = LakeResource(root=str(tmp_path / "lake"))
    registered = race(manager_class(root=lake.root), instance)
    assert registered == {"a": "a", "b": "b"}
    # Both records stay in the lake, one per run; the current one is the newest, B's.
    folder = tmp_path / "lake" / "evaluation" / "_all"
    assert sorted(json.loads(p.read_text())["candidate"] for p in folder.glob("*.json")) == ["a", "b"]
    assert lake.read_record("evaluation") == {"candidate": "b"}


def test_an_upstream_outside_the_run_is_its_current_record_and_none_before_any(tmp_path, instance):
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {LAKE_IO_MANAGER: LakeIOManager(root=lake.root)}
    seen = []

    @dg.asset(io_manager_key=LAKE_IO_MANAGER)
    def registered_version(config: Candidate) -> dict:
        return {"version": config.name}

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["dev", "prod"]),
              ins={"registered": dg.AssetIn(registered_version.key, input_manager_key=LAKE_IO_MANAGER)})
    def deployment(registered: dict | None) -> None:
        seen.append(registered)

    both = [registered_version, deployment]
    assert dg.materialize(both, instance=instance, resources=resources, selection=[deployment],
                          partition_key="dev").success
    for version in ("1", "2"):
        assert dg.materialize(both, instance=instance, resources=resources, selection=[registered_version],
                              run_config={"ops": {"registered_version": {"config": {"name": version}}}}).success
    assert dg.materialize(both, instance=instance, resources=resources, selection=[deployment],
                          partition_key="prod").success
    assert seen == [None, {"version": "2"}]


def test_a_partitioned_result_is_stored_per_partition(tmp_path, instance):
    lake = LakeResource(root=str(tmp_path / "lake"))

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["dev", "prod"]), io_manager_key=LAKE_IO_MANAGER)
    def deployment(context: dg.AssetExecutionContext) -> dict:
        return {"environment": context.partition_key}

    for environment in ("dev", "prod"):
        result = dg.materialize([deployment], instance=instance, partition_key=environment,
                                resources={LAKE_IO_MANAGER: LakeIOManager(root=lake.root)})
        (event,) = result.asset_materializations_for_node("deployment")
        assert event.metadata["record"].value == str(tmp_path / "lake" / "deployment" / environment /
                                                      f"{result.run_id}.json")
    assert lake.read_record("deployment", "dev") == {"environment": "dev"}
    assert lake.read_record("deployment", "prod") == {"environment": "prod"}


# A re-execution from failure (module level: execute_job needs a job it can rebuild by reference).
@dg.asset(io_manager_key=LAKE_IO_MANAGER)
def reexecuted_evaluation(config: Candidate) -> dict:
    return {"candidate": config.name}


class Registry(dg.Config):
    down_while: str  # a file: the registry is down while it exists


@dg.asset(io_manager_key=LAKE_IO_MANAGER)
def reexecuted_registration(config: Registry, reexecuted_evaluation: dict) -> dict:
    if Path(config.down_while).exists():
        raise RuntimeError("the registry is down")
    return {"registered": reexecuted_evaluation["candidate"]}


def reexecution_job() -> dg.JobDefinition:
    return dg.Definitions(
        assets=[reexecuted_evaluation, reexecuted_registration],
        jobs=[dg.define_asset_job("evaluate_and_register")],
        resources={LAKE_IO_MANAGER: LakeIOManager.configure_at_launch()},
    ).resolve_job_def("evaluate_and_register")


def test_a_reexecution_from_failure_loads_the_record_its_parent_run_produced(tmp_path):
    root = tmp_path / "lake"
    root.mkdir()
    lake = LakeResource(root=str(root))

    def run_config(name: str) -> dict:
        return {"ops": {"reexecuted_evaluation": {"config": {"name": name}},
                        "reexecuted_registration": {"config": {"down_while": str(root / "registry-down")}}},
                "resources": {LAKE_IO_MANAGER: {"config": {"root": str(root)}}},
                "execution": {"config": {"in_process": {}}}}

    job = dg.reconstructable(reexecution_job)
    with dg.instance_for_test() as instance:
        (root / "registry-down").touch()
        with dg.execute_job(job, instance, run_config=run_config("a")) as failed:
            assert not failed.success
        (root / "registry-down").unlink()
        with dg.execute_job(job, instance, run_config=run_config("b")) as other:  # newer, in between
            assert other.success
        options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        with dg.execute_job(job, instance, reexecution_options=options) as retried:
            assert retried.success
    assert lake.read_record("reexecuted_registration", run_id=retried.run_id) == {"registered": "a"}
