"""Trajectory evaluation: golden cases from the system of record, scorers in process and in MLflow."""

import collections

import pytest

from agentops_pipelines.agent.actions import Actions, Policy
from agentops_pipelines.agent.scorers import (
    SCORERS,
    evaluate_trajectories,
    golden_cases,
    mlflow_records,
    mlflow_scorers,
    policy_compliance,
    runner,
    score,
)
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES
from agentops_pipelines.agent.trajectory import Executor


@pytest.fixture
def cases(sor):
    return golden_cases(sor, 520)


def oracle(cases):
    tools = {c.text: c.expected["tool"] for c in cases}
    return lambda text, features: (tools[text], 1.0)


def test_golden_cases_are_deterministic_and_cover_tools_and_policy(sor, cases):
    assert golden_cases(sor, 520) == cases
    assert len(cases) == 520 and len({c.customer_id for c in cases}) == 520
    assert {c.expected["tool"] for c in cases} == set(TOOL_NAMES)
    by_category = collections.Counter(c.category for c in cases)
    assert min(by_category.values()) >= 25
    above = [c for c in cases if c.category == "refund_above_limit"]
    assert all(c.expected["tools"] == ["request_refund", ESCALATE] and c.expected["outcome"] == "handed_over"
               and c.expected["policy"] for c in above)
    assert golden_cases(sor, 50, seed=8) != cases[:50]


def test_the_right_agent_scores_full_marks_in_process(sor, cases):
    ev = evaluate_trajectories(cases, runner(Executor(Actions(sor), oracle(cases))))
    assert ev.per_scorer.set_index("scorer")["mean"].to_dict() == {name: 1.0 for name in SCORERS}
    assert set(ev.per_tool["expected_tool"]) == set(TOOL_NAMES)
    assert ev.per_tool["cases"].sum() == 520
    steps = ev.per_step.set_index("step")
    assert steps.loc["fetch_context", "count"] == 520 and steps.loc["policy", "count"] > 0
    # Expected failures (a rejected cancel, a missing address) are counted as step errors.
    assert steps.loc["call_tool", "errors"] > 0
    assert ev.metrics["tool_choice/mean"] == 1.0


def test_scorers_catch_a_wrong_tool_and_a_lax_policy(seeded_file, tmp_path, sor, cases):
    # Always tracking: right on track_order cases only, and the table says which tool fails.
    ev = evaluate_trajectories(cases, runner(Executor(Actions(sor), lambda t, f: ("track_order", 0.5))))
    per_tool = ev.per_tool.set_index("expected_tool")
    assert per_tool.loc["track_order", "tool_choice"] == 1.0
    assert per_tool.loc["cancel_order", "tool_choice"] == 0.0
    assert per_tool.loc["cancel_order", "argument_correctness"] == 0.0
    # An agent deployed with a lax policy refunds above the limit the cases were written for.
    import shutil

    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    shutil.copy(seeded_file, tmp_path / "lax.db")
    lax = SystemOfRecord(f"sqlite:///{tmp_path / 'lax.db'}")
    policy_cases = [c for c in cases if c.category == "refund_above_limit"]
    ev = evaluate_trajectories(policy_cases, runner(Executor(Actions(lax, Policy(refund_limit=10_000)),
                                                             oracle(cases))))
    assert ev.per_scorer.set_index("scorer").loc["policy_compliance", "mean"] == 0.0
    assert ev.per_scorer.set_index("scorer").loc["steps_taken", "mean"] == 0.0
    lax.dispose()


def test_policy_compliance_needs_no_expectations():
    calls = [{"tool": "request_refund", "outcome": "needs_handover", "data": {"refund_cents": 50000}}]
    assert not policy_compliance({"tool_calls": calls}).value
    calls.append({"tool": ESCALATE, "outcome": "executed", "data": {"ticket_id": "TK-1"}})
    assert policy_compliance({"tool_calls": calls}).value


def test_scorers_agree_between_in_process_and_mlflow_genai_evaluate(sor, cases, tmp_path, monkeypatch, mlflow_db):
    import mlflow

    monkeypatch.setenv("MLFLOW_GENAI_EVAL_MAX_WORKERS", "1")
    picked = [next(c for c in cases if c.category == cat) for cat in
              ("track", "refund_above_limit", "address_missing", "cancel_subscription", "escalate", "upgrade")]
    wrong = {picked[0].text: "cancel_order", picked[4].text: "track_order"}  # two wrong decisions
    right = oracle(cases)
    ex = Executor(Actions(sor), lambda text, f: (wrong.get(text) or right(text, f)[0], 0.9))
    trajectories = [runner(ex)(c) for c in picked]
    local = [score(t.to_dict(), c.expected) for c, t in zip(picked, trajectories, strict=True)]
    assert not all(s.value for s in local[0].values())  # the comparison covers failures too

    mlflow.set_tracking_uri(mlflow_db)
    try:
        exp = mlflow.create_experiment("eval", artifact_location=str(tmp_path / "artifacts"))
        mlflow.set_experiment(experiment_id=exp)
        result = mlflow.genai.evaluate(data=mlflow_records(picked, trajectories), scorers=mlflow_scorers())
        df = result.result_df
        by_request = {row["request"]["request_id"]: row for _, row in df.iterrows()}
        for case, mine in zip(picked, local, strict=True):
            row = by_request[case.request_id]
            for name, s in mine.items():
                assert row[f"{name}/value"] == s.value, (case.category, name)
                assert row[f"{name}/rationale"] == s.rationale
        for name in SCORERS:
            mean = sum(float(m[name].value) for m in local) / len(local)
            assert result.metrics[f"{name}/mean"] == pytest.approx(mean)
    finally:
        mlflow.set_tracking_uri(None)


def test_the_evaluation_is_logged_to_an_mlflow_run(sor, cases, tmp_path, mlflow_db):
    import mlflow

    mlflow.set_tracking_uri(mlflow_db)
    try:
        exp = mlflow.create_experiment("eval", artifact_location=str(tmp_path / "artifacts"))
        ev = evaluate_trajectories(cases[:40], runner(Executor(Actions(sor), lambda t, f: ("track_order", 0.5))))
        with mlflow.start_run(experiment_id=exp) as run:
            ev.log_to_mlflow(run.info.run_id)
        logged = mlflow.get_run(run.info.run_id).data.metrics
        assert logged["trajectory/tool_choice/mean"] == ev.metrics["tool_choice/mean"] < 1.0
        mlflow.set_experiment(experiment_id=exp)
        table = mlflow.load_table("trajectory/per_tool.json", run_ids=[run.info.run_id])
        assert set(table["expected_tool"]) == set(ev.per_tool["expected_tool"])
    finally:
        mlflow.set_tracking_uri(None)
