"""Figures a reviewer looks at: plain data in, PNG bytes out (matplotlib, Agg, imported lazily).

The same PNGs go to the MLflow run (artifacts, embedded in the HTML report) and to the Dagster
asset page (Markdown metadata with ``data:`` images, which the 1.13 UI's Markdown renderer allows).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

CANDIDATE, CHAMPION = "#1f77b4", "#ff7f0e"
DPI = 80
MAX_LABELS = 30  # more tools than this (e.g. Banking77's 77): the ones that matter most are shown


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    _pyplot().close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_images(figures: Mapping[str, bytes]) -> str:
    """``### title`` and the image, for each figure: one Markdown document."""
    return "\n\n".join(f"### {title}\n\n![{title}]({data_uri(png)})" for title, png in figures.items())


def html_images(figures: Mapping[str, bytes]) -> str:
    return "".join(f'<figure><img alt="{title}" src="{data_uri(png)}"><figcaption>{title}</figcaption></figure>'
                   for title, png in figures.items())


def per_tool_f1(candidate: pd.DataFrame, champion: pd.DataFrame | None) -> bytes:
    """Horizontal bars of F1 per tool, the candidate beside the champion when there is one."""
    plt = _pyplot()
    title = "Per-tool F1: candidate vs champion" if champion is not None else "Per-tool F1 (no champion yet)"
    if len(candidate) > MAX_LABELS:  # the weakest tools (or the biggest changes against the champion)
        key = candidate["f1"]
        if champion is not None:
            key = -(candidate["f1"] - candidate["tool"].map(champion.set_index("tool")["f1"]).fillna(0.0)).abs()
        candidate = candidate.loc[key.sort_values(kind="stable").index[:MAX_LABELS]]
        title += f"\n({MAX_LABELS} of {len(key)} tools: " + ("largest changes)" if champion is not None else "lowest F1)")
    tools = list(candidate["tool"])
    y = np.arange(len(tools))
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(tools) + 1.2))
    height = 0.4 if champion is not None else 0.7
    ax.barh(y - (height / 2 if champion is not None else 0), candidate["f1"], height, color=CANDIDATE,
            label="candidate")
    if champion is not None:
        champ = champion.set_index("tool")["f1"].reindex(tools).fillna(0.0)
        ax.barh(y + height / 2, champ.to_numpy(), height, color=CHAMPION, label="champion")
    ax.set_yticks(y, tools)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("F1 on the held-out cases")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.5 / (0.35 * len(tools) + 1.2) / 10), ncol=2,
              fontsize=8, frameon=False)
    ax.set_title(title)
    return _png(fig)


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> bytes:
    """Row-normalized confusion matrix (true tool × chosen tool), counts in the cells."""
    from sklearn.metrics import confusion_matrix as cm

    plt = _pyplot()
    labels = list(labels)
    counts = cm(np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object), labels=labels)
    title = "Confusion matrix (candidate; colour: share of the row)"
    if len(labels) > MAX_LABELS:  # the tools involved in the most errors, as true or as chosen tool
        errors = counts.copy()
        np.fill_diagonal(errors, 0)
        keep = np.sort(np.argsort(-(errors.sum(axis=0) + errors.sum(axis=1)), kind="stable")[:MAX_LABELS])
        title += f"\n{MAX_LABELS} of {len(labels)} tools: those in the most errors"
        row_totals = counts.sum(axis=1)[keep]
        counts = counts[np.ix_(keep, keep)]
        labels = [labels[i] for i in keep]
        share = counts / np.maximum(row_totals, 1)[:, None]
    else:
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(0.32 * n + 3.2, 0.28 * n + 2.4))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("chosen tool")
    ax.set_ylabel("true tool")
    ax.set_title(title)
    return _png(fig)


def calibration_curve(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> bytes:
    """Accuracy per confidence bin against the diagonal; bar heights under it are the counts."""
    plt = _pyplot()
    conf = np.clip(np.asarray(confidence, dtype=float), 0.0, 1.0)
    ok = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    mean_conf, accuracy, counts = [], [], []
    for b in range(bins):
        mask = which == b
        counts.append(int(mask.sum()))
        if mask.any():
            mean_conf.append(float(conf[mask].mean()))
            accuracy.append(float(ok[mask].mean()))
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot(mean_conf, accuracy, marker="o", color=CANDIDATE, label="candidate")
    ax2 = ax.twinx()
    ax2.bar((edges[:-1] + edges[1:]) / 2, counts, width=1.0 / bins, alpha=0.15, color=CANDIDATE)
    ax2.set_ylabel("cases per bin")
    ax.set_zorder(ax2.get_zorder() + 1)  # the curve over the counts
    ax.patch.set_visible(False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence of the chosen tool")
    ax.set_ylabel("share correct")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Confidence calibration")
    return _png(fig)


def latency_histogram(samples_ms: Sequence[float], p50: float, p99: float) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(np.asarray(samples_ms, dtype=float), bins=30, color=CANDIDATE, alpha=0.8)
    for value, label, style in ((p50, "p50", "-"), (p99, "p99", "--")):
        ax.axvline(value, color="black", linestyle=style, linewidth=1)
        ax.annotate(f"{label} {value:.2f} ms", (value, ax.get_ylim()[1] * 0.97), rotation=90,
                    fontsize=8, ha="right", va="top", xytext=(-2, 0), textcoords="offset points")
    ax.set_xlabel("single-request latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"Latency of the candidate ({len(samples_ms)} requests)")
    return _png(fig)


def drift_strength(columns: Mapping[str, Mapping]) -> bytes:
    """How far each column is past its drift threshold (1 = at the threshold), drifted in red.

    ``columns``: ``{column: {"kind": "p_value"|"distance", "score", "threshold", "drifted",
    "stattest"}}``. For a distance the strength is score / threshold; for a p-value, threshold /
    p (a p ten times smaller than the threshold reads 10).
    """
    plt = _pyplot()
    names = list(columns)
    strength = [drift_ratio(c) for c in columns.values()]
    colours = ["#d62728" if c["drifted"] else "#2ca02c" for c in columns.values()]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(names) + 1.3))
    y = np.arange(len(names))
    ax.barh(y, strength, color=colours)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(y, [f"{n} ({c['stattest']})" for n, c in columns.items()], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("strength (× threshold; ≥ 1: drifted)")
    ax.set_title(f"Drift per column: {sum(c['drifted'] for c in columns.values())} of {len(names)} drifted")
    return _png(fig)


def drift_ratio(column: Mapping) -> float:
    """score / threshold for a distance, threshold / score for a p-value; clipped to [1e-3, 1e3]."""
    score, threshold = float(column["score"]), float(column["threshold"])
    if column["kind"] == "p_value":
        ratio = threshold / max(score, 1e-12)
    else:
        ratio = score / threshold if threshold else 0.0
    return float(np.clip(ratio, 1e-3, 1e3))
