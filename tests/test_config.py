"""Invalid configuration is refused before anything is written."""

import dagster as dg
import pydantic
import pytest

from tests.helpers import dataset_config, run_job


@pytest.mark.parametrize("config, error, message", [
    ({"source": "kafka"}, dg.DagsterInvalidConfigError, "not in enum type"),
    ({"bogus_key": 1}, dg.DagsterInvalidConfigError, 'unexpected config entry "bogus_key"'),
    ({"rows_per_day": "many"}, dg.DagsterInvalidConfigError, "rows_per_day"),
    ({"rows_per_day": -5}, pydantic.ValidationError, "rows_per_day"),
    ({"drift": 3.0}, pydantic.ValidationError, "drift"),
])
def test_invalid_dataset_config(defs, instance, home, config, error, message):
    with pytest.raises(error, match=message):
        defs.resolve_job_def("support_agent_ingest_job").execute_in_process(
            instance=instance, partition_key="2026-11-01", run_config=dataset_config(**config))
    assert not (home / "lake" / "support_agent" / "dataset").exists()


def test_a_missing_file_fails_the_run_with_its_name(defs, instance, home, tmp_path):
    result = run_job(defs, instance, "ingest", partition_key="2026-11-01",
                     run_config=dataset_config(source="file", path=str(tmp_path / "missing.csv")))
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "missing.csv does not exist" in failure.message + str(failure.cause)
    assert not (home / "lake" / "support_agent" / "dataset").exists()
