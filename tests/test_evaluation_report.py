"""What a reviewer reads: rounded numbers, candidate-vs-champion deltas, figures as real PNGs."""

import base64
import io

import numpy as np
import pandas as pd
import pytest

from agentops_pipelines import plots
from agentops_pipelines.evaluation import (
    classification_metrics,
    comparison,
    comparison_markdown,
    per_tool_comparison,
)

TRUE = ["a", "a", "b", "b", "c", "c", "c", "a"]
CAND = ["a", "a", "b", "c", "c", "c", "c", "a"]
CHAMP = ["a", "b", "b", "c", "a", "c", "c", "b"]


def image(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_comparison_rounds_and_subtracts():
    cand = classification_metrics(TRUE, CAND, "c")
    champ = classification_metrics(TRUE, CHAMP, "c")
    rows = comparison(cand, champ)
    assert rows["accuracy"] == {"candidate": 0.875, "champion": 0.5, "delta": 0.375}
    assert rows["macro_f1"]["candidate"] == round(cand["macro_f1"], 4)
    assert rows["macro_f1"]["delta"] == round(rows["macro_f1"]["candidate"] - rows["macro_f1"]["champion"], 4)
    text = comparison_markdown(rows)
    assert "| accuracy | 0.8750 | 0.5000 | +0.3750 |" in text
    alone = comparison(cand, None)
    assert alone["accuracy"] == {"candidate": 0.875, "champion": None, "delta": None}
    assert "| accuracy | 0.8750 | – | – |" in comparison_markdown(alone)


def test_per_tool_table_has_the_champions_f1_and_the_delta():
    cand = classification_metrics(TRUE, CAND, "c")["per_tool"]
    champ = classification_metrics(TRUE, CHAMP, "c")["per_tool"]
    table = per_tool_comparison(cand, champ).set_index("tool")
    assert list(table.columns) == ["precision", "recall", "f1", "support", "champion_f1", "delta_f1"]
    assert table.loc["b", "delta_f1"] == pytest.approx(table.loc["b", "f1"] - table.loc["b", "champion_f1"], abs=1e-3)
    assert (table[["precision", "recall", "f1"]] == table[["precision", "recall", "f1"]].round(3)).all().all()


@pytest.mark.parametrize("make", [
    lambda: plots.per_tool_f1(classification_metrics(TRUE, CAND, None)["per_tool"],
                              classification_metrics(TRUE, CHAMP, None)["per_tool"]),
    lambda: plots.per_tool_f1(classification_metrics(TRUE, CAND, None)["per_tool"], None),
    lambda: plots.confusion_matrix(TRUE, CAND, ["a", "b", "c"]),
    lambda: plots.calibration_curve(np.linspace(0.2, 0.99, 8), np.array(TRUE) == np.array(CAND)),
    lambda: plots.latency_histogram(list(np.random.default_rng(0).lognormal(0, 0.3, 200)), 1.0, 2.1),
    lambda: plots.drift_strength({"tool": {"kind": "distance", "score": 0.31, "threshold": 0.1, "drifted": True, "stattest": "psi"},
                                  "age": {"kind": "p_value", "score": 0.4, "threshold": 0.05, "drifted": False, "stattest": "ks"}}),
], ids=["f1-vs-champion", "f1-alone", "confusion", "calibration", "latency", "drift"])
def test_figures_are_pngs_with_something_drawn(make):
    png = make()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image(png)
    assert pixels.shape[0] > 150 and pixels.shape[1] > 250
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_markdown_embeds_each_figure_as_a_data_uri():
    png = plots.confusion_matrix(TRUE, CAND, ["a", "b", "c"])
    text = plots.markdown_images({"Confusion matrix": png, "Again": png})
    assert text.count("](data:image/png;base64,") == 2
    encoded = text.split("](data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(encoded) == png
    assert text.startswith("### Confusion matrix")


def test_drift_ratio_reads_the_same_way_for_p_values_and_distances():
    assert plots.drift_ratio({"kind": "distance", "score": 0.3, "threshold": 0.1}) == pytest.approx(3.0)
    assert plots.drift_ratio({"kind": "p_value", "score": 0.005, "threshold": 0.05}) == pytest.approx(10.0)
    assert plots.drift_ratio({"kind": "p_value", "score": 0.5, "threshold": 0.05}) == pytest.approx(0.1)
    assert plots.drift_ratio({"kind": "p_value", "score": 0.0, "threshold": 0.05}) == 1e3


def test_latency_keeps_its_samples():
    from agentops_pipelines.evaluation import latency_ms

    out = latency_ms(lambda row: row, pd.DataFrame({"x": range(5)}), n=5)
    assert len(out["samples"]) == 5 and out["p50"] <= out["p99"]


def test_many_tools_keep_the_figures_readable():
    rng = np.random.default_rng(1)
    tools = [f"intent_{i:02d}" for i in range(77)]  # Banking77's size
    y_true = rng.choice(tools, 3000)
    y_pred = np.where(rng.random(3000) < 0.9, y_true, rng.choice(tools, 3000))
    cand = classification_metrics(y_true, y_pred, None)["per_tool"]
    champ = classification_metrics(y_true, np.where(rng.random(3000) < 0.8, y_true, rng.choice(tools, 3000)), None)["per_tool"]
    for png in (plots.confusion_matrix(y_true, y_pred, tools), plots.per_tool_f1(cand, champ),
                plots.per_tool_f1(cand, None)):
        height, width = image(png).shape[:2]
        assert width <= 1200 and height <= 1200, (width, height)
        assert len(png) < 200_000  # it travels as base64 in the asset's metadata
