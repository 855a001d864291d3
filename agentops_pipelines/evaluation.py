"""Pure evaluation functions: metrics, the paired significance test, the gate, the HTML report."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def classification_metrics(y_true, y_pred, escalation_tool: str | None, *,
                           out_of_scope_label: str | None = None, fallback_tool: str | None = None,
                           confidence=None) -> dict:
    """Tool-selection accuracy and macro-F1 over the true tools; escalation precision and recall
    when the agent has an escalation tool and the data has requests for it; out-of-scope metrics
    when the data has ``out_of_scope_label`` rows.

    An out-of-scope request is answered right by the fallback tool (the router abstained), or by
    the out-of-scope label itself when the agent has no fallback. ``in_scope_accuracy`` is the
    accuracy on the other requests (abstaining on them is wrong); ``oos_recall`` / ``oos_precision``
    treat "abstained" as the prediction "out of scope"; ``oos_auroc`` ranks requests by
    ``1 - confidence`` (needs ``confidence``, the router's calibrated confidence).
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    is_oos = (y_true == out_of_scope_label) if out_of_scope_label is not None else np.zeros(len(y_true), bool)
    abstain_answer = fallback_tool or out_of_scope_label
    if is_oos.any():
        y_true = np.where(is_oos, abstain_answer, y_true)
    labels = sorted(set(y_true))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_tool = pd.DataFrame({"tool": labels, "precision": p, "recall": r, "f1": f, "support": s})
    out = {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "per_tool": per_tool,
    }
    if escalation_tool is not None and (y_true == escalation_tool).any():
        tp = int(((y_pred == escalation_tool) & (y_true == escalation_tool)).sum())
        predicted = int((y_pred == escalation_tool).sum())
        out["escalation_precision"] = tp / predicted if predicted else 0.0
        out["escalation_recall"] = tp / int((y_true == escalation_tool).sum())
    if is_oos.any():
        flagged = (y_pred == abstain_answer) | (y_pred == out_of_scope_label)
        hits = int((flagged & is_oos).sum())
        out["in_scope_accuracy"] = float((y_true == y_pred)[~is_oos].mean()) if (~is_oos).any() else 0.0
        out["oos_recall"] = hits / int(is_oos.sum())
        out["oos_precision"] = hits / int(flagged.sum()) if flagged.any() else 0.0
        out["oos_n"] = int(is_oos.sum())
        if confidence is not None and (~is_oos).any():
            from sklearn.metrics import roc_auc_score

            out["oos_auroc"] = float(roc_auc_score(is_oos, 1.0 - np.asarray(confidence, dtype=float)))
    return out


def mcnemar(candidate_correct, champion_correct) -> dict:
    """McNemar's paired test on the same cases: exact binomial below 25 discordant pairs."""
    from scipy import stats

    a = np.asarray(candidate_correct, dtype=bool)
    b = np.asarray(champion_correct, dtype=bool)
    only_candidate = int((a & ~b).sum())
    only_champion = int((~a & b).sum())
    discordant = only_candidate + only_champion
    if discordant == 0:
        p_value, statistic = 1.0, 0.0
    elif discordant < 25:
        statistic = float(min(only_candidate, only_champion))
        p_value = float(stats.binomtest(only_candidate, discordant, 0.5).pvalue)
    else:
        statistic = (abs(only_candidate - only_champion) - 1) ** 2 / discordant
        p_value = float(stats.chi2.sf(statistic, df=1))
    return {"only_candidate_correct": only_candidate, "only_champion_correct": only_champion,
            "statistic": float(statistic), "p_value": p_value}


def latency_ms(predict, requests: pd.DataFrame, n: int = 200) -> dict:
    """Single-request latency of ``predict`` over up to ``n`` requests: p50 and p99 in ms."""
    sample = requests.head(n)
    times = []
    for i in range(len(sample)):
        row = sample.iloc[[i]]
        t0 = time.perf_counter()
        predict(row)
        times.append((time.perf_counter() - t0) * 1000)
    return latency_summary(times)


def latency_summary(samples: list[float]) -> dict:
    """p50 and p99 (ms) of single-request latencies, and the samples."""
    arr = np.asarray(samples) if samples else np.zeros(1)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "samples": list(samples)}


HEADLINE = ("accuracy", "macro_f1", "escalation_precision", "escalation_recall", "in_scope_accuracy",
            "oos_recall", "oos_precision", "oos_auroc")
# Minimums of the evaluation gate: EvaluationConfig field -> the metric it bounds (golden_*: the
# same metric on the golden test set). An agent's ``gate_minimums`` use the same field names.
GATE_MINIMUMS = {"min_accuracy": "accuracy", "min_macro_f1": "macro_f1",
                 "min_escalation_recall": "escalation_recall",
                 "min_golden_accuracy": "golden_accuracy", "min_oos_recall": "oos_recall"}
DEFAULT_MINIMUMS = {"min_accuracy": 0.80, "min_macro_f1": 0.0, "min_escalation_recall": 0.0,
                    "min_golden_accuracy": 0.0, "min_oos_recall": 0.0}


def resolve_minimums(configured: Mapping[str, float | None], agent_minimums: Mapping[str, float],
                     agent_name: str = "the agent") -> dict[str, float]:
    """Each gate minimum: the run's config if set, else the agent's ``gate_minimums``, else the
    built-in default. An unknown name in the agent's minimums is an error naming it."""
    unknown = sorted(set(agent_minimums) - set(DEFAULT_MINIMUMS))
    if unknown:
        raise ValueError(f"{agent_name}: unknown gate_minimums {unknown}; known: {sorted(DEFAULT_MINIMUMS)}")
    out = {}
    for name, default in DEFAULT_MINIMUMS.items():
        value = configured.get(name)
        out[name] = float(value if value is not None else agent_minimums.get(name, default))
    return out


def gate_minimums_for(minimums: Mapping[str, float], candidate: Mapping) -> dict[str, float]:
    """``{metric: minimum}`` for the gate: a metric the evaluation could not compute (no
    escalation requests, no golden set, no out-of-scope rows) is judged only if its minimum is
    above zero, and then fails as missing."""
    out = {}
    for name, minimum in minimums.items():
        metric = GATE_MINIMUMS[name]
        if metric in candidate or minimum > 0:
            out[metric] = minimum
    return out


def load_golden(path: str, text_column: str = "text", label_column: str = "tool",
                what: str = "golden test set") -> tuple[pd.DataFrame, str]:
    """A golden test set (or validation set: ``what``) as ``text``, ``tool`` (plus its other
    columns), and the SHA-256 of the bytes parsed: the file is read once, so a file rewritten
    meanwhile cannot be recorded under another content's digest. Errors name the file."""
    import hashlib

    from agentops_pipelines.data.sources import DataSourceError, read_file, resolve_path

    file = resolve_path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise DataSourceError(f"{what} {file} does not exist") from None
    except OSError as exc:
        raise DataSourceError(f"{what} {file} cannot be read: {exc}") from None
    df = read_file(file, data)
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise DataSourceError(f"{what} {file}: no column(s) {missing}; columns: {list(df.columns)}")
    nulls = df[[text_column, label_column]].isna().any(axis=1).to_numpy()
    if nulls.any():
        raise DataSourceError(f"{what} {file}: empty {text_column!r} or {label_column!r} "
                              f"on {int(nulls.sum())} row(s), {_first_at(file, nulls)}")
    other = df.drop(columns=[c for c in (text_column, label_column, "text", "tool") if c in df.columns])
    cases = pd.concat([pd.DataFrame({"text": df[text_column].astype(str).to_numpy(),
                                     "tool": df[label_column].astype(str).to_numpy()}),
                       other.reset_index(drop=True)], axis=1)
    return cases, hashlib.sha256(data).hexdigest()


def _first_at(file, bad: np.ndarray) -> str:
    """"first at line(s) [..]" for the first five ``bad`` rows of ``file``: their lines in a CSV
    or JSONL file (quoted line breaks and blank lines counted), their row numbers in Parquet."""
    from agentops_pipelines.data.sources import line_numbers

    lines, unit = line_numbers(file, len(bad))
    return f"first at {unit}(s) {[lines[i] for i in np.flatnonzero(bad)[:5]]}"


def refuse_unknown_labels(cases: pd.DataFrame, known: set[str], path: str, label_column: str,
                          what: str = "golden test set") -> None:
    """Raise naming the file, the user's column and the first lines when ``cases`` (as
    :func:`load_golden` returns them) hold a label outside ``known``: a typo would be scored as a
    wrong answer (golden) or become a tool the router answers (validation), silently either way."""
    from agentops_pipelines.data.sources import DataSourceError, resolve_path

    stray = ~cases["tool"].isin(known).to_numpy()
    if stray.any():
        file = resolve_path(path)
        raise DataSourceError(
            f"{what} {file}: column {label_column!r} has label(s) "
            f"{sorted(set(cases['tool'][stray]))[:5]} not in the training data's label set, "
            f"{_first_at(file, stray)}")


def comparison(candidate: Mapping, champion: Mapping | None, digits: int = 4) -> dict[str, dict]:
    """``{metric: {"candidate", "champion", "delta"}}``, rounded; champion and delta None without one."""
    out = {}
    for metric in HEADLINE:
        if metric not in candidate:
            continue
        cand = round(float(candidate[metric]), digits)
        champ = round(float(champion[metric]), digits) if champion is not None and metric in champion else None
        out[metric] = {"candidate": cand, "champion": champ,
                       "delta": None if champ is None else round(cand - champ, digits)}
    return out


def per_tool_comparison(candidate: pd.DataFrame, champion: pd.DataFrame | None, digits: int = 3) -> pd.DataFrame:
    """The candidate's per-tool table with the champion's F1 and the difference, rounded."""
    table = candidate.copy()
    if champion is not None:
        champ = champion.set_index("tool")["f1"]
        table["champion_f1"] = table["tool"].map(champ)
        table["delta_f1"] = table["f1"] - table["champion_f1"]
    numeric = [c for c in table.columns if c not in ("tool", "support")]
    table[numeric] = table[numeric].astype(float).round(digits)
    return table


def comparison_markdown(rows: Mapping[str, Mapping]) -> str:
    lines = ["| metric | candidate | champion | delta |", "|---|---:|---:|---:|"]
    for metric, r in rows.items():
        champ = "–" if r["champion"] is None else f"{r['champion']:.4f}"
        delta = "–" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(f"| {metric} | {r['candidate']:.4f} | {champ} | {delta} |")
    return "\n".join(lines)


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def gate(candidate: Mapping, champion: Mapping | None, test: Mapping | None,
         minimums: Mapping[str, float], alpha: float) -> GateResult:
    """The candidate meets every minimum and is not significantly worse than the champion."""
    reasons = []
    for metric, minimum in minimums.items():
        value = candidate.get(metric)
        if value is None or value < minimum:
            reasons.append(f"{metric} {value if value is None else round(value, 4)} is below the minimum {minimum}")
    if champion is not None and test is not None:
        worse = test["only_champion_correct"] > test["only_candidate_correct"]
        if worse and test["p_value"] < alpha:
            reasons.append(
                f"significantly worse than the champion (McNemar p={test['p_value']:.4g} < {alpha}; "
                f"champion alone right on {test['only_champion_correct']} cases, candidate alone on "
                f"{test['only_candidate_correct']})")
    return GateResult(passed=not reasons, reasons=reasons)


def render_html(title: str, summary: Mapping[str, object], per_tool: pd.DataFrame,
                gate_result: GateResult, extra_sections: Mapping[str, str] | None = None) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    verdict = "PASSED" if gate_result.passed else "FAILED: " + "; ".join(gate_result.reasons)
    sections = "".join(f"<h2>{html.escape(k)}</h2>{v}" for k, v in (extra_sections or {}).items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style>
</head><body><h1>{html.escape(title)}</h1><p><b>Gate:</b> {html.escape(verdict)}</p>
<table>{rows}</table><h2>Per tool</h2>{per_tool.to_html(index=False, float_format=lambda x: f"{x:.3f}")}{sections}</body></html>"""


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
