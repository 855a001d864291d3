"""Abstention on out-of-scope requests: the default recipe with and without a target precision.

Usage (from the project root)::

    # CLINC150 (150 intents + out-of-scope; github.com/clinc/oos-eval, data/data_full.json): the
    # file is read where it is, never copied into the project
    .venv/bin/python bench/oos_abstention.py --clinc /tmp/clinc/data_full.json
    # BANKING77 with 10 intents held out as out-of-scope (5 seen as `oos` in training, 5 never seen)
    .venv/bin/python bench/oos_abstention.py --banking77 ../shared/datasets/banking77/train.csv

For each target precision (``--targets``, "none" = no threshold: the out-of-scope label is just
another class) it trains :func:`~agentops_pipelines.agent.recipes.train_text_router` by
configuration only (``fallback_tool``, ``abstain_target_precision``, ``out_of_scope_label``) and
prints in-scope accuracy, out-of-scope recall / precision / AUROC
(:func:`~agentops_pipelines.evaluation.classification_metrics`), fit CPU seconds and the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OOS, FALLBACK = "oos", "hand_over_to_person"


def clinc(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training: train + val + their out-of-scope rows; test: test + oos_test (the paper's split)."""
    d = json.loads(path.read_text())

    def frame(*keys):
        rows = [r for k in keys for r in d[k]]
        return pd.DataFrame(rows, columns=["text", "tool"])

    return frame("train", "val", "oos_train", "oos_val"), frame("test", "oos_test")


def banking77(path: Path, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stable 80/20 split; 10 intents become out-of-scope: 5 appear in training as `oos`, 5 only
    in the test (requests unlike anything seen)."""
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(path).rename(columns={"category": "tool"})
    intents = sorted(df["tool"].unique())
    seen_oos, unseen_oos = intents[3::15][:5], intents[10::15][:5]
    train, test = train_test_split(df, test_size=0.2, stratify=df["tool"], random_state=seed)
    train = train[~train["tool"].isin(unseen_oos)].copy()
    train.loc[train["tool"].isin(seen_oos), "tool"] = OOS
    test = test.copy()
    test.loc[test["tool"].isin(seen_oos + unseen_oos), "tool"] = OOS
    return train.reset_index(drop=True), test.reset_index(drop=True)


def run(train: pd.DataFrame, test: pd.DataFrame, targets: list[float | None]) -> list[dict]:
    from agentops_pipelines.agent.recipes import train_text_router
    from agentops_pipelines.evaluation import classification_metrics

    rows = []
    for target in targets:
        t0 = time.process_time()
        router = train_text_router(train, {}, fallback_tool=FALLBACK, target_precision=target,
                                   out_of_scope_label=OOS)
        fit_cpu = time.process_time() - t0
        tools, confidence = router.predict_columns({"text": test["text"].tolist()}, len(test))
        m = classification_metrics(test["tool"], tools, None, out_of_scope_label=OOS,
                                   fallback_tool=FALLBACK, confidence=confidence)
        rows.append({"target_precision": "none" if target is None else target,
                     "in_scope_accuracy": round(m["in_scope_accuracy"], 4),
                     "oos_recall": round(m["oos_recall"], 4), "oos_precision": round(m["oos_precision"], 4),
                     "oos_auroc": round(m["oos_auroc"], 4), "accuracy_all": round(m["accuracy"], 4),
                     "threshold": router.validation.get("abstain_threshold", "–"),
                     "fit_cpu_s": round(fit_cpu, 1)})
        print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--clinc", type=Path, help="CLINC150 data_full.json")
    source.add_argument("--banking77", type=Path, help="BANKING77 train.csv (text, category)")
    ap.add_argument("--targets", nargs="+", default=["none", "0.9", "0.95", "0.97"])
    args = ap.parse_args(argv)
    path = args.clinc or args.banking77
    if not path.exists():
        print(f"{path} not found", file=sys.stderr)
        return 2
    train, test = clinc(path) if args.clinc else banking77(path)
    print(f"train {len(train)} rows, {train['tool'].nunique()} labels; test {len(test)} rows, "
          f"{int((test['tool'] == OOS).sum())} out-of-scope")
    targets = [None if t == "none" else float(t) for t in args.targets]
    rows = run(train, test, targets)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    base = rows[0]["in_scope_accuracy"] if targets[0] is None else None
    if base is not None:
        for r in rows[1:]:
            print(f"target {r['target_precision']}: in-scope accuracy {r['in_scope_accuracy'] - base:+.4f} "
                  f"vs no abstention, out-of-scope recall {r['oos_recall']:.4f}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
