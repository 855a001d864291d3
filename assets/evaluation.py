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


def build_evaluation_asset(agent: Agent, trained: dg.AssetsDefinition, training_set: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key_prefix=[agent.name], name="evaluation_report", group_name=agent.name,
        deps=[trained, training_set], kinds={"mlflow", "html"}, code_version="1",
        description="Tool-selection accuracy, macro-F1, escalation precision/recall, per-tool table, "
                    "latency and McNemar's test against the champion; the HTML report is in MLflow.",
    )
    def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig,
                          lake: LakeResource, mlflow_store: MlflowResource) -> dg.MaterializeResult:
        import mlflow

        from agentops_pipelines.evaluation import (
            classification_metrics,
            gate,
            latency_ms,
            mcnemar,
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
        cand_pred = candidate.predict(None, holdout)["tool"]
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

        summary = {k: v for k, v in cand.items() if isinstance(v, float | int)}
        summary |= {"latency_p50_ms": lat["p50"], "latency_p99_ms": lat["p99"], "candidate_run_id": run_id}
        if champ is not None:
            summary |= {"champion_version": champ_mv.version, "champion_accuracy": champ["accuracy"],
                        "mcnemar_p_value": test["p_value"], "only_candidate_correct": test["only_candidate_correct"],
                        "only_champion_correct": test["only_champion_correct"]}
        html = render_html(f"{agent.name}: evaluation of run {run_id}", summary, cand["per_tool"], verdict)
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.html"
            report.write_text(html)
            client.log_artifact(run_id, str(report), "evaluation")
            (Path(tmp) / "summary.json").write_text(json.dumps(summary | {"gate_passed": verdict.passed, "gate_reasons": verdict.reasons}, default=str))
            client.log_artifact(run_id, str(Path(tmp) / "summary.json"), "evaluation")
            if config.evidently_report:
                _evidently_html(holdout, cand_pred, Path(tmp) / "classification_evidently.html")
                client.log_artifact(run_id, str(Path(tmp) / "classification_evidently.html"), "evaluation")
        for key in ("accuracy", "macro_f1", "escalation_precision", "escalation_recall"):
            if key in cand:
                client.log_metric(run_id, f"eval_{key}", cand[key])
        client.log_metric(run_id, "eval_latency_p99_ms", lat["p99"])
        client.set_tag(run_id, "agentops.evaluation_gate", "passed" if verdict.passed else "failed")
        experiment_id = client.get_run(run_id).info.experiment_id
        url = mlflow_store.run_url(experiment_id, run_id)
        return dg.MaterializeResult(metadata={
            "candidate_run_id": run_id,
            "accuracy": cand["accuracy"],
            "macro_f1": cand["macro_f1"],
            "escalation_precision": cand.get("escalation_precision", 0.0),
            "escalation_recall": cand.get("escalation_recall", 0.0),
            "latency_p50_ms": lat["p50"],
            "latency_p99_ms": lat["p99"],
            "holdout_rows": len(holdout),
            "champion_version": str(champ_mv.version) if champ is not None else "none",
            "mcnemar_p_value": test["p_value"] if test else 1.0,
            "gate_passed": verdict.passed,
            "gate_reasons": dg.MetadataValue.json(verdict.reasons),
            "per_tool": dg.MetadataValue.md(cand["per_tool"].to_markdown(index=False, floatfmt=".3f")),
            "report": dg.MetadataValue.url(f"{url}/artifacts/evaluation/report.html"),
            "mlflow_run": dg.MetadataValue.url(url),
        })

    return evaluation_report
