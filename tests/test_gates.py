"""The Great Expectations gates, one bad thing at a time."""

from datetime import date

import pandas as pd
import pytest

from agentops_pipelines.agent.tools import TOOL_NAMES
from agentops_pipelines.data.generator import generate_requests
from agentops_pipelines.gates import GATES, GateLimits, run_gates

DAY = date(2026, 11, 1)


@pytest.fixture(scope="module")
def good():
    return generate_requests(DAY, n=300)


def failing(outcomes):
    return {name for name, o in outcomes.items() if not o.passed}


def test_a_good_day_passes_every_gate(good):
    outcomes = run_gates(good, TOOL_NAMES, DAY)
    assert set(outcomes) == set(GATES)
    assert failing(outcomes) == set()


@pytest.mark.parametrize("breaker, gate, offending", [
    (lambda df: df.assign(tool=df["tool"].where(df.index != 4, "fly_to_the_moon")), "known_labels", "fly_to_the_moon"),
    (lambda df: df.assign(customer_id=df["customer_id"].where(df.index != 4, None)), "no_nulls", None),
    (lambda df: df.assign(timestamp=df["timestamp"].where(df.index != 4, df["timestamp"] + pd.Timedelta(days=3))), "timestamps_in_partition", "2026-11-04"),
    (lambda df: df.assign(text=df["text"].where(df.index != 4, "x" * 5000)), "text_length", None),
    (lambda df: df.assign(text=df["text"].where(df.index != 4, "ok")), "text_length", "ok"),
])
def test_each_gate_names_the_offending_row(good, breaker, gate, offending):
    bad = breaker(good.copy())
    outcomes = run_gates(bad, TOOL_NAMES, DAY)
    assert failing(outcomes) == {gate}
    rows = outcomes[gate].failing_rows
    assert [r["request_id"] for r in rows] == [good.loc[4, "request_id"]]
    if offending:
        assert offending in str(rows[0])
    assert outcomes[gate].problems


def test_duplicates_over_the_share_fail(good):
    dup = pd.concat([good, good.head(30).assign(request_id=lambda d: d["request_id"] + "-copy")], ignore_index=True)
    assert failing(run_gates(dup, TOOL_NAMES, DAY)) == {"duplicates"}
    assert failing(run_gates(dup, TOOL_NAMES, DAY, GateLimits(max_duplicate_share=0.5))) == set()


def test_missing_column_fails_the_schema_gate(good):
    outcomes = run_gates(good.drop(columns=["tool"]), TOOL_NAMES, DAY)
    assert "schema" in failing(outcomes)
    assert "tool" in outcomes["schema"].problems[0]
