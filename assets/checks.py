"""Blocking gates: the dataset's data checks and the evaluation gate before registration."""

from datetime import date

import dagster as dg

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.partitions import daily
from agentops_pipelines.resources.lake import LakeResource

GATE_DESCRIPTIONS = {
    "schema": "The required columns are present, text is a string, the day is not empty.",
    "no_nulls": "No required column has a null.",
    "known_labels": "Every label is one of the agent's known tools.",
    "timestamps_in_partition": "Every timestamp falls inside the partition's day (UTC).",
    "text_length": "Every request text is within the configured length bounds.",
    "duplicates": "Request ids are unique; repeated (customer, text) pairs stay under the configured share.",
}


def build_dataset_checks(agent: Agent, dataset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    specs = [dg.AssetCheckSpec(name, asset=dataset.key, blocking=True, partitions_def=daily,
                               description=desc) for name, desc in GATE_DESCRIPTIONS.items()]

    @dg.multi_asset_check(specs=specs, name=f"{agent.name}_dataset_gates", description="Great Expectations gates")
    def dataset_gates(context: dg.AssetCheckExecutionContext, lake: LakeResource):
        from agentops_pipelines.gates import GateLimits, run_gates

        table = f"{agent.name}/dataset"
        partition = context.op_execution_context.partition_key
        run_id = context.op_execution_context.run.run_id
        if run_id not in lake.staged_run_ids(table, partition):  # checks run alone: judge the current version
            run_id = lake.current_run_id(table, partition)
        if run_id is None:
            for name in GATE_DESCRIPTIONS:
                yield dg.AssetCheckResult(check_name=name, passed=False,
                                          metadata={"problem": f"no version of {table}/{partition} to check"})
            return
        df = lake.read(table, partition, run_id)
        meta = lake.meta(table, partition, run_id)
        outcomes = run_gates(df, meta.get("known_labels") or list(agent.tools), date.fromisoformat(partition),
                             GateLimits(**meta.get("limits", {})))
        if all(o.passed for o in outcomes.values()):
            lake.commit(table, partition, run_id)
        else:
            lake.reject(table, partition, run_id, {
                name: {"problems": o.problems, "failing_rows": o.failing_rows}
                for name, o in outcomes.items() if not o.passed})
            context.log.error("partition %s rejected: %s", partition, "; ".join(
                f"{n}: {', '.join(o.problems)}" for n, o in outcomes.items() if not o.passed))
        for name, outcome in outcomes.items():
            metadata = {"rows_checked": len(df), "version": run_id}
            if not outcome.passed:
                metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in outcome.problems))
                if outcome.failing_rows:
                    import pandas as pd
                    metadata["failing_rows"] = dg.MetadataValue.md(
                        pd.DataFrame(outcome.failing_rows[:20]).to_markdown(index=False))
            yield dg.AssetCheckResult(check_name=name, passed=outcome.passed, metadata=metadata,
                                      severity=dg.AssetCheckSeverity.ERROR)

    return dataset_gates


def build_evaluation_gate(agent: Agent, evaluation: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=evaluation, name="evaluation_gate", blocking=True,
                    description="The candidate meets the configured minimums and is not significantly "
                                "worse than the champion (McNemar). Registration waits on it.")
    def evaluation_gate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from agentops_pipelines.assets.evaluation import latest_metadata

        md = latest_metadata(context, evaluation.key)
        if not md:
            return dg.AssetCheckResult(passed=False, metadata={"problem": "no evaluation report yet"})
        reasons = md.get("gate_reasons") or []
        return dg.AssetCheckResult(
            passed=bool(md.get("gate_passed")),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"candidate_run_id": str(md.get("candidate_run_id")),
                      "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "none")},
        )

    return evaluation_gate
