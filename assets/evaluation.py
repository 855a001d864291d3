"""``evaluation_report``: the candidate against the champion on the same cases.

The cases are the training set's held-out split and, when the agent names one, its golden test set:
both are reported side by side, and the champion comparison (deltas, McNemar) uses the golden set
when there is one, so versions trained on different data are judged on the same requests.
"""

import json
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.assets.checks import gate_record
from agentops_pipelines.code_versions import source_version
from agentops_pipelines.resources.audit import AuditLog
from agentops_pipelines.resources.io_manager import LAKE_IO_MANAGER
from agentops_pipelines.resources.lake import LakeResource
from agentops_pipelines.resources.mlflow import MlflowResource
from agentops_pipelines.resources.sandbox import ModelSandbox
from agentops_pipelines.vocabulary import Environment


class EvaluationConfig(dg.Config):
    """Unset minimums come from the agent's ``gate_minimums``, else the built-in defaults
    (``min_accuracy`` 0.80, the others 0)."""

    candidate_run_id: str = Field(default="", description="MLflow run to evaluate; default: the latest trained_agent")
    min_accuracy: float | None = Field(default=None, ge=0.0, le=1.0, description="held-out accuracy (default 0.80)")
    min_macro_f1: float | None = Field(default=None, ge=0.0, le=1.0)
    min_escalation_recall: float | None = Field(default=None, ge=0.0, le=1.0)
    min_golden_accuracy: float | None = Field(default=None, ge=0.0, le=1.0, description="accuracy on the golden test set")
    min_oos_recall: float | None = Field(default=None, ge=0.0, le=1.0, description="share of out-of-scope requests abstained on")
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="McNemar significance level")
    latency_samples: int = Field(default=200, ge=1, le=10_000)
    evidently_report: bool = Field(default=True, description="also log Evidently's classification report")


def champion_version(client, name: str, audit: AuditLog):
    """The version of ``name`` serving in prod by the verified audit log, or None if none does.

    Not the ``champion`` alias: anyone who can write to the registry can move an alias, and a
    candidate compared with a weak version of someone's choosing would walk past McNemar's
    "significantly worse" gate. The alias stays a view the pipeline writes for people."""
    from agentops_pipelines.governance.eligibility import serving_now

    log = audit.store.verify()
    if not log.ok:
        raise dg.Failure(f"the audit log does not verify, so what serves in prod is unknown: {log.summary()}")
    row = serving_now(log.entries, name).get(Environment.PROD.value)
    return client.get_model_version(name, str(row["version"])) if row else None


def _classify(model_uri: str, what: str, sets: dict, latency_samples: int, policy):
    """The model's outputs on ``sets`` (and its latency on the first), from its sandbox; a
    Failure naming ``what`` when the sandbox fails, times out or answers garbage."""
    from agentops_pipelines.sandbox import SandboxError, classify

    try:
        return classify(model_uri, sets, next(iter(sets)), latency_samples, policy)
    except SandboxError as exc:
        raise dg.Failure(f"{what}: {exc}") from None


def _evidently_html(holdout, predicted, path: Path) -> None:
    import pandas as pd
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    df = pd.DataFrame({"tool": holdout["tool"].astype(str).to_numpy(), "prediction": predicted.astype(str).to_numpy()})
    definition = DataDefinition(classification=[MulticlassClassification(target="tool", prediction_labels="prediction")],
                                categorical_columns=["tool", "prediction"])
    Report([ClassificationPreset()]).run(current_data=Dataset.from_pandas(df, data_definition=definition),
                                         reference_data=None).save_html(str(path))


def _side_by_side(holdout: dict, golden: dict | None) -> dict[str, dict]:
    """``{metric: {"held-out", "golden"}}`` for the headline metrics either set has."""
    from agentops_pipelines.evaluation import HEADLINE

    return {m: {"held-out": round(holdout[m], 4) if m in holdout else None,
                "golden": round(golden[m], 4) if golden and m in golden else None}
            for m in HEADLINE if m in holdout or (golden and m in golden)}


def _side_by_side_markdown(rows: dict) -> str:
    def cell(v):
        return "–" if v is None else f"{v:.4f}"

    return "\n".join(["| metric | held-out | golden |", "|---|---:|---:|",
                      *(f"| {m} | {cell(r['held-out'])} | {cell(r['golden'])} |" for m, r in rows.items())])


def _comparison_html_sides(rows: dict) -> str:
    import html

    def cell(v):
        return "–" if v is None else f"{v:.4f}"

    body = "".join(f"<tr><th>{html.escape(m)}</th><td>{cell(r['held-out'])}</td><td>{cell(r['golden'])}</td></tr>"
                   for m, r in rows.items())
    return f"<table><tr><th>metric</th><th>held-out</th><th>golden</th></tr>{body}</table>"


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
        ins={"trained": dg.AssetIn(trained.key, input_manager_key=LAKE_IO_MANAGER)}, deps=[training_set],
        io_manager_key=LAKE_IO_MANAGER, kinds={"mlflow", "html"}, code_version=source_version(__name__),
        description="Tool-selection accuracy, macro-F1, escalation precision/recall (with an escalation "
                    "tool), out-of-scope recall/precision/AUROC (with out-of-scope rows), per-tool table, "
                    "latency, held-out and golden test set side by side, and McNemar's test against the "
                    "champion (on the golden set when there is one), with the champion's numbers and "
                    "the deltas; plots (per-tool F1, confusion matrix, calibration, latency) in the "
                    "`plots` metadata and in MLflow beside the HTML report.",
    )
    def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, trained: dict | None,
                          lake: LakeResource, mlflow_store: MlflowResource, audit: AuditLog,
                          sandbox: ModelSandbox) -> dg.MaterializeResult:
        import numpy as np

        from agentops_pipelines import plots
        from agentops_pipelines.data.sources import DataSourceError, resolve_path
        from agentops_pipelines.evaluation import (
            HEADLINE,
            classification_metrics,
            comparison,
            comparison_markdown,
            gate,
            gate_minimums_for,
            latency_summary,
            load_golden,
            mcnemar,
            per_tool_comparison,
            refuse_unknown_labels,
            render_html,
            resolve_minimums,
        )

        client = mlflow_store.configure()
        run_id = config.candidate_run_id or (trained or {}).get("mlflow_run_id")
        if not run_id:
            raise dg.Failure("no candidate: materialize trained_agent or set candidate_run_id")
        try:
            minimums = resolve_minimums(config.model_dump(), agent.gate_minimums, agent.name)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        data = lake.read(f"{agent.name}/training_set")
        holdout = data[data["split"] == "holdout"].reset_index(drop=True)
        if holdout.empty:
            raise dg.Failure("the training set has no held-out rows")
        golden, golden_lineage = None, {}
        if agent.golden_test_set is not None:
            g = agent.golden_test_set
            try:  # with the digest of the bytes scored (the file is read once)
                golden, digest = load_golden(g.path, g.text_column, g.label_column)
                # A label the agent was never trained on is a typo or another label scheme: scored,
                # it would count as the candidate's and the champion's error alike.
                known = set(data["tool"].astype(str)) | set(agent.tools or ())
                refuse_unknown_labels(golden, known | {agent.answer_when_unsure} - {None},
                                      g.path, g.label_column)
            except DataSourceError as exc:
                raise dg.Failure(f"{agent.name}: {exc}") from None
            # In summary.json, so the registry's digest of the evaluation, which approvals bind
            # to, covers which cases the golden figures and the champion comparison were on.
            golden_lineage = {"golden_test_set": str(resolve_path(g.path)), "golden_test_set_sha256": digest}

        def score(out, cases):
            return classification_metrics(
                cases["tool"], out["tool"], agent.escalation_tool, out_of_scope_label=agent.out_of_scope_label,
                fallback_tool=agent.answer_when_unsure, confidence=out["confidence"])

        def right(out, metrics_cases):
            expected = metrics_cases["tool"].astype(str).to_numpy()
            if agent.out_of_scope_label is not None and agent.answer_when_unsure is not None:
                expected = np.where(expected == agent.out_of_scope_label, agent.answer_when_unsure, expected)
            return out["tool"].astype(str).to_numpy() == expected

        # The model's code runs in its sandbox, never here (it could read the audit key and forge a gate).
        policy = sandbox.policy(agent)
        sets = {"holdout": holdout} | ({"golden": golden} if golden is not None else {})
        candidate = _classify(f"runs:/{run_id}/agent", f"candidate run {run_id}", sets, config.latency_samples, policy)
        cand_out = candidate.outputs["holdout"]
        cand = score(cand_out, holdout)
        cand_pred = cand_out["tool"]
        gold = None
        if golden is not None:
            gold_out = candidate.outputs["golden"]
            gold = score(gold_out, golden)
        lat = latency_summary(candidate.latency_ms)

        # The champion is compared on the golden set when there is one, else on the held-out split.
        versus_cases, versus_out, versus_cand = ((golden, gold_out, gold) if golden is not None
                                                 else (holdout, cand_out, cand))
        champ_mv = champion_version(client, agent.name, audit)
        champ, test = None, None
        if champ_mv is not None and champ_mv.run_id != run_id:
            champion = _classify(f"models:/{agent.name}/{champ_mv.version}", f"champion v{champ_mv.version}",
                                 {"versus": versus_cases}, 0, policy)
            champ_out = champion.outputs["versus"]
            champ = score(champ_out, versus_cases)
            test = mcnemar(right(versus_out, versus_cases), right(champ_out, versus_cases))
        judged = dict(cand) | ({f"golden_{k}": v for k, v in gold.items()} if gold else {})
        verdict = gate(judged, champ, test, gate_minimums_for(minimums, judged), config.alpha)
        versus = comparison(versus_cand, champ)
        # Per tool, candidate beside champion on the cases they were compared on.
        per_tool = per_tool_comparison(versus_cand["per_tool"], champ["per_tool"] if champ else None)
        sides = _side_by_side(cand, gold)

        summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in cand.items() if isinstance(v, float | int)}
        if gold:
            summary |= {f"golden_{k}": round(v, 4) if isinstance(v, float) else v
                        for k, v in gold.items() if isinstance(v, float | int)}
        summary |= {"latency_p50_ms": round(lat["p50"], 2), "latency_p99_ms": round(lat["p99"], 2),
                    "candidate_run_id": run_id, "compared_on": "golden" if golden is not None else "held-out",
                    "sandbox": candidate.isolation, **golden_lineage}
        if champ is not None:
            summary |= {"champion_version": str(champ_mv.version),
                        **{f"champion_{m}": r["champion"] for m, r in versus.items()},
                        **{f"delta_{m}": r["delta"] for m, r in versus.items()},
                        "mcnemar_p_value": round(test["p_value"], 4), "only_candidate_correct": test["only_candidate_correct"],
                        "only_champion_correct": test["only_champion_correct"]}
        labels = list(cand["per_tool"]["tool"])
        figures = {  # title → PNG; file names below
            "Per-tool F1": plots.per_tool_f1(versus_cand["per_tool"], champ["per_tool"] if champ else None),
            "Confusion matrix": plots.confusion_matrix(holdout["tool"].astype(str), cand_pred.astype(str), labels),
            "Confidence calibration": plots.calibration_curve(cand_out["confidence"], right(cand_out, holdout)),
            "Latency": plots.latency_histogram(lat["samples"], lat["p50"], lat["p99"]),
        }
        files = dict(zip(figures, ("per_tool_f1.png", "confusion_matrix.png", "calibration.png", "latency.png"), strict=True))
        html = render_html(f"{agent.name}: evaluation of run {run_id}", summary, per_tool, verdict,
                           extra_sections={"Held-out and golden": _comparison_html_sides(sides),
                                           f"Candidate vs champion ({summary['compared_on']})": _comparison_html(versus),
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
        logged = {k: v for k, v in summary.items() if k in HEADLINE or k.removeprefix("golden_") in HEADLINE}
        for key, value in logged.items():
            client.log_metric(run_id, f"eval_{key}", value)
        client.log_metric(run_id, "eval_latency_p99_ms", lat["p99"])
        client.set_tag(run_id, "agentops.evaluation_gate", "passed" if verdict.passed else "failed")
        for key, value in golden_lineage.items():
            client.set_tag(run_id, f"agentops.{key}", value)
        experiment_id = client.get_run(run_id).info.experiment_id
        url = mlflow_store.run_url(experiment_id, run_id)
        # The numbers the gate reports and registration tags the version with.
        numbers = {**logged, "latency_p50_ms": round(lat["p50"], 2), "latency_p99_ms": round(lat["p99"], 2)}
        if champ is not None:
            numbers |= {f"champion_{m}": r["champion"] for m, r in versus.items()}
            numbers |= {f"delta_{m}": r["delta"] for m, r in versus.items()}
        numbers["mcnemar_p_value"] = round(test["p_value"], 4) if test else 1.0
        champion = str(champ_mv.version) if champ is not None else "none"
        record = gate_record(run_id, verdict.passed, verdict.reasons, champion, numbers,
                             {"candidate_vs_champion": comparison_markdown(versus)})
        metadata = {"candidate_run_id": run_id, **numbers, "holdout_rows": len(holdout),
                    "champion_version": champion, "compared_on": summary["compared_on"],
                    "sandbox": candidate.isolation}
        if golden is not None:
            metadata |= {"golden_rows": len(golden),
                         "golden_test_set": dg.MetadataValue.path(golden_lineage["golden_test_set"]),
                         "golden_test_set_sha256": golden_lineage["golden_test_set_sha256"],
                         "heldout_vs_golden": dg.MetadataValue.md(_side_by_side_markdown(sides))}
        metadata |= {
            "gate_passed": verdict.passed,
            "gate_reasons": dg.MetadataValue.json(verdict.reasons),
            "candidate_vs_champion": dg.MetadataValue.md(comparison_markdown(versus)),
            "per_tool": dg.MetadataValue.md(per_tool.to_markdown(index=False, floatfmt=".3f")),
            "plots": dg.MetadataValue.md(plots.markdown_images(figures)),
            "report": dg.MetadataValue.url(f"{url}/artifacts/evaluation/report.html"),
            "mlflow_run": dg.MetadataValue.url(url),
        }
        return dg.MaterializeResult(value=record, metadata=metadata)

    return evaluation_report
