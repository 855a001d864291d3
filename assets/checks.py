"""Blocking gates: the dataset's data checks, and the gates before registration.

The dataset's gates run inside the ``dataset`` step (``check_specs`` on the asset), so a day whose
gates fail is never recorded as a materialization: the step fails after staging, the partition
shows as failed in the UI, and the failing gates (with the rows and the lake's ``.rejected.json``)
are the check results of that partition, one click away.

The evaluations (``evaluation_report``, ``trajectory_evaluation``) judge their candidate and hand
the verdict on as a *gate record* (:func:`gate_record`, stored in the lake by the IO manager); the
blocking check on each (:func:`build_gate_check`) loads that record and reports it, and registration
waits on both.
"""

from collections.abc import Iterator, Mapping, Sequence
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


def gate_record(candidate_run_id: str, passed: bool, reasons: Sequence[str], champion_version: str,
                numbers: Mapping[str, float], tables: Mapping[str, str]) -> dict:
    """What an evaluation hands to its gate and to registration: the candidate, the verdict and its
    reasons, the champion it was compared with (``"none"``), its numbers (name → value) and its
    comparison tables (name → markdown)."""
    return {"candidate_run_id": candidate_run_id, "gate_passed": bool(passed), "gate_reasons": list(reasons),
            "champion_version": champion_version, "numbers": dict(numbers), "tables": dict(tables)}


def gate_check_result(record: Mapping | None, missing: str) -> dg.AssetCheckResult:
    """The blocking check's result from a gate record: passed as the evaluation judged, with the
    candidate, the champion, the numbers, the reasons and the tables; failed when there is no
    record (``missing`` says what is missing)."""
    if not record:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   metadata={"problem": missing})
    reasons = record["gate_reasons"]
    metadata = {"candidate_run_id": str(record["candidate_run_id"]),
                "champion_version": str(record["champion_version"]),
                **record["numbers"],
                "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "none"),
                **{name: dg.MetadataValue.md(table) for name, table in record["tables"].items()}}
    return dg.AssetCheckResult(passed=record["gate_passed"], severity=dg.AssetCheckSeverity.ERROR,
                               metadata=metadata)


def build_gate_check(asset: dg.AssetsDefinition, name: str, description: str, missing: str
                     ) -> dg.AssetChecksDefinition:
    """A blocking check on ``asset`` that reports the gate record the asset stored in this run (or
    its current one, when the check runs alone): a failed gate stops registration."""
    @dg.asset_check(asset=asset, name=name, blocking=True, description=description)
    def gate(record: dict | None) -> dg.AssetCheckResult:
        return gate_check_result(record, missing)

    return gate


def build_evaluation_gate(evaluation: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    return build_gate_check(
        evaluation, "evaluation_gate", missing="no evaluation report yet",
        description="The candidate meets the minimums (run config, else the agent's gate_minimums: "
                    "held-out accuracy, golden accuracy, out-of-scope recall, ...) and is not "
                    "significantly worse than the champion (McNemar, on the golden set when there is "
                    "one). Registration waits on it.")
