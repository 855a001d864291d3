"""Drift scoring: our per-column verdicts equal Evidently's DataDriftPreset on the same data."""

from __future__ import annotations

import json
import math
import warnings
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from agentops_pipelines import drift
from agentops_pipelines.data.generator import customer_snapshot, generate_requests

CUSTOMER = ["account_age_days", "orders_30d", "has_open_order", "days_since_last_order",
            "failed_payments_30d", "open_tickets", "refunds_90d", "requests_7d", "escalations_30d",
            "plan_tier"]
FEATURES = [*CUSTOMER, "tool", "confidence"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def inference_log(day: date, n: int, level: float) -> pd.DataFrame:
    """A day of the inference log: requests, the customer's features, the predicted tool and a
    confidence (synthetic, lower and wider under drift), plus two synthetic activity counts."""
    requests = generate_requests(day, n, drift=level)
    customers = customer_snapshot(day, drift=level)
    log = requests.merge(customers, on="customer_id", how="left")
    rng = np.random.default_rng(day.toordinal() * 10 + round(level * 10))
    log["confidence"] = rng.beta(8 - 4 * level, 2 + 2 * level, size=len(log))
    log["requests_7d"] = rng.poisson(3 + 3 * level, size=len(log))
    log["escalations_30d"] = rng.poisson(0.2 + 0.5 * level, size=len(log))
    return log


@pytest.fixture(scope="module")
def logs() -> dict[str, pd.DataFrame]:
    start = date(2024, 3, 4)
    large = pd.concat([inference_log(start + timedelta(days=d), 800, 0.0) for d in range(3)],
                      ignore_index=True)
    return {
        "large": large,  # 2,400 rows: Evidently's Wasserstein / Jensen-Shannon regime
        "small": large.sample(700, random_state=3).reset_index(drop=True),  # KS / chi-square / Z
        "no_drift": inference_log(start + timedelta(days=10), 800, 0.0),
        "drift": inference_log(start + timedelta(days=10), 800, 0.8),
    }


def assert_same(ours: drift.DriftResult, theirs: drift.DriftResult) -> None:
    assert list(ours.columns) == list(theirs.columns)
    for c, o in ours.columns.items():
        e = theirs.columns[c]
        assert (c, o.stattest, o.threshold, o.drifted) == (c, e.stattest, e.threshold, e.drifted)
        assert o.kind == e.kind, c
        assert math.isclose(o.score, e.score, rel_tol=1e-9, abs_tol=1e-12), (c, o.score, e.score)
    assert (ours.n_drifted, ours.dataset_drift) == (theirs.n_drifted, theirs.dataset_drift)
    assert ours.share_drifted == pytest.approx(theirs.share_drifted)


def compare(profile: drift.ReferenceProfile, reference: pd.DataFrame, current: pd.DataFrame,
            options: drift.DriftOptions | None = None) -> tuple[drift.DriftResult, drift.DriftResult]:
    ours = drift.score_drift(profile, current, options=options)
    ref, columns = drift.with_text_descriptors(reference, profile, reference=True)
    cur, _ = drift.with_text_descriptors(current, profile)
    theirs, _ = drift.run_evidently(ref, cur, columns, options)
    assert_same(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("regime", ["large", "small"])
@pytest.mark.parametrize("day", ["no_drift", "drift"])
def test_realistic_log_matches_evidently(logs, regime, day):
    reference, current = logs[regime], logs[day]
    profile = drift.build_profile(reference, FEATURES, text_columns=["text"])
    ours, _ = compare(profile, reference, current)

    family = {"large": {"wasserstein", "jensenshannon"}, "small": {"ks", "chisquare", "z"}}[regime]
    # oov_pct is measured on the held-out half of the reference: 350 values in the large one too
    assert {r.stattest for c, r in ours.columns.items() if c != "text.oov_pct"} <= family
    assert {r.kind for r in ours.columns.values()} == {drift.NUMERICAL, drift.CATEGORICAL}
    if day == "no_drift":
        assert not ours.dataset_drift and ours.share_drifted < 0.2
    else:
        assert ours.dataset_drift
        assert {"account_age_days", "refunds_90d", "failed_payments_30d", "confidence",
                "text.length", "text.word_count"} <= set(ours.drifted_columns)


def synthetic(n: int, seed: int, shifted: bool) -> pd.DataFrame:
    """One column per branch of Evidently's choice of test and of its binning."""
    rng = np.random.default_rng(seed)
    s = 1.0 if shifted else 0.0
    with_gaps = rng.normal(0.3 * s, 1, n)
    with_gaps[rng.random(n) < 0.05] = np.nan
    with_gaps[:3] = [np.inf, -np.inf, np.nan]
    frame = {
        "normal": rng.normal(0.3 * s, 1, n),  # ks / wasserstein
        "with_nan_inf": with_gaps,  # NaN and ±inf are dropped before testing
        "near_threshold_a": rng.normal(0.095 * s, 1, n),  # Wasserstein ≈ 0.1
        "near_threshold_b": rng.normal(0.105 * s, 1, n),
        "float_five_values": rng.choice([0.0, 0.5, 1.0, 1.5, 2.0], n, p=[.3, .3, .2, .1, .1] if not s else [.2, .3, .2, .2, .1]),
        "float_binary": (rng.random(n) < 0.3 + 0.1 * s).astype(float),  # z-test / JS
        "float_constant": np.full(n, 2.0) if not s else rng.choice([2.0, 2.5], n, p=[0.9, 0.1]),
        # a constant reference, a barely varying current: Wasserstein's std floor (0.001)
        "float_floor": np.ones(n) if not s else 1 + rng.normal(0, 1e-4, n),
        "int_few": rng.integers(0, 4 + int(s), n),  # <= 10 values: categorical; a new value
        "int_many": rng.integers(0, 60, n) + int(5 * s),  # > 10 values: numerical
        "int_binary": (rng.random(n) < 0.5).astype(np.int64),
        "bool": rng.random(n) < 0.4 + 0.2 * s,
        "category": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c", "unused"]),
        "string_new_value": rng.choice(["x", "y", "z"] + (["new"] if s else []), n),
        "string_lost_value": rng.choice(["x", "y"] if s else ["x", "y", "z"], n),
        "string_binary": rng.choice(["yes", "no"], n, p=[0.5 - 0.1 * s, 0.5 + 0.1 * s]),
    }
    # The current decides the kind: 11 distinct ints in the reference (numerical), 10 in the
    # shifted current (categorical) — Evidently then runs a categorical test on both.
    frame["int_kind_flip"] = rng.integers(0, 10 if s else 11, n)
    return pd.DataFrame(frame)


@pytest.mark.parametrize(("ref_rows", "cur_rows"), [(800, 12_000), (5_000, 3_000)])
def test_synthetic_branches_match_evidently(ref_rows, cur_rows):
    # 800 reference rows: KS (asymptotic p-value: current > 10,000), chi-square, Z-test;
    # 5,000: Wasserstein (constant reference: std floored at 0.001), Jensen-Shannon.
    reference, current = synthetic(ref_rows, 1, False), synthetic(cur_rows, 2, True)
    profile = drift.build_profile(reference, list(reference.columns))
    assert profile.columns["int_kind_flip"].kind == drift.NUMERICAL
    ours, _ = compare(profile, reference, current)
    assert ours.columns["int_kind_flip"].kind == drift.CATEGORICAL
    assert ours.columns["with_nan_inf"].n_reference < ref_rows - 2
    expected = ({"normal": "ks", "float_five_values": "chisquare", "float_binary": "z", "bool": "z",
                 "string_binary": "z", "int_few": "chisquare"} if ref_rows <= 1000 else
                {"normal": "wasserstein", "float_five_values": "jensenshannon",
                 "float_constant": "jensenshannon", "int_many": "wasserstein",
                 "float_floor": "wasserstein",
                 "bool": "jensenshannon"})
    assert {c: ours.columns[c].stattest for c in expected} == expected


def test_options_match_evidently():
    """Explicit methods and thresholds, Sturges binning (PSI / Jensen-Shannon on > 20 values)."""
    reference, current = synthetic(3_000, 3, False), synthetic(2_000, 4, True)
    columns = ["normal", "near_threshold_a", "int_many", "int_few", "float_five_values",
               "string_new_value", "category", "string_binary"]
    profile = drift.build_profile(reference, columns)
    options = drift.DriftOptions(
        drift_share=0.3, num_method="psi", cat_threshold=0.02,
        per_column_method={"near_threshold_a": "jensenshannon", "int_many": "ks",
                           "string_new_value": "psi", "category": "chisquare"},
        per_column_threshold={"normal": 0.2, "int_many": 0.01})
    ours, _ = compare(profile, reference, current, options)
    assert [ours.columns[c].stattest for c in ("normal", "near_threshold_a", "int_many", "string_new_value")] == \
        ["psi", "jensenshannon", "ks", "psi"]
    assert ours.columns["normal"].threshold == 0.2 and ours.columns["int_few"].threshold == 0.02
    assert ours.drift_share == 0.3


def test_sampling_the_current_would_change_verdicts():
    """Why ``score_drift`` reads every row: p-values depend on the current's size. A reference of
    800 rows whose shares are a little off (52.5/30/17.5%) and a current of 100,000 rows with
    shares 50/30/20%: chi-square grows with the current's size, so Evidently flags drift and so
    do we; a 1,000-row sample with exactly the same shares would pass (p ≈ 0.09)."""
    reference = pd.DataFrame({"plan": np.repeat(["free", "plus", "pro"], [420, 240, 140])})
    current = pd.DataFrame({"plan": np.repeat(["free", "plus", "pro"], [50_000, 30_000, 20_000])})
    profile = drift.build_profile(reference, ["plan"])
    full, _ = compare(profile, reference, current)
    sample = drift.score_drift(profile, current.iloc[::100])  # 500/300/200 rows
    assert full.columns["plan"].stattest == sample.columns["plan"].stattest == "chisquare"
    assert full.columns["plan"].drifted and not sample.columns["plan"].drifted
    assert sample.columns["plan"].score == pytest.approx(math.exp(-1000 * 0.0047619 / 2), rel=1e-3)


def test_profile_json_round_trip(tmp_path, logs):
    reference = logs["large"]
    profile = drift.build_profile(reference, FEATURES, text_columns=["text"])
    path = profile.save(tmp_path / "reference_profile.json")
    loaded = drift.ReferenceProfile.load(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == drift.PROFILE_FORMAT and doc["n_rows"] == len(reference)
    assert doc["columns"]["confidence"]["values"]["zlib_base64"]  # > 1,000 floats: packed
    assert doc["columns"]["plan_tier"]["values"] == ["free", "plus", "pro"]
    assert doc["columns"]["plan_tier"]["expected_stattest"] == "jensenshannon"
    assert doc["text_columns"]["text"]["descriptors"] == drift.descriptor_columns("text")
    assert loaded.feature_columns == profile.feature_columns
    assert loaded.text_columns == profile.text_columns
    for c, p in profile.columns.items():
        q = loaded.columns[c]
        assert (q.dtype, q.kind, q.n, q.std) == (p.dtype, p.kind, p.n, p.std)
        assert q.values.dtype.kind == p.values.dtype.kind or p.values.dtype.kind in "iu"
        assert q.values.tolist() == p.values.tolist() and q.counts.tolist() == p.counts.tolist()
    current = logs["drift"]
    assert drift.score_drift(loaded, current) == drift.score_drift(profile, current)


def test_text_descriptors_are_defined_like_evidentlys():
    from evidently.legacy.features.non_letter_character_percentage_feature import (
        NonLetterCharacterPercentage,
    )
    from evidently.legacy.features.text_length_feature import TextLength
    from evidently.legacy.features.word_count_feature import WordCount

    texts = generate_requests(date(2024, 3, 1), 300, drift=0.8)["text"].tolist()
    texts += ["Hello, world!", "x", "café № 42 — ok?", "   "]
    d = drift.text_descriptors(texts, vocabulary={"hello", "ok"})
    assert d["length"].tolist() == [TextLength(column_name="t").apply(t) for t in texts]
    assert d["word_count"].tolist() == [WordCount(column_name="t").apply(t) for t in texts]
    expected = [NonLetterCharacterPercentage(column_name="t").apply(t) for t in texts]
    assert d["non_letter_pct"].to_numpy() == pytest.approx(expected)
    assert d.loc[len(texts) - 4, "oov_pct"] == 50.0  # "hello" known, "world" not
    assert list(drift.text_descriptors(["", None], prefix="t.").iloc[1]) == [0.0, 0.0, 0.0]
    assert all(d.dtypes == np.float64)


def test_errors_are_clear(logs):
    reference = logs["small"]
    profile = drift.build_profile(reference, ["confidence", "plan_tier"], text_columns=["text"])
    current = logs["no_drift"]
    with pytest.raises(ValueError, match=r"\['plan_tier'\] missing from the current data"):
        drift.score_drift(profile, current.drop(columns=["plan_tier"]))
    with pytest.raises(ValueError, match=r"\['text'\] missing from the current data"):
        drift.score_drift(profile, current.drop(columns=["text"]))
    with pytest.raises(ValueError, match="current data is empty"):
        drift.score_drift(profile, current.iloc[:0])
    with pytest.raises(ValueError, match="not in the reference profile"):
        drift.score_drift(profile, current, columns=["tool"])
    with pytest.raises(ValueError, match="no non-null finite value"):
        drift.score_drift(profile, current.assign(confidence=np.nan))
    with pytest.raises(ValueError, match="stattest 'ks' does not apply to categorical"):
        drift.score_drift(profile, current, options=drift.DriftOptions(per_column_method={"plan_tier": "ks"}))
    with pytest.raises(ValueError, match="unsupported stattest"):
        drift.score_drift(profile, current, options=drift.DriftOptions(method="bogus"))
    with pytest.raises(ValueError, match="text_columns"):
        drift.build_profile(reference, ["text"])  # free text must go through its descriptors
    with pytest.raises(ValueError, match="missing from the reference"):
        drift.build_profile(reference, ["nope"])
    with pytest.raises(ValueError, match="not a version-1"):
        drift.ReferenceProfile.from_json('{"format": "something else"}')
    with pytest.raises(TypeError):
        drift.score_drift(profile, current.to_dict())


def test_evidently_report_writes_html(tmp_path, logs):
    reference, current = logs["large"], logs["drift"]
    profile = drift.build_profile(reference, FEATURES, text_columns=["text"])
    html = tmp_path / "drift.html"
    result = drift.evidently_report(reference, current, [*FEATURES, "text"], html,
                                    sample_size=1_500, profile=profile)
    assert html.stat().st_size > 10_000 and "<html" in html.read_text()[:2000].lower()
    assert list(result.columns) == profile.feature_columns
    assert result.dataset_drift  # informational (a sample), but this drift is not subtle
    with pytest.raises(ValueError, match="sample_size must exceed 1000"):
        drift.evidently_report(reference, current, FEATURES, html, sample_size=500)
