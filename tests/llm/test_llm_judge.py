"""The optional LLM judge (answer relevance, yes/no): a valid verdict from the local SmolLM2, and
its failures counted (no value, an ``errors`` count), never a crash or a "no"."""

import math

import pytest

from agentops_pipelines.agent.llm.endpoint import Endpoint
from agentops_pipelines.agent.llm.judge import NAME, AnswerRelevanceJudge
from agentops_pipelines.agent.scorers import SCORERS, Score
from tests.llm.conftest import needs_llm

RELEVANT = {"text": "where is my order #100234?", "answer": "Your order 100234 is in transit; expected 2026-11-03."}
UNRELATED = {"text": "I forgot my password", "answer": "Our sofas come in three colours."}


@pytest.fixture
def golden(tmp_path):
    from agentops_pipelines import trajectory_gate as tg

    template = tg.seeded_template(tmp_path)
    return template, tg.golden_cases_from(template, 4)


def oracle(cases):
    expected = {c.text: c.expected["tool"] for c in cases}
    return lambda text, features: (expected[text], 1.0)


def test_a_judge_that_cannot_judge_is_counted_not_a_crash_nor_a_no(golden):
    from agentops_pipelines import trajectory_gate as tg

    template, cases = golden
    judge = AnswerRelevanceJudge(Endpoint("http://127.0.0.1:9/v1", "m", timeout_s=2))  # nothing listens
    assert judge(RELEVANT) is None and judge.failures == 1 and "unreachable" in judge.last_error
    ev = tg.evaluate_route(oracle(cases), cases, template, "judged", judges={NAME: judge})
    row = ev.per_scorer.set_index("scorer").loc[NAME]
    assert row["errors"] == len(cases) and row["passed"] == row["failed"] == 0 and math.isnan(row["mean"])
    assert judge.failures == 1 + len(cases)
    # the code scorers are untouched, and a missing verdict fails no case
    assert (ev.per_scorer.set_index("scorer").loc[list(SCORERS), "mean"] == 1.0).all()
    assert ev.cases["failed"].eq("").all()


@needs_llm
def test_the_judge_gives_a_valid_verdict_on_the_local_llm(endpoint, golden):
    from agentops_pipelines import trajectory_gate as tg

    judge = AnswerRelevanceJudge(endpoint)
    for outputs in (RELEVANT, UNRELATED):
        verdict = judge(outputs)
        assert isinstance(verdict, Score) and isinstance(verdict.value, bool) and "judged" in verdict.rationale
    template, cases = golden
    ev = tg.evaluate_route(oracle(cases), cases, template, "judged", judges={NAME: judge})
    row = ev.per_scorer.set_index("scorer").loc[NAME]
    assert row["errors"] == 0 and row["passed"] + row["failed"] == len(cases) and 0.0 <= row["mean"] <= 1.0
    assert judge.failures == 0 and judge.calls == 2 + len(cases)


@needs_llm
def test_the_judge_as_an_mlflow_scorer(endpoint):
    from mlflow.entities import Feedback

    scorer = AnswerRelevanceJudge(endpoint).mlflow_scorer()
    feedback = scorer(outputs=RELEVANT)
    assert isinstance(feedback, Feedback) and feedback.value in (True, False) and feedback.error is None
    broken = AnswerRelevanceJudge(Endpoint("http://127.0.0.1:9/v1", "m", timeout_s=2)).mlflow_scorer()
    assert broken(outputs=RELEVANT).error is not None
