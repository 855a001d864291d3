"""``drift_report``: production traffic of a day against the serving version's training data."""

from datetime import date

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.partitions import daily_to_date
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource


class DriftConfig(dg.Config):
    environment: str = Field(default="prod", description="whose traffic: dev, staging or prod")
    min_rows: int = Field(default=200, ge=1, description="fewer logged requests than this: no verdict")
    report_sample: int = Field(default=5000, ge=1001, description="rows per side in Evidently's HTML report (>1000 keeps its large-reference tests)")


def drift_columns(agent: Agent) -> tuple[list[str], list[str]]:
    """Feature and text columns compared; ``tool`` is the distribution of chosen tools."""
    return [*agent.feature_columns, "tool"], ["text"]


def drift_by_column(result) -> dict[str, dict]:
    """Per column: test, score, threshold, strength (× threshold, ≥ 1 drifted), all rounded."""
    from agentops_pipelines.drift import STATTESTS
    from agentops_pipelines.plots import drift_ratio

    out = {}
    for name, col in result.columns.items():
        row = {"stattest": col.stattest, "kind": STATTESTS[col.stattest].kind,
               "score": float(f"{col.score:.4g}"), "threshold": col.threshold, "drifted": col.drifted}
        row["strength"] = round(drift_ratio(row), 2)
        out[name] = row
    return out


def drifted_markdown(by_column: dict[str, dict]) -> str:
    """Which columns drifted and by how much, strongest first; 'none' when none did."""
    drifted = sorted(((n, c) for n, c in by_column.items() if c["drifted"]), key=lambda x: -x[1]["strength"])
    if not drifted:
        return "No column drifted."
    sign = {"p_value": "<", "distance": "≥"}
    return "\n".join(f"- **{n}**: {c['stattest']} {'p=' if c['kind'] == 'p_value' else ''}{c['score']:g} "
                     f"{sign[c['kind']]} {c['threshold']:g} ({c['strength']:g}× the threshold)"
                     for n, c in drifted)


def drift_record(environment: str, rows: int, verdict: str, share: float | None = None,
                 serving_version: str | None = None, drifted_columns: list[str] | None = None) -> dict:
    """What ``drift_sensor`` acts on, stored in the lake: ``share`` is None when there is no
    verdict (too little traffic)."""
    return {"environment": environment, "rows": rows, "verdict": verdict, "drift_share": share,
            "serving_version": serving_version, "drifted_columns": list(drifted_columns or [])}


def predicted_tools(agent: Agent, version: str, requests):
    """The registered version's tool for each of ``requests`` (text and feature columns)."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{agent.name}/{version}").unwrap_python_model()
    columns = [c for c in ("text", *agent.feature_columns) if c in requests.columns]
    return model.predict(None, requests[columns])["tool"].to_numpy()


def build_drift_asset(agent: Agent, deployment: dg.AssetsDefinition, training_set: dg.AssetsDefinition,
                      inference_log_root: str) -> dg.AssetsDefinition:
    @dg.asset(
        key_prefix=[agent.name], name="drift_report", group_name=agent.name, partitions_def=daily_to_date,
        deps=[dg.AssetDep(deployment, partition_mapping=dg.SpecificPartitionsPartitionMapping(["prod"])),
              training_set],
        io_manager_key=LAKE_IO_MANAGER, kinds={"evidently", "mlflow"}, code_version=source_version(__name__),
        description="Evidently-equivalent drift of one day of production requests (inference log) "
                    "against the serving version's training data: per-feature scores, text "
                    "descriptors, chosen tools (against the version's own choices on its training "
                    "requests); the HTML report is in MLflow.",
    )
    def drift_report(context: dg.AssetExecutionContext, config: DriftConfig, lake: LakeResource,
                     mlflow_store: MlflowResource) -> dg.MaterializeResult:
        import tempfile
        from pathlib import Path

        from agentops_pipelines import plots
        from agentops_pipelines.drift import (
            ReferenceProfile,
            build_profile,
            evidently_report,
            score_drift,
        )
        from agentops_pipelines.serving.inference_log import read_inference_log

        day = date.fromisoformat(context.partition_key)
        folder = Path(inference_log_root) / agent.name / config.environment
        traffic = read_inference_log(folder, day, day)
        if "status" in traffic:
            traffic = traffic[traffic["status"] == 200]
        if len(traffic) < config.min_rows:
            record = drift_record(config.environment, len(traffic), "insufficient traffic")
            return dg.MaterializeResult(value=record, metadata={
                "rows": len(traffic), "environment": config.environment, "verdict": "insufficient traffic",
                "drift_share": dg.MetadataValue.float(float("nan")), "dataset_drift": False})
        version = str(traffic["model_version"].mode().iloc[0])
        client = mlflow_store.configure()
        mv = client.get_model_version(agent.name, version)
        run = client.get_run(mv.run_id)
        reference_version = run.data.tags.get("agentops.training_set_version")
        reference = lake.read(f"{agent.name}/training_set", run_id=reference_version)
        reference = reference[reference["split"] == "train"]
        features, text = drift_columns(agent)
        if "tool" in features:
            # Prediction drift: production's tools are the model's choices, so the reference is
            # the same model's choices on its training requests, not their labels.
            reference = reference.assign(tool=predicted_tools(agent, version, reference))
        features = [c for c in features if c in traffic.columns and c in reference.columns]

        profile_table = f"{agent.name}/drift_profile"
        profile_path = Path(lake.root) / profile_table / f"{reference_version}-{mv.run_id}.json"
        if profile_path.exists():
            profile = ReferenceProfile.load(profile_path)
        else:  # once per training set, then every day reuses it
            profile = build_profile(reference, features, text_columns=text)
            profile_path.parent.mkdir(parents=True, exist_ok=True)
            profile.save(profile_path)
        result = score_drift(profile, traffic, columns=[*features, *text])

        experiment_id = run.info.experiment_id
        by_column = drift_by_column(result)
        figure = plots.drift_strength(by_column)
        with tempfile.TemporaryDirectory() as tmp:
            html = Path(tmp) / f"drift-{config.environment}-{day}.html"
            evidently_report(reference, traffic, [*features, *text], html, sample_size=config.report_sample,
                             profile=profile)
            client.log_artifact(mv.run_id, str(html), "drift")
            png = Path(tmp) / f"drift-{config.environment}-{day}.png"
            png.write_bytes(figure)
            client.log_artifact(mv.run_id, str(png), "drift")
        step = day.toordinal()
        client.log_metric(mv.run_id, f"drift_share_{config.environment}", result.share_drifted, step=step)
        url = mlflow_store.run_url(experiment_id, mv.run_id)
        verdict = "drift" if result.dataset_drift else "no drift"
        record = drift_record(config.environment, len(traffic), verdict, round(result.share_drifted, 4), version,
                              result.drifted_columns)
        return dg.MaterializeResult(value=record, metadata={
            "rows": len(traffic),
            "environment": config.environment,
            "serving_version": version,
            "reference_rows": len(reference),
            "drift_share": round(result.share_drifted, 4),
            "dataset_drift": result.dataset_drift,
            "drifted_columns": dg.MetadataValue.json(result.drifted_columns),
            "drifted": dg.MetadataValue.md(drifted_markdown(by_column)),
            "drift_by_column": dg.MetadataValue.json(by_column),
            "plot": dg.MetadataValue.md(plots.markdown_images({f"Drift per column ({config.environment}, {day})": figure})),
            "columns": dg.MetadataValue.md(result.to_markdown()),
            "tools": dg.MetadataValue.json({str(k): int(v) for k, v in traffic["tool"].value_counts().items()}),
            "report": dg.MetadataValue.url(f"{url}/artifacts/drift/{html.name}"),
            "verdict": verdict,
        })

    return drift_report
