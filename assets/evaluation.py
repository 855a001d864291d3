"""``evaluation_report``: the candidate against the champion on the same held-out cases."""

import json
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.vocabulary import Alias


class EvaluationConfig(dg.Config):
    candidate_run_id: str = Field(default="", description="MLflow run to evaluate; default: the latest trained_agent")
    min_accuracy: float = Field(default=0.80, ge=0.0, le=1.0)
    min_macro_f1: float = Field(default=0.0, ge=0.0, le=1.0)
    min_escalation_recall: float = Field(default=0.0, ge=0.0, le=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="McNemar significance level")
    latency_samples: int = Field(default=200, ge=1, le=10_000)
    evidently_report: bool = Field(default=True, description="also log Evidently's classification report")


def latest_metadata(context, key: dg.AssetKey) -> dict:
    """Metadata of ``key``'s materialization in this run if there is one, else its latest.

    Reading this run's first matters when runs overlap: two re-evaluations running at once must
    each register the model they evaluated, not whichever finished last.
    """
    instance = context.instance
    op_context = getattr(context, "op_execution_context", context)
    run_id = op_context.run_id
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.dagster_event.event_specific_data.materialization
        if materialization.asset_key == key:
            return {k: v.value for k, v in materialization.metadata.items()}
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def champion_version(client, name: str):
    import mlflow

    try:
        return client.get_model_version_by_alias(name, Alias.CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def _evidently_html(holdout, predicted, path: Path) -> None:
    import pandas as pd
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    df = pd.DataFrame({"tool": holdout["tool"].astype(str).to_numpy(), "prediction": predicted.astype(str).to_numpy()})
    definition = DataDefinition(classification=[MulticlassClassification(target="tool", prediction_labels="prediction")],
                                categorical_columns=["tool", "prediction"])
    Report([ClassificationPreset()]).run(current_data=Dataset.from_pandas(df, data_definition=definition),
                                         reference_data=None).save_html(str(path))


def _comparison_html(versus: dict) -> str:
    import html

    def cell(v, sign=False):
        return "–" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")

    rows = "".join(f"<tr><th>{html.escape(m)}</th><td>{cell(r['candidate'])}</td><td>{cell(r['champion'])}</td>"
                   f"<td>{cell(r['delta'], True)}</td></tr>" for m, r in versus.items())
    return f"<table><tr><th>metric</th><th>candidate</th><th>champion</th><th>delta</th></tr>{rows}</table>"


def build_evaluation_asset(agent: Agent, trained: dg.AssetsDefinition, training_set: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key_prefix=[agent.name], name="evaluation_report", group_name=agent.name,
        deps=[trained, training_set], kinds={"mlflow", "html"}, code_version="1",
        description="Tool-selection accuracy, macro-F1, escalation precision/recall, per-tool table, "
                    "latency and McNemar's test against the champion, with the champion's numbers and "
                    "the deltas; plots (per-tool F1, confusion matrix, calibration, latency) in the "
                    "`plots` metadata and in MLflow beside the HTML report.",
    )
    def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig,
                          lake: LakeResource, mlflow_store: MlflowResource) -> dg.MaterializeResult:
        import mlflow

        from agentops_pipelines import plots
        from agentops_pipelines.evaluation import (
            classification_metrics,
            comparison,
            comparison_markdown,
            gate,
            latency_ms,
            mcnemar,
            per_tool_comparison,
            render_html,
        )

        client = mlflow_store.configure()
        run_id = config.candidate_run_id or latest_metadata(context, trained.key).get("mlflow_run_id")
        if not run_id:
            raise dg.Failure("no candidate: materialize trained_agent or set candidate_run_id")
        data = lake.read(f"{agent.name}/training_set")
        holdout = data[data["split"] == "holdout"].reset_index(drop=True)
        if holdout.empty:
            raise dg.Failure("the training set has no held-out rows")

        candidate = mlflow.pyfunc.load_model(f"runs:/{run_id}/agent").unwrap_python_model()
        cand_out = candidate.predict(None, holdout)
        cand_pred = cand_out["tool"]
        cand = classification_metrics(holdout["tool"], cand_pred, agent.escalation_tool)
        lat = latency_ms(lambda row: candidate.predict(None, row), holdout, config.latency_samples)

        champ_mv = champion_version(client, agent.name)
        champ, test = None, None
        if champ_mv is not None and champ_mv.run_id != run_id:
            champion = mlflow.pyfunc.load_model(f"models:/{agent.name}/{champ_mv.version}").unwrap_python_model()
            champ_pred = champion.predict(None, holdout)["tool"]
            champ = classification_metrics(holdout["tool"], champ_pred, agent.escalation_tool)
            test = mcnemar(cand_pred.to_numpy() == holdout["tool"].to_numpy(),
                           champ_pred.to_numpy() == holdout["tool"].to_numpy())
        minimums = {"accuracy": config.min_accuracy, "macro_f1": config.min_macro_f1}
        if agent.escalation_tool and (holdout["tool"] == agent.escalation_tool).any():
            minimums["escalation_recall"] = config.min_escalation_recall
        verdict = gate(cand, champ, test, minimums, config.alpha)
        versus = comparison(cand, champ)
        per_tool = per_tool_comparison(cand["per_tool"], champ["per_tool"] if champ else None)

        summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in cand.items() if isinstance(v, float | int)}
        summary |= {"latency_p50_ms": round(lat["p50"], 2), "latency_p99_ms": round(lat["p99"], 2),
                    "candidate_run_id": run_id}
        if champ is not None:
            summary |= {"champion_version": champ_mv.version,
                        **{f"champion_{m}": r["champion"] for m, r in versus.items()},
                        **{f"delta_{m}": r["delta"] for m, r in versus.items()},
                        "mcnemar_p_value": round(test["p_value"], 4), "only_candidate_correct": test["only_candidate_correct"],
                        "only_champion_correct": test["only_champion_correct"]}
        labels = list(cand["per_tool"]["tool"])
        figures = {  # title → PNG; file names below
            "Per-tool F1": plots.per_tool_f1(cand["per_tool"], champ["per_tool"] if champ else None),
            "Confusion matrix": plots.confusion_matrix(holdout["tool"].astype(str), cand_pred.astype(str), labels),
            "Confidence calibration": plots.calibration_curve(cand_out["confidence"], cand_pred.to_numpy() == holdout["tool"].to_numpy()),
            "Latency": plots.latency_histogram(lat["samples"], lat["p50"], lat["p99"]),
        }
        files = dict(zip(figures, ("per_tool_f1.png", "confusion_matrix.png", "calibration.png", "latency.png"), strict=True))
        html = render_html(f"{agent.name}: evaluation of run {run_id}", summary, per_tool, verdict,
                           extra_sections={"Candidate vs champion": _comparison_html(versus),
                                           "Plots": plots.html_images(figures)})
        # Everything under evaluation/ is written here, before the asset finishes: the registry
        # records a digest of the whole folder and approvals bind to it.
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "evaluation"
            folder.mkdir()
            (folder / "report.html").write_text(html)
            (folder / "summary.json").write_text(json.dumps(summary | {"gate_passed": verdict.passed, "gate_reasons": verdict.reasons}, default=str))
            for title, png in figures.items():
                (folder / files[title]).write_bytes(png)
            if config.evidently_report:
                _evidently_html(holdout, cand_pred, folder / "classification_evidently.html")
            client.log_artifacts(run_id, str(folder), "evaluation")
        for key in ("accuracy", "macro_f1", "escalation_precision", "escalation_recall"):
            if key in cand:
                client.log_metric(run_id, f"eval_{key}", cand[key])
        client.log_metric(run_id, "eval_latency_p99_ms", lat["p99"])
        client.set_tag(run_id, "agentops.evaluation_gate", "passed" if verdict.passed else "failed")
        experiment_id = client.get_run(run_id).info.experiment_id
        url = mlflow_store.run_url(experiment_id, run_id)
        metadata = {
            "candidate_run_id": run_id,
            **{m: r["candidate"] for m, r in versus.items()},
            "latency_p50_ms": round(lat["p50"], 2),
            "latency_p99_ms": round(lat["p99"], 2),
            "holdout_rows": len(holdout),
            "champion_version": str(champ_mv.version) if champ is not None else "none",
        }
        if agent.escalation_tool:  # no escalation tool, no escalation metrics (issue 11)
            metadata.setdefault("escalation_precision", 0.0)
            metadata.setdefault("escalation_recall", 0.0)
        if champ is not None:
            metadata |= {f"champion_{m}": r["champion"] for m, r in versus.items()}
            metadata |= {f"delta_{m}": r["delta"] for m, r in versus.items()}
        metadata |= {
            "mcnemar_p_value": round(test["p_value"], 4) if test else 1.0,
            "gate_passed": verdict.passed,
            "gate_reasons": dg.MetadataValue.json(verdict.reasons),
            "candidate_vs_champion": dg.MetadataValue.md(comparison_markdown(versus)),
            "per_tool": dg.MetadataValue.md(per_tool.to_markdown(index=False, floatfmt=".3f")),
            "plots": dg.MetadataValue.md(plots.markdown_images(figures)),
            "report": dg.MetadataValue.url(f"{url}/artifacts/evaluation/report.html"),
            "mlflow_run": dg.MetadataValue.url(url),
        }
        return dg.MaterializeResult(metadata=metadata)

    return evaluation_report
