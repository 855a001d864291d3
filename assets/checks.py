"""Blocking gates: the dataset's data checks and the evaluation gate before registration.

The dataset's gates run inside the ``dataset`` step (``check_specs`` on the asset), so a day whose
gates fail is never recorded as a materialization: the step fails after staging, the partition
shows as failed in the UI, and the failing gates (with the rows and the lake's ``.rejected.json``)
are the check results of that partition, one click away.
"""

from collections.abc import Iterator, Mapping
from datetime import date
from typing import TYPE_CHECKING

import dagster as dg

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.partitions import daily

if TYPE_CHECKING:
    from agentops_pipelines.gates import GateOutcome

GATE_DESCRIPTIONS = {
    "schema": "The required columns are present, text is a string, the day is not empty.",
    "no_nulls": "No required column has a null.",
    "known_labels": "Every label is one of the agent's known tools.",
    "timestamps_in_partition": "Every timestamp falls inside the partition's day (UTC).",
    "text_length": "Every request text is within the length bounds (configured, or from the validated data).",
    "duplicates": "Request ids are unique; repeated (customer, text) pairs -- or repeated texts, in data "
                  "without customers -- stay under the configured share.",
}


def dataset_gate_specs(agent: Agent) -> list[dg.AssetCheckSpec]:
    """One blocking, partitioned check per gate on ``<agent>/dataset``."""
    key = dg.AssetKey([agent.name, "dataset"])
    return [dg.AssetCheckSpec(name, asset=key, blocking=True, partitions_def=daily,
                              description=f"Great Expectations gate: {desc}")
            for name, desc in GATE_DESCRIPTIONS.items()]


def judge_staged(agent: Agent, lake, partition: str, run_id: str, df, meta: Mapping, source=None
                 ) -> tuple[dict[str, "GateOutcome"], str | None]:
    """Run the gates on a staged version; commit it if they all pass, else record the rejection.

    ``source`` (a :class:`~agentops_pipelines.data.sources.SourceInfo`) lets the problems name the
    file, the user's columns and line numbers. Returns the outcomes and the path of the
    ``.rejected.json`` (None when committed).
    """
    from agentops_pipelines.gates import GateLimits, run_gates

    table = f"{agent.name}/dataset"
    outcomes = run_gates(df, meta.get("known_labels") or list(agent.tools), date.fromisoformat(partition),
                         GateLimits(**meta.get("limits", {})), source=source)
    if all(o.passed for o in outcomes.values()):
        lake.commit(table, partition, run_id)
        return outcomes, None
    rejected = lake.reject(table, partition, run_id, {
        name: {"problems": o.problems, "failing_rows": o.failing_rows}
        for name, o in outcomes.items() if not o.passed})
    return outcomes, str(rejected)


def gate_results(outcomes: Mapping[str, "GateOutcome"], rows: int, version: str,
                 rejected: str | None) -> Iterator[dg.AssetCheckResult]:
    for name, outcome in outcomes.items():
        metadata = {"rows_checked": rows, "version": version}
        if not outcome.passed:
            metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in outcome.problems))
            if outcome.failing_rows:
                import pandas as pd
                metadata["failing_rows"] = dg.MetadataValue.md(
                    pd.DataFrame(outcome.failing_rows[:20]).to_markdown(index=False))
            if rejected:
                metadata["rejected_file"] = dg.MetadataValue.path(rejected)
        yield dg.AssetCheckResult(check_name=name, passed=outcome.passed, metadata=metadata,
                                  severity=dg.AssetCheckSeverity.ERROR)


def build_evaluation_gate(agent: Agent, evaluation: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=evaluation, name="evaluation_gate", blocking=True,
                    description="The candidate meets the minimums (run config, else the agent's "
                                "gate_minimums: held-out accuracy, golden accuracy, out-of-scope recall, ...) "
                                "and is not significantly worse than the champion (McNemar, on the golden "
                                "set when there is one). Registration waits on it.")
    def evaluation_gate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from agentops_pipelines.assets.evaluation import latest_metadata

        md = latest_metadata(context, evaluation.key)
        if not md:
            return dg.AssetCheckResult(passed=False, metadata={"problem": "no evaluation report yet"})
        reasons = md.get("gate_reasons") or []
        numbers = {k: v for k, v in md.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)
                   and k.split("_")[0] in ("accuracy", "macro", "escalation", "latency", "champion", "delta",
                                           "mcnemar", "golden", "oos", "in")}
        metadata = {"candidate_run_id": str(md.get("candidate_run_id")),
                    "champion_version": str(md.get("champion_version", "none")),
                    **numbers,
                    "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "none")}
        if md.get("candidate_vs_champion"):
            metadata["candidate_vs_champion"] = dg.MetadataValue.md(str(md["candidate_vs_champion"]))
        return dg.AssetCheckResult(passed=bool(md.get("gate_passed")), severity=dg.AssetCheckSeverity.ERROR,
                                   metadata=metadata)

    return evaluation_gate
