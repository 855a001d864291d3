"""Features: the customer feature tables in Feast, and the point-in-time training set.

Only where they mean something: an agent that declares no customer features
(``feature_columns == ()``), or a day whose requests name no customers (a plain file), gets no
simulated customer profile and no feature join; its training set is the validated requests.
"""

import hashlib
from datetime import date, datetime, timedelta

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.partitions import daily
from agentops_pipelines.resources.feast import FeastResource
from agentops_pipelines.resources.lake import LakeResource


class TrainingSetConfig(dg.Config):
    days: int = Field(default=7, ge=1, le=366, description="how many validated days, newest first")
    end_date: str = Field(default="", description="last day to include (YYYY-MM-DD); default: the newest validated")
    holdout_share: float = Field(default=0.2, gt=0.0, lt=1.0, description="share held out for evaluation")


def activity_features(requests, escalation_tool: str | None, day: date):
    """Per-customer activity over the trailing windows ending with ``day``."""
    import pandas as pd

    ts = pd.to_datetime(requests["timestamp"], utc=True)
    end = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    last7 = requests[ts >= end - pd.Timedelta(days=7)]
    out = pd.DataFrame({"requests_7d": last7.groupby("customer_id").size()})
    esc = requests[requests["tool"] == escalation_tool] if escalation_tool else requests.iloc[:0]
    out["escalations_30d"] = esc.groupby("customer_id").size()
    out = out.fillna(0).astype("int64").reset_index()
    return out


def no_features_reason(agent: Agent, dataset_meta: dict) -> str:
    """Why a day gets no customer features ("" when it does)."""
    if not agent.feature_columns:
        return f"agent {agent.name} declares no customer features"
    if dataset_meta.get("has_customers") is False:
        return "the day's requests name no customers (the file has no customer-id column)"
    return ""


def neutral_feature(column: str) -> object:
    """The value of a feature nobody knows (as the served model fills it)."""
    return "unknown" if column == "plan_tier" else 0


def split_of(request_id: str, holdout_share: float) -> str:
    """Stable split by request id: the same request is held out in every run."""
    h = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "little") / 2**32
    return "holdout" if h < holdout_share else "train"


def build_feature_assets(agent: Agent, dataset: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    dataset_table = f"{agent.name}/dataset"

    @dg.asset(
        key_prefix=[agent.name], name="customer_features", group_name=agent.name,
        partitions_def=daily, deps=[dataset],
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        kinds={"feast", "parquet"}, code_version=source_version(__name__),
        description="Customer profile (the CRM's view at the start of the day) and recent activity "
                    "(from validated requests) as Feast feature views, materialized online.",
    )
    def customer_features(context: dg.AssetExecutionContext, lake: LakeResource, feast: FeastResource) -> dg.MaterializeResult:
        import pandas as pd

        from agentops_pipelines.data.generator import customer_snapshot

        day = date.fromisoformat(context.partition_key)
        run_id = lake.current_run_id(dataset_table, context.partition_key)
        if run_id is None:
            raise dg.Failure(f"{dataset_table}/{context.partition_key} has no validated version: "
                             "its gates failed or it was never materialized")
        meta = lake.meta(dataset_table, context.partition_key, run_id)
        skip = no_features_reason(agent, meta)
        if skip:
            context.log.info("no customer features for %s/%s: %s", agent.name, context.partition_key, skip)
            return dg.MaterializeResult(metadata={"customers": 0, "skipped": skip})
        profile = customer_snapshot(day, seed=int(meta.get("seed", 7)), drift=float(meta.get("drift", 0.0)))
        window = [d for d in lake.partitions(dataset_table)
                  if day - timedelta(days=29) <= date.fromisoformat(d) <= day]
        history = pd.concat([lake.read(dataset_table, d) for d in window], ignore_index=True)
        activity = activity_features(history, agent.escalation_tool, day)
        feast = feast.for_agent(agent.name)  # this agent's project: other agents' values never mix
        written = feast.write_partition(day, profile, activity)
        feast.apply()
        start = datetime(day.year, day.month, day.day)
        feast.materialize(start - timedelta(days=1), start + timedelta(days=1))
        return dg.MaterializeResult(metadata={
            "customers": len(profile),
            "active_customers": len(activity),
            "online_store": feast.online_store.split(",")[0] if feast.online_store != "sqlite" else "sqlite",
            "feast_project": feast.project,
            "files": dg.MetadataValue.json({k: str(v) for k, v in written.items()}),
            "profile_preview": dg.MetadataValue.md(profile.head(5).to_markdown(index=False)),
        })

    @dg.asset(
        key_prefix=[agent.name], name="training_set", group_name=agent.name,
        deps=[dataset, customer_features], kinds={"feast", "parquet"}, code_version=source_version(__name__),
        description="Validated requests joined point-in-time with customer features; a stable "
                    "share held out for evaluation.",
    )
    def training_set(context: dg.AssetExecutionContext, config: TrainingSetConfig,
                     lake: LakeResource, feast: FeastResource) -> dg.MaterializeResult:
        import pandas as pd

        days = lake.partitions(dataset_table)
        if config.end_date:
            days = [d for d in days if d <= config.end_date]
        days = days[-config.days:]
        if not days:
            raise dg.Failure(f"no validated partition of {dataset_table}: materialize the dataset "
                             "and let its gates pass first")
        from agentops_pipelines.gates import has_customers

        requests = pd.concat([lake.read(dataset_table, d) for d in days], ignore_index=True)
        if agent.feature_columns and has_customers(requests):
            entity = requests.rename(columns={"timestamp": "event_timestamp"})
            entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
            joined = feast.for_agent(agent.name).historical_features(entity).rename(columns={"event_timestamp": "timestamp"})
        else:  # nothing to join: the neutral value for any feature a Python agent still reads
            joined = requests.assign(**{c: neutral_feature(c) for c in agent.feature_columns})
        joined["split"] = [split_of(r, config.holdout_share) for r in joined["request_id"].astype(str)]
        path = lake.write(f"{agent.name}/training_set", joined, context.run.run_id)
        counts = joined["split"].value_counts()
        return dg.MaterializeResult(metadata={
            "rows": len(joined),
            "train_rows": int(counts.get("train", 0)),
            "holdout_rows": int(counts.get("holdout", 0)),
            "partitions": dg.MetadataValue.json(days),
            "labels": int(joined["tool"].nunique()),
            "path": dg.MetadataValue.path(str(path)),
            "version": context.run.run_id,
            "dagster/row_count": len(joined),
        })

    return [customer_features, training_set]
