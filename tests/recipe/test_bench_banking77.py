"""The BANKING77 benchmarks' own logic: scoring a test file someone holds, and the learning curve.

Both run the recipe on TF-IDF alone here (seconds) on a stratified sample of the real file; the
figures in BENCHMARKS.md come from the same code on the whole file with the default recipe.
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agentops_pipelines.agent.recipes import train_text_router

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(banking77, tmp_path_factory) -> tuple[Path, Path]:
    """(train.csv, test.csv) in BANKING77's own columns: 1,540 and 385 real requests."""
    from sklearn.model_selection import train_test_split

    sample = banking77.groupby("tool", group_keys=False).sample(n=25, random_state=3)
    train, test = train_test_split(sample, test_size=0.2, stratify=sample["tool"], random_state=3)
    folder = tmp_path_factory.mktemp("banking77-bench")
    for name, frame in (("train", train), ("test", test)):
        frame.rename(columns={"tool": "category"}).to_csv(folder / f"{name}.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


def test_the_router_bench_trains_on_every_row_then_scores_the_test_file(files, capsys):
    train_csv, test_csv = files
    bench = bench_module("banking77_router")
    assert bench.main(["--routers", "recipe", "--data", str(train_csv), "--test", str(test_csv),
                       "--latency-requests", "5"]) == 0
    out = capsys.readouterr().out
    printed = re.search(r"split=test\s+router=recipe\s+accuracy=([\d.]+)\s+balanced=([\d.]+)", out)
    assert printed, out

    train = pd.read_csv(train_csv).rename(columns={"category": "tool"})
    test = pd.read_csv(test_csv).rename(columns={"category": "tool"})
    router = train_text_router(train, {"embeddings": 0})  # every training row, as the bar is read
    tools, _ = router.predict_columns({"text": test["text"].tolist()}, len(test))
    expected = float((np.asarray(tools) == test["tool"].to_numpy()).mean())
    assert float(printed.group(1)) == round(expected, 4)
    assert "split=0" not in out  # no held-out split when a test file is given


def test_the_router_bench_cross_validates_every_row_once(files, capsys):
    from sklearn.model_selection import StratifiedKFold

    bench = bench_module("banking77_router")
    assert bench.main(["--routers", "recipe", "--data", str(files[0]), "--folds", "3",
                       "--latency-requests", "5"]) == 0
    printed = re.findall(r"split=fold(\d)\s+router=recipe\s+accuracy=([\d.]+)", capsys.readouterr().out)
    assert [int(i) for i, _ in printed] == [0, 1, 2]
    train = pd.read_csv(files[0]).rename(columns={"category": "tool"})
    fit, test = next(StratifiedKFold(3, shuffle=True, random_state=0).split(train, train["tool"]))
    router = train_text_router(train.iloc[fit].reset_index(drop=True), {"embeddings": 0})
    tools, _ = router.predict_columns({"text": train["text"].iloc[test].tolist()}, len(test))
    assert float(printed[0][1]) == round(float((np.asarray(tools) == train["tool"].iloc[test].to_numpy()).mean()), 4)
    assert bench.main(["--data", str(files[0]), "--folds", "1"]) == 2


def test_the_router_bench_refuses_a_missing_test_file(files, tmp_path, capsys):
    bench = bench_module("banking77_router")
    assert bench.main(["--data", str(files[0]), "--test", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_the_power_law_is_recovered_from_its_own_points():
    curve = bench_module("banking77_learning_curve")
    sizes = [4001, 5001, 6001, 7001, 8002]
    a, b = curve.power_law(sizes, [0.93 * n ** -0.29 for n in sizes])
    assert a == pytest.approx(0.93, rel=1e-9) and b == pytest.approx(0.29, rel=1e-9)


def test_the_learning_curve_extrapolates_its_measured_means_to_the_whole_file(files, capsys):
    curve = bench_module("banking77_learning_curve")
    assert curve.main(["--data", str(files[0]), "--routers", "tfidf", "--splits", "0",
                       "--fractions", "0.5", "1.0"]) == 0
    out = capsys.readouterr().out
    means = {int(rows): float(acc) for rows, acc in
             re.findall(r"^\| tfidf\s+\|\s+(\d+) \|\s+([\d.]+) \|", out, re.MULTILINE)}
    assert len(means) == 2, out
    a, b = curve.power_law(list(means), [1 - v for v in means.values()])
    full = len(pd.read_csv(files[0]))
    line = re.search(rf"tfidf\s+accuracy\s+.*at n = {full} \(all training rows\): ([\d.]+)", out)
    assert line, out
    assert float(line.group(1)) == pytest.approx(1 - a * full ** -b, abs=1e-4)


def test_the_learning_curve_refuses_a_fraction_outside_0_1(files, capsys):
    curve = bench_module("banking77_learning_curve")
    assert curve.main(["--data", str(files[0]), "--fractions", "0", "1.0"]) == 2
    assert "--fractions" in capsys.readouterr().err
