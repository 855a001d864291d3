"""Abstention on out-of-scope requests: the default recipe with and without a target precision.

Usage (from the project root)::

    # CLINC150 (150 intents + out-of-scope; github.com/clinc/oos-eval, data/data_full.json): the
    # file is read where it is, never copied into the project
    .venv/bin/python bench/oos_abstention.py --clinc /tmp/clinc/data_full.json
    # the target chosen on CLINC's validation split, then measured once on its test split
    .venv/bin/python bench/oos_abstention.py --clinc /tmp/clinc/data_full.json --choose-on-val \
        --targets none 0.95 0.97 0.98 0.985 0.99 0.995
    # the same among accuracy budgets
    .venv/bin/python bench/oos_abstention.py --clinc /tmp/clinc/data_full.json --choose-on-val \
        --targets none --budgets 0.005 0.01 0.015 0.02
    # abstention by an accuracy budget (max_accuracy_loss) beside no abstention
    .venv/bin/python bench/oos_abstention.py --clinc /tmp/clinc/data_full.json --targets none --budgets 0.015
    # CLINC's validation split as the agent's declared validation set (validation_set:)
    .venv/bin/python bench/oos_abstention.py --clinc /tmp/clinc/data_full.json --declared-val --targets none --budgets 0.015
    # BANKING77 with 10 intents held out as out-of-scope (5 seen as `oos` in training, 5 never seen)
    .venv/bin/python bench/oos_abstention.py --banking77 ../shared/datasets/banking77/train.csv

For each target precision (``--targets``, "none" = no threshold: the out-of-scope label is just
another class) it trains :func:`~agentops_pipelines.agent.recipes.train_text_router` by
configuration only (``fallback_tool``, ``abstain_target_precision``, ``out_of_scope_label``) and
prints in-scope accuracy, out-of-scope recall / precision / AUROC
(:func:`~agentops_pipelines.evaluation.classification_metrics`), fit CPU seconds and the threshold.

``--choose-on-val`` (CLINC150) picks the setting without looking at the test split: each target (and
each ``--budgets`` value) is
trained on ``train`` + ``oos_train`` and measured on ``val`` + ``oos_val``; the chosen one is the
target with the highest validation out-of-scope recall whose validation in-scope accuracy is within
``--max-drop`` points of no abstention (default 1: half the bar's 2 points, kept back for the
test's noise). That target is then trained on train + val, as shipped, and measured on the test
split once.
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


def clinc(path: Path, split: str = "test") -> tuple[pd.DataFrame, ...]:
    """CLINC150's frames (``text``, ``tool``), the out-of-scope rows beside each split's:

    - ``"test"``: training = train + val, and the test split (the paper's split, as shipped);
    - ``"val"``: training = train alone, and the validation split (choosing without the test);
    - ``"declared"``: train, val as the agent's declared validation set, and the test split.
    """
    d = json.loads(path.read_text())

    def frame(*keys):
        return pd.DataFrame([r for k in keys for r in d[k]], columns=["text", "tool"])

    if split == "val":
        return frame("train", "oos_train"), frame("val", "oos_val")
    if split == "declared":
        return frame("train", "oos_train"), frame("val", "oos_val"), frame("test", "oos_test")
    return frame("train", "val", "oos_train", "oos_val"), frame("test", "oos_test")


def choose(rows: list[dict], max_drop: float) -> tuple[str, float]:
    """The setting (rule, value) with the highest out-of-scope recall among those within
    ``max_drop`` points of in-scope accuracy of no abstention (``rows[0]``); ties: the smaller
    value."""
    base = rows[0]["in_scope_accuracy"]
    fit = [r for r in rows[1:] if base - r["in_scope_accuracy"] <= max_drop / 100]
    if not fit:
        raise SystemExit(f"no setting keeps in-scope accuracy within {max_drop} points on validation")
    best = max(fit, key=lambda r: (r["oos_recall"], -float(r["rule"].split()[-1])))
    rule, value = best["rule"].split()
    return rule, float(value)


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


def run(train: pd.DataFrame, test: pd.DataFrame, targets: list[float | None],
        budgets: list[float] = (), validation_set: pd.DataFrame | None = None) -> list[dict]:
    """One training per setting: each target precision (None: no threshold), then each accuracy
    budget (``max_accuracy_loss``)."""
    from agentops_pipelines.agent.recipes import train_text_router
    from agentops_pipelines.evaluation import classification_metrics

    rows = []
    settings = [("target_precision", t) for t in targets] + [("max_accuracy_loss", b) for b in budgets]
    for rule, value in settings:
        t0 = time.process_time()
        router = train_text_router(train, {}, fallback_tool=FALLBACK, out_of_scope_label=OOS,
                                   validation_set=validation_set, **{rule: value})
        fit_cpu = time.process_time() - t0
        tools, confidence = router.predict_columns({"text": test["text"].tolist()}, len(test))
        m = classification_metrics(test["tool"], tools, None, out_of_scope_label=OOS,
                                   fallback_tool=FALLBACK, confidence=confidence)
        rows.append({"rule": "none" if value is None else f"{rule} {value}",
                     "in_scope_accuracy": round(m["in_scope_accuracy"], 4),
                     "oos_recall": round(m["oos_recall"], 4), "oos_precision": round(m["oos_precision"], 4),
                     "oos_auroc": round(m["oos_auroc"], 4), "accuracy_all": round(m["accuracy"], 4),
                     "threshold": router.validation.get("abstain_threshold", "–"),
                     "val_in_scope_loss": router.validation.get("in_scope_accuracy_loss", "–"),
                     "fit_cpu_s": round(fit_cpu, 1)})
        print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--clinc", type=Path, help="CLINC150 data_full.json")
    source.add_argument("--banking77", type=Path, help="BANKING77 train.csv (text, category)")
    ap.add_argument("--targets", nargs="*", default=["none", "0.9", "0.95", "0.97"],
                    help="target precisions ('none': no threshold)")
    ap.add_argument("--budgets", nargs="*", type=float, default=[],
                    help="accuracy budgets (max_accuracy_loss), each trained after the targets")
    ap.add_argument("--choose-on-val", action="store_true",
                    help="CLINC150: choose the target on the validation split, then test it once")
    ap.add_argument("--declared-val", action="store_true",
                    help="CLINC150: train on train + oos_train with val + oos_val as the agent's "
                         "declared validation set (validation_set:), test on the test split")
    ap.add_argument("--max-drop", type=float, default=1.0,
                    help="points of in-scope accuracy the chosen target may lose on validation")
    args = ap.parse_args(argv)
    path = args.clinc or args.banking77
    if not path.exists():
        print(f"{path} not found", file=sys.stderr)
        return 2
    if args.choose_on_val:
        if not args.clinc or args.targets[:1] != ["none"]:
            ap.error("--choose-on-val needs --clinc and 'none' as the first target")
        train, val = clinc(path, "val")
        print(f"choosing on validation: train {len(train)} rows, val {len(val)} rows, "
              f"{int((val['tool'] == OOS).sum())} out-of-scope")
        rows = run(train, val, [None] + [float(t) for t in args.targets[1:]], args.budgets)
        print(pd.DataFrame(rows).to_markdown(index=False))
        rule, value = choose(rows, args.max_drop)
        print(f"\nchosen on validation: {rule} {value}; now trained on train + val, tested once")
        train, test = clinc(path)
        final = (run(train, test, [None, value]) if rule == "target_precision"
                 else run(train, test, [None], [value]))
        print(pd.DataFrame(final).to_markdown(index=False))
        print(f"test: in-scope accuracy {final[1]['in_scope_accuracy'] - final[0]['in_scope_accuracy']:+.4f} "
              f"vs no abstention, out-of-scope recall {final[1]['oos_recall']:.4f}")
        return 0
    validation_set = None
    if args.declared_val:
        if not args.clinc:
            ap.error("--declared-val needs --clinc")
        train, validation_set, test = clinc(path, "declared")
    else:
        train, test = clinc(path) if args.clinc else banking77(path)
    print(f"train {len(train)} rows, {train['tool'].nunique()} labels; test {len(test)} rows, "
          f"{int((test['tool'] == OOS).sum())} out-of-scope")
    targets = [None if t == "none" else float(t) for t in args.targets]
    rows = run(train, test, targets, args.budgets, validation_set)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    base = rows[0]["in_scope_accuracy"] if targets[:1] == [None] else None
    if base is not None:
        for r in rows[1:]:
            print(f"{r['rule']}: in-scope accuracy {r['in_scope_accuracy'] - base:+.4f} "
                  f"vs no abstention, out-of-scope recall {r['oos_recall']:.4f}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
