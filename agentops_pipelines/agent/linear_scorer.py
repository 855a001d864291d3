"""A fitted scikit-learn linear pipeline, scored without scikit-learn's per-call overhead.

Serving predicts one request at a time. For a ``Pipeline([ColumnTransformer, linear model])`` the
arithmetic of one row is a few hundred dictionary lookups and a small dot product (~0.1 ms), but
``Pipeline.decision_function`` spends ~4 ms around it: pandas column selection, input validation
in every transformer, joblib dispatch, sparse stacking. :class:`LinearScorer` reads the fitted
parameters once (vocabularies, idf weights, scaler statistics, one-hot categories, coefficients)
and computes the same decision function directly.

Equivalence is checked, not assumed: :meth:`LinearScorer.compile` scores a few probe rows both ways
and returns ``None`` (callers then keep the pipeline) if any score differs, or if the pipeline has a
part it does not know. Known parts:

- ``ColumnTransformer`` (``remainder="drop"``, no transformer weights) over
- ``TfidfVectorizer`` / ``CountVectorizer`` on a text column, alone or in a ``FeatureUnion``
  (other transformers in the union are called as they are: their own ``transform``),
- ``StandardScaler`` on numeric columns,
- ``OneHotEncoder`` (no ``drop``, no infrequent categories) on categorical columns,
- a final step with ``coef_`` and ``intercept_`` whose decision function is ``X @ coef_.T +
  intercept_`` (``LinearSVC``, ``LogisticRegression``, ``SGDClassifier``, ``RidgeClassifier``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Columns = Mapping[str, Sequence[Any]]  # column name -> one value per row


class Unsupported(Exception):
    """The pipeline has a part the scorer does not reproduce."""


class _Text:
    """Counts or TF-IDF of one text column (one vectorizer's block of the feature vector)."""

    def __init__(self, column: str, vectorizer, weights: np.ndarray):
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

        if type(vectorizer) not in (TfidfVectorizer, CountVectorizer):
            raise Unsupported(f"text block {type(vectorizer).__name__}")
        self.column = column
        self.analyze: Callable[[str], list[str]] = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = dict(vectorizer.vocabulary_)
        self.binary = bool(vectorizer.binary)
        tfidf = isinstance(vectorizer, TfidfVectorizer)
        self.sublinear = tfidf and bool(vectorizer.sublinear_tf)
        self.idf = np.asarray(vectorizer.idf_, dtype=float) if tfidf and vectorizer.use_idf else None
        self.norm = vectorizer.norm if tfidf else None
        if self.norm not in (None, "l1", "l2"):
            raise Unsupported(f"norm {self.norm!r}")
        # One row per term: its contribution to every class score (contiguous for the gather).
        self.weights_t = np.ascontiguousarray(weights.T)

    def add(self, columns: Columns, scores: np.ndarray) -> None:
        vocabulary, analyze = self.vocabulary, self.analyze
        for i, text in enumerate(columns[self.column]):
            counts: dict[int, int] = {}
            for term in analyze(str(text)):
                j = vocabulary.get(term)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            index = np.fromiter(counts, dtype=np.intp, count=len(counts))
            if self.binary:
                values = np.ones(len(counts))
            else:
                values = np.fromiter(counts.values(), dtype=float, count=len(counts))
                if self.sublinear:
                    values = np.log(values) + 1.0
            if self.idf is not None:
                values = values * self.idf[index]
            if self.norm == "l2":
                values = values / np.sqrt(values @ values)
            elif self.norm == "l1":
                values = values / np.abs(values).sum()
            scores[i] += values @ self.weights_t[index]


class _Transformed:
    """Any other text transformer in a union: its own ``transform``, then the dot product."""

    def __init__(self, column: str, transformer, weights: np.ndarray):
        self.column = column
        self.transformer = transformer
        self.weights_t = np.ascontiguousarray(weights.T)

    def add(self, columns: Columns, scores: np.ndarray) -> None:
        x = self.transformer.transform([str(t) for t in columns[self.column]])
        scores += np.asarray(x @ self.weights_t)


class _Scaled:
    """``StandardScaler`` on numeric columns."""

    def __init__(self, names: list[str], scaler, weights: np.ndarray):
        self.names = names
        self.mean = scaler.mean_ if scaler.with_mean else None
        self.scale = scaler.scale_ if scaler.with_std else None
        self.weights_t = np.ascontiguousarray(weights.T)

    def add(self, columns: Columns, scores: np.ndarray) -> None:
        x = np.column_stack([np.asarray(columns[c], dtype=float) for c in self.names])
        if not np.isfinite(x).all():
            bad = [c for k, c in enumerate(self.names) if not np.isfinite(x[:, k]).all()]
            raise ValueError(f"Input contains NaN or infinity in column(s) {bad}")
        if self.mean is not None:
            x = x - self.mean
        if self.scale is not None:
            x = x / self.scale
        scores += x @ self.weights_t


class _OneHot:
    """``OneHotEncoder(handle_unknown="ignore")``: an unseen category adds nothing."""

    def __init__(self, names: list[str], encoder, weights: np.ndarray):
        if encoder.drop is not None or getattr(encoder, "_infrequent_enabled", False):
            raise Unsupported("one-hot encoder with drop or infrequent categories")
        if encoder.handle_unknown not in ("ignore", "infrequent_if_exist"):
            raise Unsupported(f"handle_unknown={encoder.handle_unknown!r}")
        self.names = names
        self.lookup: list[dict[Any, int]] = []
        offset = 0
        for categories in encoder.categories_:
            self.lookup.append({c: offset + k for k, c in enumerate(categories.tolist())})
            offset += len(categories)
        self.weights_t = np.ascontiguousarray(weights.T)

    def add(self, columns: Columns, scores: np.ndarray) -> None:
        for name, lookup in zip(self.names, self.lookup, strict=True):
            for i, value in enumerate(columns[name]):
                j = lookup.get(value)
                if j is not None:
                    scores[i] += self.weights_t[j]


class LinearScorer:
    """``pipeline.decision_function`` for rows given as columns (a DataFrame or a dict of lists)."""

    def __init__(self, blocks: list, intercept: np.ndarray, binary: bool):
        self.blocks = blocks
        self.intercept = intercept
        self.binary = binary

    def decision_function(self, columns: Columns, n: int) -> np.ndarray:
        scores = np.tile(self.intercept, (n, 1))
        for block in self.blocks:
            block.add(columns, scores)
        return scores.ravel() if self.binary else scores

    @classmethod
    def compile(cls, pipeline, probe: Columns | None = None) -> LinearScorer | None:
        """The scorer for ``pipeline``, or ``None`` when it has an unknown part or the probe rows
        do not score the same both ways (then keep calling the pipeline)."""
        try:
            scorer = cls._build(pipeline)
        except Unsupported as e:
            log.info("scoring with the scikit-learn pipeline: %s is not compiled", e)
            return None
        if probe is not None and not scorer.agrees_with(pipeline, probe):
            log.warning("the compiled scorer disagrees with the pipeline on probe rows; not used")
            return None
        return scorer

    def agrees_with(self, pipeline, probe: Columns) -> bool:
        import pandas as pd

        frame = pd.DataFrame({k: list(v) for k, v in probe.items()})
        expected = np.asarray(pipeline.decision_function(frame), dtype=float)
        got = self.decision_function(probe, len(frame))
        return expected.shape == got.shape and np.allclose(expected, got, rtol=1e-9, atol=1e-9)

    @classmethod
    def _build(cls, pipeline) -> LinearScorer:
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import FeatureUnion, Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
            raise Unsupported("a pipeline other than [ColumnTransformer, linear model]")
        features, model = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(features, ColumnTransformer):
            raise Unsupported(f"first step {type(features).__name__}")
        coef = getattr(model, "coef_", None)
        intercept = getattr(model, "intercept_", None)
        if coef is None or intercept is None or getattr(coef, "ndim", 0) != 2:
            raise Unsupported(f"final step {type(model).__name__}")
        if features.transformer_weights or features.remainder != "drop":
            raise Unsupported("ColumnTransformer with weights or a remainder")
        coef = np.asarray(coef.toarray() if hasattr(coef, "toarray") else coef, dtype=float)
        blocks: list = []
        for name, transformer, cols in features.transformers_:
            if name == "remainder" or transformer == "drop":
                continue
            where = features.output_indices_[name]
            weights = coef[:, where]
            if isinstance(cols, str):  # a 1-D column: text
                parts = (
                    [(t, _width(t)) for _, t in transformer.transformer_list]
                    if isinstance(transformer, FeatureUnion) else [(transformer, None)]
                )  # fmt: skip
                if isinstance(transformer, FeatureUnion) and transformer.transformer_weights:
                    raise Unsupported("FeatureUnion with transformer weights")
                start = 0
                for part, width in parts:
                    width = width if width is not None else weights.shape[1] - start
                    sub = weights[:, start:start + width]
                    try:
                        blocks.append(_Text(cols, part, sub))
                    except Unsupported:
                        if len(parts) == 1:
                            raise
                        blocks.append(_Transformed(cols, part, sub))
                    start += width
                if start != weights.shape[1]:
                    raise Unsupported(f"text block {name!r} widths do not add up")
            elif isinstance(transformer, StandardScaler):
                blocks.append(_Scaled(list(cols), transformer, weights))
            elif isinstance(transformer, OneHotEncoder):
                blocks.append(_OneHot(list(cols), transformer, weights))
            else:
                raise Unsupported(f"transformer {type(transformer).__name__} on {cols!r}")
        return cls(blocks, np.asarray(intercept, dtype=float).ravel(), binary=coef.shape[0] == 1)


def _width(transformer) -> int:
    vocabulary = getattr(transformer, "vocabulary_", None)
    if vocabulary is not None:
        return len(vocabulary)
    try:
        return int(transformer.transform(["probe"]).shape[1])
    except Exception as e:
        raise Unsupported(f"cannot tell the width of {type(transformer).__name__}: {e}") from None
