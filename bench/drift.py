"""Drift scoring benchmark: ``agentops_pipelines.drift.score_drift`` vs Evidently's DataDriftPreset.

Usage (from the project root)::

    .venv/bin/python bench/drift.py                          # 1,000,000 current rows, 20 features
    .venv/bin/python bench/drift.py --rows 200000 --repeats 1
    .venv/bin/python bench/drift.py --write                  # also update BENCHMARKS.md

A synthetic inference log (numpy, seeded): 8 float features, 4 integer features with more than
10 distinct values (numerical for Evidently), 4 integer features with at most 10 (categorical for
Evidently) and 4 string categories; 7 of them drift in the current data, two of those close to
the 0.1 threshold. The reference has ``--reference-rows`` rows (default 100,000: Evidently's
large-reference regime, normed Wasserstein and Jensen-Shannon); ``--reference-rows 1000`` gives
its small-reference regime (KS, chi-square, Z-test).

Timed, each ``--repeats`` times (median quoted): building the reference profile (once per
training set, reported separately), scoring the current against the saved profile (what the daily
drift run does: load the JSON, then ``score_drift``), and Evidently's ``Report([DataDriftPreset])``
on the same frames. Evidently runs in a child process bounded by ``--evidently-timeout`` seconds;
if one run exceeds a third of that budget it is run once. Every feature's verdict (and stattest)
must match Evidently's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentops_pipelines import drift  # noqa: E402

TOOLS = ["track_order", "cancel_order", "request_refund", "report_damaged_item",
         "update_shipping_address", "reset_password", "update_payment_method", "billing_inquiry",
         "manage_subscription", "apply_promo_code", "product_information", "technical_support",
         "escalate_to_human"]
PRODUCTS = ["headphones", "blender", "running shoes", "backpack", "phone case", "coffee maker",
            "desk lamp", "yoga mat", "smart watch", "rain jacket", "air fryer", "keyboard"]
NEW_PRODUCTS = ["e-bike", "solar charger", "drone", "robot vacuum"]
DRIFTED = ["confidence", "text_length", "embedding_norm", "account_age_days",
           "failed_payments_30d", "tool", "product"]


def inference_log(n: int, seed: int, drifted: bool) -> pd.DataFrame:
    """``n`` rows of 20 features; ``drifted`` shifts the seven features in ``DRIFTED``."""
    rng = np.random.default_rng(seed)
    d = 1.0 if drifted else 0.0
    tool_p = np.ones(len(TOOLS))
    tool_p[[2, 3]] += 1.5 * d  # more refunds and damaged items
    product_pool = PRODUCTS + NEW_PRODUCTS
    product_p = np.r_[np.ones(len(PRODUCTS)), np.full(len(NEW_PRODUCTS), 0.6 * d)]
    new_customer = rng.random(n) < 0.4 * d
    return pd.DataFrame({
        # float64 → numerical
        "confidence": rng.beta(8 - 2 * d, 2 + 0.5 * d, n),
        "latency_ms": rng.lognormal(5.0, 0.5, n),
        "text_length": rng.gamma(4.0 + 0.5 * d, 15.0, n),
        "non_letter_pct": np.clip(rng.normal(8.0, 2.0, n), 0, None),
        "order_value": rng.lognormal(3.5, 1.0, n),
        "sentiment": rng.normal(0.05 * d, 1.0, n),  # W ≈ 0.05: below the 0.1 threshold
        "embedding_norm": rng.normal(10.0 + 0.13 * d, 1.0, n),  # W ≈ 0.13: just above it
        "uniform_score": rng.random(n),
        # int64 with > 10 distinct values → numerical
        "account_age_days": np.where(new_customer, rng.integers(0, 14, n), rng.integers(30, 1500, n)),
        "days_since_last_order": rng.integers(0, 330, n),
        "requests_7d": rng.poisson(12, n),
        "word_count": rng.poisson(20, n),
        # int64 with <= 10 distinct values → categorical
        "orders_30d": np.minimum(rng.poisson(1.5, n), 9),
        "has_open_order": (rng.random(n) < 0.35).astype(np.int64),
        "failed_payments_30d": (rng.random(n) < 0.08 + 0.15 * d) * rng.integers(1, 4, n),
        "open_tickets": rng.choice(5, n, p=[0.45, 0.25, 0.15, 0.1, 0.05]),
        # strings → categorical
        "plan_tier": np.array(["free", "plus", "pro"], dtype=object)[rng.choice(3, n, p=[0.6, 0.3, 0.1])],
        "tool": np.array(TOOLS, dtype=object)[rng.choice(len(TOOLS), n, p=tool_p / tool_p.sum())],
        "channel": np.array(["chat", "email", "app"], dtype=object)[rng.integers(0, 3, n)],
        "product": np.array(product_pool, dtype=object)[
            rng.choice(len(product_pool), n, p=product_p / product_p.sum())],
    })


def _evidently_child(conn, ref_rows: int, cur_rows: int, seed: int, repeats: int, budget: float):
    warnings.filterwarnings("ignore")
    reference = inference_log(ref_rows, seed, drifted=False)
    current = inference_log(cur_rows, seed + 1, drifted=True)
    columns = list(reference.columns)
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result, _ = drift.run_evidently(reference, current, columns)
        times.append(time.perf_counter() - t0)
        conn.send(("progress", times[-1]))
        if times[-1] > budget / 3:
            break
    conn.send(("done", times, result.to_dict()))
    conn.close()


def run_evidently_bounded(ref_rows: int, cur_rows: int, seed: int, repeats: int, timeout: float):
    """(times, verdicts dict) or (times so far, None) if the budget ran out."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_evidently_child, args=(child, ref_rows, cur_rows, seed, repeats, timeout))
    proc.start()
    deadline = time.monotonic() + timeout
    times: list[float] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not parent.poll(left):
                return times, None
            msg = parent.recv()
            if msg[0] == "progress":
                times.append(msg[1])
            else:
                return msg[1], msg[2]
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="current rows")
    ap.add_argument("--reference-rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--evidently-timeout", type=float, default=600.0, help="seconds, all runs")
    ap.add_argument("--fallback-rows", type=int, nargs="*", default=[500_000, 200_000, 100_000],
                    help="current sizes to try if Evidently cannot finish --rows in time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="write the ## Drift scoring section")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    t0 = time.perf_counter()
    reference = inference_log(args.reference_rows, args.seed, drifted=False)
    current = inference_log(args.rows, args.seed + 1, drifted=True)
    columns = list(reference.columns)
    print(f"data: reference {len(reference):,} rows, current {len(current):,} rows × "
          f"{len(columns)} features (generated in {time.perf_counter() - t0:.1f} s)", flush=True)

    build_times, score_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference_profile.json"
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            profile = drift.build_profile(reference, columns)
            profile.save(path)
            build_times.append(time.perf_counter() - t0)
        profile_bytes = path.stat().st_size
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours = drift.score_drift(drift.ReferenceProfile.load(path), current)
            score_times.append(time.perf_counter() - t0)
    print(f"ours: profile build+save {median(build_times):.3f} s ({profile_bytes / 1e6:.2f} MB JSON), "
          f"load+score {median(score_times):.3f} s", flush=True)

    ev_rows, ev_times, ev = args.rows, [], None
    for rows in [args.rows, *[r for r in args.fallback_rows if r < args.rows]]:
        print(f"evidently: {rows:,} current rows, up to {args.repeats} runs, "
              f"budget {args.evidently_timeout:.0f} s ...", flush=True)
        ev_times, ev = run_evidently_bounded(args.reference_rows, rows, args.seed, args.repeats,
                                             args.evidently_timeout)
        ev_rows = rows
        if ev is not None:
            break
        print(f"evidently did not finish {rows:,} rows within {args.evidently_timeout:.0f} s", flush=True)
    if ev is None:
        print("evidently never finished: no comparison")
        return 1

    if ev_rows != args.rows:  # score the same rows Evidently managed
        current = inference_log(ev_rows, args.seed + 1, drifted=True)
        ours = drift.score_drift(drift.ReferenceProfile.load_from_json if False else profile, current)
    ev_cols = ev["columns"]
    rows_md = []
    all_match = True
    for c in columns:
        o, e = ours.columns[c], ev_cols[c]
        match = o.drifted == e["drifted"] and o.stattest == e["stattest"]
        all_match &= match
        rows_md.append(f"| {c} | {o.kind} | {o.stattest} | {o.score:.4g} | {e['score']:.4g} | "
                       f"{'drift' if o.drifted else '-'} | {'drift' if e['drifted'] else '-'} | "
                       f"{'yes' if match else '**NO**'} |")
    all_match &= ours.dataset_drift == ev["dataset_drift"]
    ours_s, ev_s = median(score_times), median(ev_times)
    speedup = ev_s / ours_s
    per_column = "\n".join(["| feature | kind | stattest | our score | Evidently score | ours | Evidently | match |",
                            "|---|---|---|---:|---:|---|---|---|", *rows_md])
    summary = "\n".join([
        "| | time (median) | runs |",
        "|---|---:|---:|",
        f"| reference profile: build + save JSON ({args.reference_rows:,} rows, once per training set) "
        f"| {median(build_times):.3f} s | {len(build_times)} |",
        f"| ours: load profile + `score_drift` ({ev_rows:,} rows × {len(columns)} features) "
        f"| {ours_s:.3f} s | {len(score_times)} |",
        f"| Evidently `DataDriftPreset` (same frames) | {ev_s:.1f} s | {len(ev_times)} |",
        f"| **speedup** | **{speedup:.0f}×** | |",
        f"| verdicts equal on every feature (+ dataset drift) | **{'yes' if all_match else 'NO'}** "
        f"({ours.n_drifted}/{len(columns)} drifted, dataset drift {ours.dataset_drift}) | |",
    ])
    if ev_rows == args.rows:
        # ours was timed on args.rows; fine
        pass
    print()
    print(summary)
    print()
    print(per_column)
    print(f"\nprofile JSON: {profile_bytes / 1e6:.2f} MB; Evidently runs: {', '.join(f'{t:.1f}' for t in ev_times)} s")

    if args.write:
        cmd = "`.venv/bin/python bench/drift.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`"
        note = ""
        if ev_rows != args.rows:
            note = (f"\nEvidently could not finish {args.rows:,} rows within {args.evidently_timeout:.0f} s; "
                    f"both sides were measured at {ev_rows:,} rows.\n")
        if len(ev_times) < args.repeats:
            note += (f"\nEvidently ran {len(ev_times)} time(s) instead of {args.repeats}: one run took "
                     f"more than a third of the {args.evidently_timeout:.0f} s budget.\n")
        section = "\n".join([
            "## Drift scoring", "",
            f"Command: {cmd.replace(' --write', '').replace('  ', ' ').strip()} (from the project root; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
            f"evidently {drift._evidently_version()}).", "",
            f"Reference {args.reference_rows:,} rows (Evidently's > 1,000-row regime: normed "
            f"Wasserstein / Jensen-Shannon), current {ev_rows:,} rows × {len(columns)} features "
            "(8 float, 4 int with > 10 values, 4 int with ≤ 10 values, 4 string categories; 7 drifted, "
            "2 of them near the 0.1 threshold). Ours loads the saved profile JSON "
            f"({profile_bytes / 1e6:.2f} MB) and scores every row (no sampling).", note, summary, "",
            per_column, "",
        ])
        write_section(ROOT / "BENCHMARKS.md", "## Drift scoring", section)
        print(f"\nwrote the '## Drift scoring' section of {ROOT / 'BENCHMARKS.md'}")
    return 0 if all_match else 2


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) one ``## `` section; re-read right before writing, touch nothing else."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + body.rstrip("\n") + "\n" + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new)


if __name__ == "__main__":
    raise SystemExit(main())
