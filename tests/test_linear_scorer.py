"""The compiled scorer must score exactly like the scikit-learn pipeline it was compiled from."""

import pickle
from datetime import date

import numpy as np
import pandas as pd
import pytest

from agentops_pipelines.agent.linear_scorer import LinearScorer
from agentops_pipelines.agent.support_desk import NUMERIC_FEATURES, SupportDeskAgent
from agentops_pipelines.data.generator import customer_snapshot, generate_requests


def _with_features(requests: pd.DataFrame, day: date) -> pd.DataFrame:
    frame = requests.merge(customer_snapshot(day), on="customer_id", how="left")
    rng = np.random.default_rng(3)
    for col in NUMERIC_FEATURES:
        if col not in frame:
            frame[col] = rng.integers(0, 9, size=len(frame))
    return frame


@pytest.fixture(scope="module")
def router():
    train = _with_features(generate_requests(date(2026, 11, 1), n=600), date(2026, 11, 1))
    return SupportDeskAgent().train(train, {})


@pytest.fixture(scope="module")
def requests() -> pd.DataFrame:
    """Held-out requests plus the awkward ones: empty, unicode, an unseen plan, huge numbers."""
    day = date(2026, 11, 5)
    frame = _with_features(generate_requests(day, n=200, seed=11), day)
    odd = frame.head(4).copy()
    odd["text"] = ["", "ÄÖÜ ñ 123 ???", "REFUND!!! refund refund", "x" * 3000]
    odd["plan_tier"] = ["platinum", "unknown", None, "free"]
    odd["orders_30d"] = [10**6, -5, 0, 3]
    return pd.concat([frame, odd], ignore_index=True)


def _pipeline_scores(router, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(router.pipeline.decision_function(router._frame(frame)))


def test_scores_match_the_pipeline(router, requests):
    scorer = router.scorer()
    assert scorer is not None, "the support-desk pipeline must compile"
    columns = {c: requests[c].tolist() for c in requests.columns}
    got = scorer.decision_function(columns, len(requests))
    expected = _pipeline_scores(router, requests)
    assert got.shape == expected.shape == (len(requests), len(router.pipeline.classes_))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    tools, confidence = router.predict_columns(columns, len(requests))
    assert tools == list(router.pipeline.predict(router._frame(requests)))
    assert all(0.0 < c <= 1.0 for c in confidence)


def test_missing_feature_columns_get_the_neutral_values(router, requests):
    text_only = requests[["text"]]
    got = router.decision_function({"text": text_only["text"].tolist()}, len(text_only))
    np.testing.assert_allclose(got, _pipeline_scores(router, text_only), rtol=1e-9, atol=1e-9)


def test_a_missing_numeric_value_is_refused_by_name(router, requests):
    bad = {c: requests[c].head(2).tolist() for c in requests.columns}
    bad["open_tickets"] = [1, float("nan")]
    with pytest.raises(ValueError, match="open_tickets"):
        router.decision_function(bad, 2)


def test_pickles_without_the_scorer_and_recompiles(router, requests):
    router.scorer()
    copy = pickle.loads(pickle.dumps(router))
    assert "_scorer" not in copy.__dict__  # the logged model holds the pipeline only
    head = requests.head(20)
    assert copy.predict(head)["tool"].tolist() == router.predict(head)["tool"].tolist()


def test_without_a_scorer_the_pipeline_scores(router, requests):
    copy = pickle.loads(pickle.dumps(router))
    copy._scorer = None  # as when compile() refuses the pipeline
    head = requests.head(30)
    expected = router.pipeline.predict(router._frame(head)).tolist()
    assert copy.predict(head)["tool"].tolist() == expected
    text_only = {"text": head["text"].tolist()}  # missing features: the neutral values
    np.testing.assert_allclose(copy.decision_function(text_only, 30), router.decision_function(text_only, 30),
                               rtol=1e-9, atol=1e-9)


def test_two_classes_give_one_margin_like_the_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    frame = pd.DataFrame({"text": ["refund please", "where is my parcel", "money back", "track it"] * 5,
                          "n": list(range(20))})
    pipeline = Pipeline([
        ("features", ColumnTransformer([("text", CountVectorizer(binary=True), "text"),
                                        ("numeric", StandardScaler(with_mean=False), ["n"])])),
        ("model", LogisticRegression()),
    ]).fit(frame, ["refund", "track"] * 10)
    scorer = LinearScorer.compile(pipeline, {"text": ["refund"], "n": [3]})
    assert scorer is not None
    columns = {"text": frame["text"].tolist(), "n": frame["n"].tolist()}
    got = scorer.decision_function(columns, len(frame))
    assert got.ndim == 1
    np.testing.assert_allclose(got, pipeline.decision_function(frame), rtol=1e-9, atol=1e-9)


def test_unknown_parts_keep_the_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler
    from sklearn.svm import LinearSVC

    frame = pd.DataFrame({"text": ["alpha beta", "beta gamma", "gamma delta", "delta alpha"] * 3, "n": list(range(12))})
    pipeline = Pipeline([
        ("features", ColumnTransformer([("text", TfidfVectorizer(), "text"), ("n", MinMaxScaler(), ["n"])])),
        ("svm", LinearSVC()),
    ]).fit(frame, ["x", "y", "z", "x"] * 3)
    assert LinearScorer.compile(pipeline) is None


def test_a_scorer_that_disagrees_is_not_used(router, requests):
    scorer = LinearScorer.compile(router.pipeline)
    probe = {c: requests[c].head(3).tolist() for c in requests.columns}
    assert scorer.agrees_with(router.pipeline, probe)
    scorer.intercept = scorer.intercept + 1e-3
    assert not scorer.agrees_with(router.pipeline, probe)


def test_embedding_blocks_are_scored_by_their_own_transform():
    train = generate_requests(date(2026, 11, 1), n=150)
    router = SupportDeskAgent().train(train, {"embeddings": 1, "use_features": 0})
    scorer = router.scorer()
    assert scorer is not None
    assert any(type(b).__name__ == "_Transformed" for b in scorer.blocks)
    held_out = generate_requests(date(2026, 11, 6), n=40, seed=5)
    got = scorer.decision_function({"text": held_out["text"].tolist()}, len(held_out))
    np.testing.assert_allclose(got, _pipeline_scores(router, held_out), rtol=1e-7, atol=1e-7)
