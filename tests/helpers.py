import json
import urllib.request

import dagster as dg

AGENT = "support_agent"


def run_job(defs, instance, stage: str, **kwargs) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(f"{AGENT}_{stage}_job")
    return job.execute_in_process(instance=instance, raise_on_error=False, **kwargs)


def metadata(instance, name: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey([AGENT, name]))
    assert event is not None, f"{name} was never materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def materialized(instance, name: str, partition: str | None = None) -> bool:
    key = dg.AssetKey([AGENT, name])
    if partition is None:
        return instance.get_latest_materialization_event(key) is not None
    return partition in instance.get_materialized_partitions(key)


def dataset_config(**config) -> dict:
    return {"ops": {f"{AGENT}__dataset": {"config": config}}}


def invoke(url: str, records: list[dict]) -> dict:
    body = json.dumps({"dataframe_records": records}).encode()
    req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
