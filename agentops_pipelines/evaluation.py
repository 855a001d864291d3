"""Pure evaluation functions: metrics, the paired significance test, the gate, the HTML report."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def classification_metrics(y_true, y_pred, escalation_tool: str | None) -> dict:
    """Tool-selection accuracy, macro-F1 over the true tools, escalation precision and recall."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    labels = sorted(set(y_true))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_tool = pd.DataFrame({"tool": labels, "precision": p, "recall": r, "f1": f, "support": s})
    out = {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "per_tool": per_tool,
    }
    if escalation_tool is not None:
        tp = int(((y_pred == escalation_tool) & (y_true == escalation_tool)).sum())
        predicted = int((y_pred == escalation_tool).sum())
        actual = int((y_true == escalation_tool).sum())
        out["escalation_precision"] = tp / predicted if predicted else 0.0
        out["escalation_recall"] = tp / actual if actual else 1.0
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
    arr = np.asarray(times) if times else np.zeros(1)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "samples": times}


HEADLINE = ("accuracy", "macro_f1", "escalation_precision", "escalation_recall")


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
