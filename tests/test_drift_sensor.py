"""The drift sensor acts on drift reports' lake records, once each, and says why it skips.

A report reaches the sensor as the daemon sees it: a materialization event of ``drift_report``
(the trigger, its storage id the cursor) and the record its run stored in the lake (the data).
The events here carry no metadata at all: the sensor must not need any.
"""

import dagster as dg

from agentops_pipelines.vocabulary import VersionTag
from tests.helpers import AGENT, evaluate, register_versions

DAY = "2026-11-05"


def report(defs, instance, run_id: str, day: str = DAY, **record) -> None:
    """A drift report of ``day``: its record in the lake under ``run_id``, then its event."""
    defs.resources["lake"].write_record(f"{AGENT}/drift_report", record, run_id=run_id, partition=day)
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey([AGENT, "drift_report"]), partition=day))


def test_drift_over_the_threshold_freezes_the_version_and_retrains_once(defs, instance, home):
    (version,) = register_versions(defs.resources["mlflow_store"].tracking_uri, 1)
    report(defs, instance, "calm", day="2026-11-04", environment="prod", rows=400, verdict="no drift",
           drift_share=0.1, serving_version=version, drifted_columns=[])
    requests, cursor, skip = evaluate(defs, instance, "drift_sensor")
    assert requests == [] and "share 0.10 under 0.5" in skip

    report(defs, instance, "drifted", environment="prod", rows=600, verdict="drift", drift_share=0.75,
           serving_version=version, drifted_columns=["text.length", "orders_30d"])
    (request,), after, _ = evaluate(defs, instance, "drift_sensor", cursor=cursor)
    assert request.tags["agentops/frozen_version"] == version
    assert request.tags["agentops/drifted_features"] == "text.length,orders_30d"
    assert request.tags["agentops/drift_share"] == "0.750"
    tags = defs.resources["mlflow_store"].configure().get_model_version(AGENT, version).tags
    assert tags[VersionTag.FROZEN] == "true" and DAY in tags[VersionTag.FROZEN_REASON]
    (freeze,) = defs.resources["audit"].entries(AGENT)
    assert (freeze.action, freeze.version, freeze.environment) == ("freeze", version, "prod")

    # The next tick repeats nothing; a daemon restarted from the older cursor asks for the same
    # run key (Dagster launches a run key once) and records no second freeze.
    assert evaluate(defs, instance, "drift_sensor", cursor=after)[0] == []
    (again,), _, _ = evaluate(defs, instance, "drift_sensor", cursor=cursor)
    assert again.run_key == request.run_key
    assert [e.action for e in defs.resources["audit"].entries(AGENT)] == ["freeze"]


def test_reports_without_a_verdict_or_a_record_are_skipped_with_the_reason(defs, instance):
    report(defs, instance, "quiet", environment="prod", rows=12, verdict="insufficient traffic", drift_share=None)
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey([AGENT, "drift_report"]),
                                                                partition="2026-11-06"))
    requests, cursor, skip = evaluate(defs, instance, "drift_sensor")
    assert requests == []
    assert f"{DAY}: insufficient traffic" in skip
    assert "2026-11-06: run (none) stored no drift record in the lake" in skip
    assert evaluate(defs, instance, "drift_sensor", cursor=cursor)[2] == "no new drift report"
