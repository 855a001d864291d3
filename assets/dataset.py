"""``dataset``: one day of requests, staged until its gates pass.

The step's config defaults come from the agent (``Agent.dataset_defaults``, e.g. from its YAML
file), so a configured agent's data source, columns and limits are what the launchpad shows and
what a run uses unless it says otherwise.
"""

from datetime import date
from typing import Literal

import dagster as dg
from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.assets.checks import dataset_gate_specs, gate_results, judge_staged
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.partitions import DAILY_START, daily
from agentops_pipelines.resources.lake import LakeResource


class DatasetConfig(dg.Config):
    """Where a day of requests comes from, and the limits its gates enforce."""

    source: Literal["generator", "file"] = "generator"
    rows_per_day: int = Field(default=800, ge=1, le=1_000_000, description="generator only")
    seed: int = Field(default=7, description="generator only: same seed and day, same data")
    drift: float = Field(default=0.0, ge=0.0, le=1.0, description="generator only: 0 is a usual day")
    path: str = Field(default="", description="file source: CSV, Parquet or JSONL; may contain {date}")
    text_column: str = "text"
    label_column: str = Field(default="tool", description="file source: the column holding the tool")
    customer_id_column: str = Field(default="customer_id", description="file source: the customer ids; "
                                    "'' or absent: no customers (no features; duplicates on the text)")
    timestamp_column: str = Field(default="timestamp", description="file source: request times; "
                                  "'' or absent: the whole file is the day's snapshot")
    labels_file: str = Field(default="", description="known labels (JSON list or one per line); default: the agent's tools")
    min_text_length: int = Field(default=3, ge=0)
    max_text_length: int | None = Field(default=2000, ge=1, description="none: twice the longest text of "
                                        "the last validated day (no bound on the first)")
    max_duplicate_share: float = Field(default=0.05, ge=0.0, le=1.0)


def config_class(agent: Agent) -> type[DatasetConfig]:
    """DatasetConfig with the agent's defaults; a default naming no field is a load-time error."""
    if not agent.dataset_defaults:
        return DatasetConfig
    fields = {}
    for key, value in agent.dataset_defaults.items():
        if key not in DatasetConfig.model_fields:
            raise ValueError(f"agent {agent.name}: dataset default {key!r} is not a field of the dataset "
                             f"step ({', '.join(DatasetConfig.model_fields)})")
        info = DatasetConfig.model_fields[key]  # its bounds (ge=, le=) kept, its default replaced
        fields[key] = (info.annotation, FieldInfo.merge_field_infos(info, default=value))
    name = "".join(part.title() for part in agent.name.split("_")) + "DatasetConfig"
    return create_model(name, __base__=DatasetConfig, **fields)


def table(agent: Agent, name: str) -> str:
    return f"{agent.name}/{name}"


def text_length_limit(config: DatasetConfig, lake: LakeResource, agent: Agent, partition: str) -> int | None:
    """The configured maximum, or (none configured) twice the longest text of the newest
    validated day before ``partition``: a request far longer than any seen is suspect, and no
    fixed number fits every agent's data."""
    if config.max_text_length is not None:
        return config.max_text_length
    earlier = [d for d in lake.partitions(table(agent, "dataset")) if d < partition]
    if not earlier:
        return None
    run_id = lake.current_run_id(table(agent, "dataset"), earlier[-1])
    longest = lake.meta(table(agent, "dataset"), earlier[-1], run_id).get("longest_text") if run_id else None
    return 2 * int(longest) if longest else None


def build_dataset_asset(agent: Agent) -> dg.AssetsDefinition:
    config_cls = config_class(agent)

    @dg.asset(
        key_prefix=[agent.name],
        name="dataset",
        group_name=agent.name,
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        check_specs=dataset_gate_specs(agent),
        kinds={"pandas", "parquet"},
        code_version=source_version(__name__),
        description=f"One day of customer requests with the tool that resolved each. Daily "
                    f"partitions (UTC) from {DAILY_START} to yesterday; a backfill runs one day "
                    "per run. Staged in the lake, then judged by its blocking Great Expectations "
                    "gates in the same step: a day whose gates fail is not materialized (the "
                    "partition shows as failed, the failing gates and the lake's .rejected.json "
                    "in its check results) and the last good version stays readable.",
        metadata={"partitions": f"daily (UTC), {DAILY_START} .. yesterday",
                  "backfill_policy": "one partition per run (BackfillPolicy.multi_run, max 1)",
                  "gates": ", ".join(s.name for s in dataset_gate_specs(agent))},
    )
    def dataset(context: dg.AssetExecutionContext, config: config_cls, lake: LakeResource):
        from agentops_pipelines.data.sources import load_labels, read_partition
        from agentops_pipelines.gates import failure_summary, has_customers

        partition = context.partition_key
        run_id = context.run.run_id
        day = date.fromisoformat(partition)
        df, source = read_partition(
            config.source, day, rows_per_day=config.rows_per_day, seed=config.seed, drift=config.drift,
            path=config.path, text_column=config.text_column, label_column=config.label_column,
            customer_id_column=config.customer_id_column, timestamp_column=config.timestamp_column)
        labels = load_labels(config.labels_file) if config.labels_file else list(agent.tools)
        lengths = df["text"].astype(str).str.len()
        meta = {"known_labels": labels, "source": config.source, "path": config.path,
                "seed": config.seed, "drift": config.drift, "has_customers": has_customers(df),
                "longest_text": int(lengths.max()) if len(lengths) else 0,
                "limits": {"min_text_length": config.min_text_length,
                           "max_text_length": text_length_limit(config, lake, agent, partition),
                           "max_duplicate_share": config.max_duplicate_share}}
        path = lake.stage(table(agent, "dataset"), partition, df, run_id, meta=meta)
        outcomes, rejected = judge_staged(agent, lake, partition, run_id, df, meta, source=source)
        checks = list(gate_results(outcomes, len(df), run_id, rejected))
        if rejected is not None:
            # Check results first (they are the partition's record of why), then fail the step:
            # no materialization, so the partition shows as failed, not as a new version.
            yield from checks
            failing = [name for name, o in outcomes.items() if not o.passed]
            summary = failure_summary(outcomes)
            context.log.error("partition %s rejected by its gates:\n%s", partition, summary)
            raise dg.Failure(
                description=f"{table(agent, 'dataset')} {partition} rejected by its gates "
                            f"({', '.join(failing)}); the last good version stays current. "
                            f"Why:\n{summary}\nEvery failing row: {rejected}",
                metadata={"failing_gates": dg.MetadataValue.md("\n".join(f"- {line}" for line in summary.splitlines())),
                          "rejected_file": dg.MetadataValue.path(rejected),
                          "staged_file": dg.MetadataValue.path(str(path)),
                          "rows": len(df)},
                allow_retries=False,
            )
        counts = df["tool"].astype(str).value_counts()
        yield dg.MaterializeResult(metadata={
            "rows": len(df),
            "source": config.source if config.source == "generator" else f"file: {config.path}",
            "drift": config.drift,
            "path": dg.MetadataValue.path(str(path)),
            "labels": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
            "preview": dg.MetadataValue.md(df.head(5).to_markdown(index=False)),
            "dagster/row_count": len(df),
        }, check_results=checks)

    return dataset
