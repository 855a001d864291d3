"""Trajectory evaluation of a trained router, and the gate's verdict on it (no Dagster here).

The classification report (``evaluation.py``) judges the tool label alone. This module judges
whole execution paths: the golden cases of :mod:`agentops_pipelines.agent.scorers` (expected tool
sequences, arguments, outcomes, policy cases such as a refund above the limit that must be handed
over) run through the real executor against a *fresh copy* of the seeded system of record (a
candidate's writes never touch a database anyone serves from), scored in process by the same
code scorers that run in ``mlflow.genai.evaluate``. ``mlflow.genai.evaluate`` scores about 3
cases a second here, the in-process loop about 300 (BENCHMARKS.md), so the gate scores in process
and logs the tables to the candidate's run.

The verdict: every scorer's mean meets its minimum, and the candidate is not significantly worse
than the champion on whole cases (all scorers passed), by McNemar's paired test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from agentops_pipelines.agent.scorers import GoldenCase, TrajectoryEvaluation
    from agentops_pipelines.sandbox import Decided

#: Minimum mean per scorer. The trained support desk scores about 0.98 on each (BENCHMARKS.md);
#: a write the policy forbids is never acceptable.
DEFAULT_MINIMUMS: dict[str, float] = {
    "tool_choice": 0.90, "argument_correctness": 0.90, "steps_taken": 0.90,
    "policy_compliance": 1.0, "outcome_match": 0.90, "answer_check": 0.85,
}


def seeded_template(folder: Path) -> Path:
    """A seeded system-of-record file in ``folder`` (copied per evaluated model)."""
    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    path = folder / "system_of_record_template.db"
    if not path.exists():
        sor = SystemOfRecord(f"sqlite:///{path}").ensure()
        sor.dispose()  # the last connection checkpoints the WAL into the file
    return path


def golden_cases_from(template: Path, n: int) -> list[GoldenCase]:
    from agentops_pipelines.agent.scorers import golden_cases
    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    sor = SystemOfRecord(f"sqlite:///{template}")
    try:
        return golden_cases(sor, n)
    finally:
        sor.dispose()


def evaluate_route(route: Callable, cases: list[GoldenCase], template: Path, name: str,
                   feature_lookup: Callable | None = None, judges: Mapping[str, Callable] | None = None,
                   ) -> TrajectoryEvaluation:
    """Run ``cases`` through the executor with ``route`` on a fresh copy of ``template``; score
    them with the code scorers and ``judges`` (the optional LLM judge)."""
    from agentops_pipelines.agent.actions import Actions
    from agentops_pipelines.agent.scorers import evaluate_trajectories, runner
    from agentops_pipelines.agent.trajectory import Executor

    with _fresh_copy(template, name) as sor:
        return evaluate_trajectories(cases, runner(Executor(Actions(sor), route, feature_lookup)), judges=judges)


def evaluate_decided(decided: Mapping[str, Decided], features: Mapping[str, Mapping[str, Any]],
                     cases: list[GoldenCase], template: Path, name: str,
                     judges: Mapping[str, Callable] | None = None) -> TrajectoryEvaluation:
    """:func:`evaluate_route` with each case's routing decided beforehand, by case id (by the
    model in its sandbox, on ``features``: the features the executor then shows for the case).
    The decide step replays the decision and reports the model's own milliseconds."""
    from agentops_pipelines.agent.actions import Actions
    from agentops_pipelines.agent.scorers import evaluate_trajectories
    from agentops_pipelines.agent.trajectory import Executor

    with _fresh_copy(template, name) as sor:
        actions = Actions(sor)

        def run(case: GoldenCase):
            decision = decided[case.case_id]
            trajectory = Executor(actions, _replay(decision)).run(
                case.request_id, case.text, case.customer_id, features=features[case.case_id])
            for step in trajectory.steps:
                if step.name == "decide":
                    step.latency_ms = decision.ms
                    trajectory.latency_ms += decision.ms
            return trajectory

        return evaluate_trajectories(cases, run, judges=judges)


class RouteError(RuntimeError):
    """The model's router raised (in its sandbox); the message is its error."""


def _replay(decision: Decided) -> Callable:
    def route(text: str, features: Mapping[str, Any]) -> tuple:
        if decision.error is not None:
            raise RouteError(decision.error)
        return (decision.tool, decision.confidence, *([decision.usage] if decision.usage else []))

    return route


@contextmanager
def _fresh_copy(template: Path, name: str):
    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    copy = template.parent / f"{name}.db"
    shutil.copy(template, copy)
    sor = SystemOfRecord(f"sqlite:///{copy}")
    try:
        yield sor
    finally:
        sor.dispose()


def applicable(router: Any, cases: list[GoldenCase]) -> str | None:
    """Why the golden cases cannot judge this router (None when they can): a router trained on
    another label set (Banking77's categories, say) knows none of the support desk's tools."""
    known = getattr(router, "classes", None) or getattr(router, "tools", None)
    return applicable_labels(known, [c.expected["tool"] for c in cases])


def applicable_labels(known: Sequence[Any] | None, expected_tools: Sequence[str]) -> str | None:
    """:func:`applicable` on the router's labels (None or empty: it does not say, so it may)."""
    if not known:
        return None
    missing = sorted(set(expected_tools) - {str(t) for t in known})
    if missing:  # another agent's label set, even one sharing a name (BANKING77 has request_refund)
        return (f"the router does not know the golden cases' tools {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} ({len(known)} labels of its own)")
    return None


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    comparison: pd.DataFrame | None = None  # scorer, minimum, candidate, champion, delta
    test: dict | None = None  # McNemar on whole cases


def verdict(candidate: TrajectoryEvaluation, champion: TrajectoryEvaluation | None,
            minimums: Mapping[str, float], alpha: float = 0.05) -> Verdict:
    import pandas as pd

    from agentops_pipelines.evaluation import mcnemar

    cand = candidate.per_scorer.set_index("scorer")["mean"]
    champ = champion.per_scorer.set_index("scorer")["mean"] if champion is not None else None
    rows, reasons = [], []
    for scorer, mean in cand.items():
        minimum = minimums.get(scorer)
        row = {"scorer": scorer, "minimum": minimum, "candidate": round(float(mean), 4)}
        if champ is not None and scorer in champ:
            row |= {"champion": round(float(champ[scorer]), 4), "delta": round(float(mean - champ[scorer]), 4)}
        rows.append(row)
        if minimum is not None and mean < minimum:
            reasons.append(f"{scorer} {mean:.4f} < minimum {minimum:.4f}")
    test = None
    if champion is not None:
        ok_c, ok_h = case_passed(candidate), case_passed(champion)
        test = mcnemar(ok_c, ok_h)
        if test["p_value"] < alpha and test["only_champion_correct"] > test["only_candidate_correct"]:
            reasons.append(f"significantly worse than the champion on whole cases (McNemar p={test['p_value']:.4g}: "
                           f"{test['only_champion_correct']} cases only the champion got right, "
                           f"{test['only_candidate_correct']} only the candidate)")
    return Verdict(not reasons, reasons, pd.DataFrame(rows), test)


def case_passed(ev: TrajectoryEvaluation) -> list[bool]:
    """Per case: every scorer passed (the case's ``failed`` column is empty)."""
    return [not f for f in ev.cases["failed"].fillna("").tolist()]


def failures(ev: TrajectoryEvaluation) -> pd.DataFrame:
    """Per scenario: cases, how many failed, the scorers that failed most, one failing case."""
    import pandas as pd

    rows = []
    for category, group in ev.cases.groupby("category", sort=True):
        bad = group[group["failed"].fillna("") != ""]
        counts: dict[str, int] = {}
        for f in bad["failed"]:
            for name in f.split(", "):
                counts[name] = counts.get(name, 0) + 1
        example = bad.iloc[0] if len(bad) else None
        rows.append({"category": category, "cases": len(group), "failed": len(bad),
                     "failing_scorers": ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
                     "example": "" if example is None else
                     f"{example['case_id']}: chose {example['tool']} (expected {example['expected_tool']}), "
                     f"outcome {example['outcome']} (expected {example['expected_outcome']})"})
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".3f") if len(df) else "(none)"


def render_html(title: str, result: Verdict, candidate: TrajectoryEvaluation,
                champion: TrajectoryEvaluation | None) -> str:
    """A self-contained page: verdict, per scorer (with the champion), per tool, per step, failures."""
    import html

    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, na_rep="–")

    status = "passed" if result.passed else "failed"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons) or "<li>none</li>"
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>Trajectory gate: <b>{status}</b></p><ul>{reasons}</ul>",
             f"<h2>Per scorer ({len(candidate.cases)} golden cases)</h2>", table(result.comparison),
             "<h2>Per expected tool (candidate)</h2>", table(candidate.per_tool),
             "<h2>Per step: latency and failures (candidate)</h2>", table(candidate.per_step),
             "<h2>Failures by scenario (candidate)</h2>", table(failures(candidate))]
    if champion is not None:
        parts += ["<h2>Per expected tool (champion)</h2>", table(champion.per_tool)]
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(parts)}</body></html>"
