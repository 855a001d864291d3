"""Trajectory evaluation in the lifecycle: golden paths judged per scorer, the blocking gate.

The verdict tests run real golden cases through the real executor on a seeded SQLite system of
record; the lifecycle test runs the training job and shows the gate holding registration back.
"""

import re

import mlflow
import pytest

from agentops_pipelines import trajectory_gate as tg
from tests.helpers import AGENT, latest_check, metadata, run_job


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trajectory")
    template = tg.seeded_template(folder)
    return template, tg.golden_cases_from(template, 120)


def oracle(cases):
    """A router that always picks the expected tool: the ceiling of what a router can do."""
    want = {c.text: c.expected["tool"] for c in cases}
    return lambda text, features: (want[text], 1.0)


def test_an_oracle_router_meets_every_default_minimum(golden):
    template, cases = golden
    ev = tg.evaluate_route(oracle(cases), cases, template, "oracle")
    result = tg.verdict(ev, None, tg.DEFAULT_MINIMUMS)
    assert result.passed, result.reasons
    assert set(result.comparison["scorer"]) == set(tg.DEFAULT_MINIMUMS)
    assert {"fetch_context", "decide", "call_tool", "answer"} <= set(ev.per_step["step"])
    assert "refund_above_limit" in set(ev.cases["category"])  # the policy cases are among them


def test_a_router_that_hands_everything_over_is_refused_per_scorer_and_against_the_champion(golden):
    template, cases = golden
    champion = tg.evaluate_route(oracle(cases), cases, template, "champion")
    lazy = tg.evaluate_route(lambda text, features: ("escalate_to_human", 0.9), cases, template, "lazy")
    result = tg.verdict(lazy, champion, tg.DEFAULT_MINIMUMS)
    assert not result.passed
    named = " ".join(result.reasons)
    for scorer in ("tool_choice", "argument_correctness", "outcome_match"):
        assert f"{scorer} " in named and "< minimum" in named
    assert "significantly worse than the champion" in result.reasons[-1]
    row = result.comparison.set_index("scorer").loc["tool_choice"]
    assert row["delta"] == pytest.approx(row["candidate"] - row["champion"], abs=1e-3) and row["delta"] < -0.5
    fails = tg.failures(lazy).set_index("category")
    assert fails.loc["track", "failed"] == fails.loc["track", "cases"] > 0
    assert "tool_choice" in fails.loc["track", "failing_scorers"]
    assert fails.loc["escalate", "failed"] == 0  # the one scenario it gets right
    html = tg.render_html("lazy", result, lazy, champion)
    assert "Trajectory gate: <b>failed</b>" in html and "Per step" in html


def test_a_router_trained_on_other_labels_is_not_judged_on_the_support_desk(golden):
    _, cases = golden

    class Banking:  # BANKING77's labels include one of the support desk's tool names
        classes = ["card_arrival", "lost_or_stolen_card", "request_refund"]

    assert "does not know the golden cases' tools" in tg.applicable(Banking(), cases)
    support_desk = sorted({c.expected["tool"] for c in cases})
    assert tg.applicable(type("R", (), {"classes": support_desk})(), cases) is None


@pytest.mark.slow
def test_the_training_job_evaluates_trajectories_and_the_gate_holds_registration(defs, instance, home):
    day = "2026-11-01"
    assert run_job(defs, instance, "ingest", partition_key=day).success
    one_day = {f"{AGENT}__training_set": {"config": {"days": 1, "end_date": day}},
               f"{AGENT}__evaluation_report": {"config": {"evidently_report": False, "latency_samples": 20}}}
    assert run_job(defs, instance, "training", run_config={"ops": one_day}).success

    report = metadata(instance, "trajectory_evaluation")
    assert report["gate_passed"] is True and report["cases"] == 520
    assert report["trajectory_tool_choice"] > 0.9 and report["trajectory_policy_compliance"] == 1.0
    assert re.search(r"\| call_tool +\|", report["per_step"]) and re.search(r"\| request_refund +\|", report["per_tool"])
    assert latest_check(instance, "trajectory_evaluation", "trajectory_gate")["trajectory_tool_choice"] \
        == report["trajectory_tool_choice"]
    first = metadata(instance, "registered_version")["version"]
    client = mlflow.MlflowClient(f"sqlite:///{home}/mlflow/mlflow.db")
    run = client.get_run(report["candidate_run_id"])
    assert run.data.metrics["trajectory_tool_choice"] == pytest.approx(report["trajectory_tool_choice"], abs=1e-4)
    assert run.data.tags["agentops.trajectory_gate"] == "passed"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/trajectory")}
    assert {f"evaluation/trajectory/{n}" for n in ("report.html", "per_scorer.json", "per_step.json",
                                                   "per_tool.json", "failures.json")} <= files

    # Re-evaluating the same run with a minimum it cannot meet: refused, and not registered again.
    short = next(k.removeprefix("trajectory_") for k, v in report.items()
                 if k.startswith("trajectory_") and isinstance(v, float) and v < 1.0)
    strict = {**one_day, f"{AGENT}__evaluation_report": {"config": {
        "candidate_run_id": run.info.run_id, "evidently_report": False, "latency_samples": 5}},
        f"{AGENT}__trajectory_evaluation": {"config": {"candidate_run_id": run.info.run_id, "cases": 200,
                                                       f"min_{short}": 1.0}}}
    strict.pop(f"{AGENT}__training_set")
    result = run_job(defs, instance, "reevaluation", run_config={"ops": strict})
    assert not result.success
    refused = metadata(instance, "trajectory_evaluation")
    assert refused["gate_passed"] is False and refused["cases"] == 200
    assert any(r.startswith(f"{short} ") for r in refused["gate_reasons"])
    gate = latest_check(instance, "trajectory_evaluation", "trajectory_gate")
    assert f"{short} " in gate["reasons"]
    assert not result.asset_materializations_for_node(f"{AGENT}__registered_version")
    assert metadata(instance, "registered_version")["version"] == first
    assert client.get_run(run.info.run_id).data.tags["agentops.trajectory_gate"] == "failed"
