"""BANKING77: what the default recipe would score trained on the whole training file.

Usage (from the project root; ~15 minutes on 2 cores)::

    .venv/bin/python bench/banking77_learning_curve.py
    .venv/bin/python bench/banking77_learning_curve.py --splits 0 --fractions 0.5 1.0

The accuracy bar of issue 11 is read on BANKING77's official test split with a router trained on
all 10,003 rows of the training file. That split is not shared with us, and a held-out 20% of the
training file (``bench/banking77_router.py``) trains on 8,002 rows only. This script measures how
accuracy grows with the number of training rows and extrapolates to 10,003:

- for each stable split (``random_state`` = split, a stratified 20% held out, as
  ``banking77_router.py``), the router is trained on a stratified share of the other 80%
  (``--fractions`` of 8,002 rows) and scored on the same held-out rows;
- the error ``1 - accuracy``, averaged over the splits, is fitted as ``a * n ** -b`` (a straight
  line in log-log, least squares) and read at ``n`` = 10,003;
- balanced accuracy (the mean of the per-label recalls) is reported beside it: the official test
  split has 40 requests per label, the training file does not.

Two routers, both through ``train_text_router`` (the code the lifecycle runs):

- ``default``: ``{}``, the default recipe (TF-IDF and MiniLM int8, C chosen on validation, refit);
- ``tfidf``: ``{"embeddings": 0, "C": 0.5}``, plain TF-IDF + LinearSVC C=0.5 refit on every row,
  the baseline the issue measured on the official test split (0.912 trained on all the training
  data). Its extrapolation against that figure is the check of the method.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "banking77" / "train.csv"
ROUTERS = {"default": {}, "tfidf": {"embeddings": 0, "C": 0.5}}
#: What the issue measured on the official test split (plain TF-IDF + LinearSVC, all training rows).
ISSUE_TFIDF_TEST = 0.912


def power_law(sizes: list[int], errors: list[float]) -> tuple[float, float]:
    """(a, b) of ``error = a * n ** -b``, least squares in log-log."""
    slope, intercept = np.polyfit(np.log(sizes), np.log(errors), 1)
    return float(np.exp(intercept)), float(-slope)


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split

    from agentops_pipelines.agent.recipes import train_text_router

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.625, 0.75, 0.875, 1.0])
    ap.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"BANKING77 not found at {args.data}", file=sys.stderr)
        return 2
    if any(not 0 < f <= 1 for f in args.fractions):
        print("--fractions must be in (0, 1]", file=sys.stderr)
        return 2

    df = pd.read_csv(args.data).rename(columns={"category": "tool"})
    full = len(df)
    rows = []
    for rs in args.splits:
        fit_all, test = train_test_split(df, test_size=0.2, stratify=df["tool"], random_state=rs)
        texts, truth = test["text"].tolist(), test["tool"].to_numpy()
        for fraction in sorted(args.fractions):
            fit = fit_all if fraction == 1 else train_test_split(
                fit_all, train_size=fraction, stratify=fit_all["tool"], random_state=100 + rs)[0]
            for kind in args.routers:
                c0 = time.process_time()
                router = train_text_router(fit.reset_index(drop=True), ROUTERS[kind])
                tools, _ = router.predict_columns({"text": texts}, len(texts))
                predicted = np.asarray(tools)
                row = {"router": kind, "split": rs, "rows": len(fit),
                       "accuracy": round(float((predicted == truth).mean()), 4),
                       "balanced": round(float(balanced_accuracy_score(truth, predicted)), 4),
                       "C": router.validation.get("C"),
                       "cpu_s": round(time.process_time() - c0, 1)}
                rows.append(row)
                print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    table = pd.DataFrame(rows)
    print()
    means = (table.groupby(["router", "rows"], sort=False)[["accuracy", "balanced"]].mean()
             .round(4).reset_index())
    print(means.to_markdown(index=False))
    print()
    for kind, group in means.groupby("router", sort=False):
        if group["rows"].nunique() < 2:
            print(f"{kind}: one training size only, no extrapolation")
            continue
        for metric in ("accuracy", "balanced"):
            a, b = power_law(group["rows"].tolist(), (1 - group[metric]).tolist())
            at_full = 1 - a * full ** -b
            line = (f"{kind:8s} {metric:9s} error = {a:.3g} * n^-{b:.3f}; at n = {full} "
                    f"(all training rows): {at_full:.4f}")
            if kind == "tfidf" and metric == "accuracy":
                line += f" (the issue's official test figure: {ISSUE_TFIDF_TEST})"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
