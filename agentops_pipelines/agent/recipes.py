"""The default recipe: a text router chosen on validation data, calibrated, abstaining, refit on all.

Every agent that does not bring its own model (the support desk, the YAML-configured agents) trains
with :func:`train_text_router`. The steps, and why each is there:

1. **Features only where declared.** The text goes through word and character TF-IDF and MiniLM
   sentence embeddings run by ONNX Runtime with int8 weights (the default, chosen on accuracy
   within the serving budget: +2.9 points on BANKING77 for ~1.5 ms more CPU per request in a
   loop, ~3 ms served; ``embeddings: 0`` for TF-IDF alone; BENCHMARKS.md); customer features are added only
   for the columns the agent declares. Simulated features on data that has none cost accuracy
   (~0.8 points on BANKING77).
2. **Model selection on a validation split.** A stable share of the training rows (by request id,
   else by text) is held back, or the agent declares a validation file (``validation_set``: for
   requests collected apart, since a random share of a file of near-paraphrases is easier than
   new traffic; BENCHMARKS.md, CLINC150); the regularisation ``C`` is chosen there from a small
   grid.
3. **Calibration on the same validation rows.** A linear SVM's margins are not probabilities, and
   a softmax over 151 margins gives every request ~1/151: nothing to threshold. Temperature
   scaling (one parameter ``T``, fitted by log loss: Guo et al., 2017) turns ``softmax(margins/T)``
   into a confidence that means "probability of being right". It keeps the ranking of the
   classes, so accuracy does not move, and it costs one division at serving time.
4. **Abstention.** Below a threshold on the calibrated confidence (or when the model predicts the
   out-of-scope label) the router answers the fallback tool. The threshold is chosen on the
   validation split in one of two ways. A *target precision*: the lowest confidence at which the
   answered validation requests reach it. An *accuracy budget* (``max_accuracy_loss``): the
   highest confidence at which abstaining costs at most that share of the in-scope validation
   requests the router would have answered right. The budget is estimated on in-scope requests
   alone, so it holds with few or no out-of-scope examples; a precision target depends on how
   many out-of-scope requests validation happens to hold (BENCHMARKS.md, CLINC150).
5. **Refit on all training rows** (and a declared validation file's) with the chosen ``C``: the
   registered model sees every row. The temperature and threshold found on the validation split
   are kept (refitting on 10% more data barely moves the margins' scale).

:class:`TextRouter` is what is pickled and served: the scikit-learn pipeline plus those few numbers.
It scores through the compiled :class:`~agentops_pipelines.agent.linear_scorer.LinearScorer`
(``predict_columns``, ~1 ms per request) and falls back to the pipeline where the scorer cannot
reproduce it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

#: The default recipe's parameters (numbers, so a run config can override them; 0/1 for flags).
#: ``C`` = 0 means "choose C on the validation split from ``C_GRID``".
DEFAULT_PARAMS: dict[str, float] = {
    "C": 0.0,
    "word_ngrams": 2,
    "char_ngrams": 5,
    "embeddings": 1,  # MiniLM sentence embeddings beside TF-IDF; 0: TF-IDF alone (BENCHMARKS.md)
    "embedding_int8": 1,  # MiniLM's weights in int8 (ONNX Runtime); 0: float32, ~3x the CPU
    "embedding_scale": 2.0,
    "validation_share": 0.15,
    "refit": 1,
}
C_GRID: tuple[float, ...] = (0.25, 0.5, 1.0)


def _stable_share(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") / 2**32


def validation_mask(training_set: pd.DataFrame, share: float) -> np.ndarray:
    """A stable validation split: by request id when there is one, else by the text.

    Every label keeps at least one row on the fitting side (a label seen only in validation
    could not be learned).
    """
    import numpy as np

    keys = (training_set["request_id"].astype(str) if "request_id" in training_set
            else training_set["text"].astype(str))
    mask = np.array([_stable_share("val:" + k) < share for k in keys], dtype=bool)
    labels = training_set["tool"].astype(str).to_numpy()
    for label in set(labels[mask]) - set(labels[~mask]):
        mask[np.flatnonzero(labels == label)[0]] = False
    return mask


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    import numpy as np

    z = np.asarray(scores, dtype=float) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def fit_temperature(scores: np.ndarray, y_index: np.ndarray) -> float:
    """The ``T`` minimising the log loss of ``softmax(scores / T)`` on validation rows."""
    import numpy as np
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(y_index))

    def nll(log_t: float) -> float:
        p = softmax(scores, float(np.exp(log_t)))[rows, y_index]
        return float(-np.log(np.clip(p, 1e-12, None)).mean())

    best = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(100.0)), method="bounded")
    return float(np.exp(best.x))


def abstention_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float) -> float:
    """The lowest threshold at which the requests answered (confidence ≥ threshold) are right at
    least ``target_precision`` of the time; the most precise threshold when none reaches it."""
    import numpy as np

    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.asarray(correct, dtype=float)[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)  # answering the k most confident
    ok = np.flatnonzero(precision >= target_precision)
    if len(ok):
        k = ok[-1]
        # Ties: answering at conf[k] answers every row with that confidence.
        return float(conf[k])
    return float(conf[int(np.argmax(precision))])


def accuracy_budget_threshold(confidence: np.ndarray, correct: np.ndarray, max_loss: float) -> float:
    """The highest threshold at which abstaining (confidence < threshold) gives up at most
    ``max_loss`` of in-scope accuracy: ``confidence`` and ``correct`` are those of the in-scope
    validation requests, ``correct`` False where the router would not answer them right anyway."""
    import numpy as np

    right = np.sort(np.asarray(confidence, dtype=float)[np.asarray(correct, dtype=bool)])
    allowed = int(np.floor(max_loss * len(confidence) + 1e-9))  # right answers we may give up
    if allowed >= len(right):
        return float(np.nextafter(right[-1], np.inf)) if len(right) else 1.0
    # Abstaining below right[allowed] gives up right[:allowed] and every tie below it, no more.
    return float(right[allowed])


class TextRouter:
    """TF-IDF words and characters (optionally MiniLM embeddings) plus declared features into a
    linear SVM, with a calibrated confidence and optional abstention.

    ``predict_columns`` is the serving fast path; the compiled scorer is rebuilt where the router
    is loaded (never pickled). Routers pickled before the recipe (``LinearRouter``) load with the
    class defaults below: temperature 1, no abstention.
    """

    temperature: float = 1.0
    threshold: float | None = None
    fallback_tool: str | None = None
    out_of_scope_label: str | None = None
    categorical: tuple[str, ...] = ()
    validation: Mapping[str, object] = {}  # what selection and calibration saw (logged to MLflow)
    lineage: Mapping[str, str] = {}  # tags naming data it learned from that is not a Dagster asset

    def __init__(self, pipeline, classes: list[str], feature_columns: tuple[str, ...],
                 categorical: Sequence[str] = ()):
        self.pipeline = pipeline
        self.classes = classes
        self.feature_columns = tuple(feature_columns)
        self.categorical = tuple(categorical)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_scorer", None)  # rebuilt where it is loaded
        return state

    def _default(self, col: str) -> object:
        return "unknown" if col in self.categorical else 0

    def _frame(self, columns: Mapping[str, Sequence]) -> pd.DataFrame:
        """What the pipeline reads, from a DataFrame or a dict of lists: the text as strings and
        every feature column (the neutral value where one is missing)."""
        import numpy as np
        import pandas as pd

        n = len(columns["text"])
        return pd.DataFrame({"text": [str(t) for t in columns["text"]], **{
            col: np.asarray(columns[col]) if col in columns else [self._default(col)] * n
            for col in self.feature_columns
        }})  # fmt: skip

    def _columns(self, requests: pd.DataFrame) -> dict[str, list]:
        return {c: requests[c].tolist() for c in ("text", *self.feature_columns) if c in requests}

    def scorer(self):
        """The compiled scorer, or None where the pipeline must score (checked on probe rows)."""
        scorer = self.__dict__.get("_scorer", False)
        if scorer is False:
            from agentops_pipelines.agent.linear_scorer import LinearScorer

            probe = {"text": ["where is my order", "I want my money back!", "", "ÄÖÜ 123 ??"]}
            for k, col in enumerate(self.feature_columns):
                default = self._default(col)
                probe[col] = [default] * 4 if col in self.categorical else [0, k + 1, 2.5 * k, -k]
            for col, value in self._known_categories().items():
                probe[col][1] = value
            scorer = LinearScorer.compile(self.pipeline, probe)
            self._scorer = scorer
        return scorer

    def _known_categories(self) -> dict[str, object]:
        """One seen category per categorical column, so the probe rows exercise the one-hot part."""
        try:
            features = self.pipeline.steps[0][1]
            for _, encoder, cols in features.transformers_:
                if hasattr(encoder, "categories_"):
                    return {c: cats[0] for c, cats in zip(cols, encoder.categories_, strict=True)}
        except Exception:  # noqa: BLE001 - the probe just covers less
            pass
        return {}

    def decision_function(self, columns: Mapping[str, Sequence], n: int) -> np.ndarray:
        """One row of class scores per request, in the order of ``pipeline.classes_``. Columns the
        router reads but ``columns`` lacks get the neutral value."""
        import numpy as np

        missing = [c for c in ("text", *self.feature_columns) if c not in columns]
        if missing:
            columns = {**columns, **{c: [self._default(c)] * n for c in missing}}
        scorer = self.scorer()
        if scorer is not None:
            scores = scorer.decision_function(columns, n)
        else:
            scores = self.pipeline.decision_function(self._frame(columns))
        scores = np.asarray(scores, dtype=float)
        if scores.ndim == 1:  # two classes: one margin, positive for classes_[1]
            scores = np.column_stack([-scores, scores])
        return scores

    def predict_proba_columns(self, columns: Mapping[str, Sequence], n: int) -> np.ndarray:
        """Calibrated class probabilities, in the order of ``pipeline.classes_``."""
        return softmax(self.decision_function(columns, n), self.temperature)

    def best_in_scope(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index of the best in-scope class, its probability, out-of-scope label wins) per row."""
        import numpy as np

        classes = np.asarray(self.pipeline.classes_, dtype=object)
        in_scope = classes != self.out_of_scope_label
        best = np.where(in_scope, proba, -1.0).argmax(axis=1)
        return best, proba[np.arange(len(best)), best], ~in_scope[proba.argmax(axis=1)]

    def choose(self, proba: np.ndarray) -> tuple[list[str], list[float], np.ndarray]:
        """(tool, confidence, abstained) per row from calibrated probabilities.

        The confidence is the probability of the best in-scope tool. The router abstains when the
        out-of-scope label wins or the confidence is below the threshold; it then answers the
        fallback tool (or, without one, the out-of-scope label).
        """
        import numpy as np

        classes = np.asarray(self.pipeline.classes_, dtype=object)
        best, confidence, abstained = self.best_in_scope(proba)
        if self.threshold is not None:
            abstained |= confidence < self.threshold
        tools = classes[best]
        fallback = self.fallback_tool or self.out_of_scope_label
        if fallback is not None:
            tools[abstained] = fallback
        else:  # nothing to answer instead: the model's own best guess
            tools = classes[proba.argmax(axis=1)]
            abstained[:] = False
        return tools.tolist(), confidence.tolist(), abstained

    def predict_columns(self, columns: Mapping[str, Sequence], n: int) -> tuple[list[str], list[float]]:
        """(tool, confidence) per row, from columns given as lists (the serving fast path)."""
        tools, confidence, _ = self.choose(self.predict_proba_columns(columns, n))
        return tools, confidence

    def predict(self, requests: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        tools, confidence = self.predict_columns(self._columns(requests), len(requests))
        return pd.DataFrame({"tool": tools, "confidence": confidence})


def make_pipeline(params: Mapping[str, object], numeric: Sequence[str], categorical: Sequence[str],
                  C: float):
    """The scikit-learn pipeline: [ColumnTransformer(text blocks, features), LinearSVC]."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline, make_union
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import LinearSVC

    blocks = [
        TfidfVectorizer(ngram_range=(1, int(params["word_ngrams"])), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, int(params["char_ngrams"])),
                        sublinear_tf=True, min_df=2),
    ]
    if params["embeddings"]:
        from agentops_pipelines.agent.embeddings import SentenceEmbedder

        # A cache as large as the training set: selection fits several models on the same texts.
        backend = "onnx-int8" if params["embedding_int8"] else "onnx"
        blocks.append(SentenceEmbedder(scale=float(params["embedding_scale"]), backend=backend,
                                       cache_size=200_000))
    transformers = [("text", make_union(*blocks), "text")]
    if numeric:
        transformers.append(("numeric", StandardScaler(), list(numeric)))
    if categorical:
        transformers.append(("categorical", OneHotEncoder(handle_unknown="ignore"), list(categorical)))
    return Pipeline([("features", ColumnTransformer(transformers)), ("svm", LinearSVC(C=C))])


def train_text_router(training_set: pd.DataFrame, params: Mapping[str, object],
                      feature_columns: Sequence[str] = (), *, fallback_tool: str | None = None,
                      target_precision: float | None = None,
                      max_accuracy_loss: float | None = None,
                      out_of_scope_label: str | None = None,
                      categorical: Sequence[str] | None = None,
                      validation_set: pd.DataFrame | None = None) -> TextRouter:
    """The default recipe (module docstring): select, calibrate, choose the abstention threshold,
    refit on every row of ``training_set`` (columns ``text``, ``tool``, the feature columns).

    ``fallback_tool`` and ``target_precision`` both set: abstain below the threshold that reaches
    the target precision on the validation split; ``fallback_tool`` and ``max_accuracy_loss``:
    abstain below the highest threshold that costs at most that share of in-scope validation
    accuracy (one of the two, not both). ``out_of_scope_label``: the label meaning "none
    of our tools"; predicting it also answers the fallback tool. ``categorical``: feature columns
    to one-hot encode (default: those whose values are not numbers). A declared feature missing
    from ``training_set`` is trained on its neutral value (0, or "unknown"), as serving fills it.
    ``validation_set`` (columns ``text``, ``tool``, any feature columns): selection, calibration
    and the threshold are chosen on these rows instead of a share of ``training_set``, and the
    refit sees both.
    """
    import numpy as np
    import pandas as pd

    p = {**DEFAULT_PARAMS, **params}
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"unknown recipe parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    if target_precision is not None and not 0.0 < float(target_precision) < 1.0:
        raise ValueError(f"abstain_target_precision must be in (0, 1), got {target_precision}")
    if max_accuracy_loss is not None and not 0.0 <= float(max_accuracy_loss) < 1.0:
        raise ValueError(f"abstain_max_accuracy_loss must be in [0, 1), got {max_accuracy_loss}")
    if target_precision is not None and max_accuracy_loss is not None:
        raise ValueError("abstention takes a target precision or a maximum accuracy loss, not both")
    columns = tuple(feature_columns)
    missing = [c for c in ("text", "tool") if c not in training_set]
    if missing:
        raise ValueError(f"the training set lacks column(s) {missing}")
    declared = tuple(categorical or ())
    categorical = tuple(c for c in columns if c in declared
                        or (c in training_set and not _numeric(training_set[c])))
    declared_val = validation_set is not None and len(validation_set) > 0
    if declared_val:
        lacking = [c for c in ("text", "tool") if c not in validation_set]
        if lacking:
            raise ValueError(f"the validation set lacks column(s) {lacking}")
        n_train = len(training_set)
        extra = validation_set[["text", "tool", *(c for c in columns if c in validation_set)]]
        extra = extra.assign(**{c: "unknown" if c in categorical else 0 for c in columns
                                if c not in extra and c in training_set})
        training_set = pd.concat([training_set, extra], ignore_index=True)
    absent = [c for c in columns if c not in training_set]
    if absent:
        log.warning("training without feature(s) %s: their neutral value is used", absent)
        training_set = training_set.assign(**{c: "unknown" if c in categorical else 0 for c in absent})
    if categorical:  # one type per column, whatever the file held
        training_set = training_set.assign(**{c: training_set[c].astype(str) for c in categorical})
    numeric = tuple(c for c in columns if c not in categorical)
    y = training_set["tool"].astype(str).to_numpy()
    if len(set(y)) < 2:
        raise ValueError(f"the training set has {len(set(y))} label(s): at least 2 are needed")

    def router_for(pipeline) -> TextRouter:
        return TextRouter(pipeline, [], columns, categorical)

    if declared_val:
        val = np.arange(len(training_set)) >= n_train
    else:
        val = validation_mask(training_set, float(p["validation_share"]))
    fit_rows, val_rows = training_set[~val], training_set[val]
    grid = (float(p["C"]),) if float(p["C"]) > 0 else C_GRID
    if not val.any():  # too few rows to hold any back: no selection, no calibration
        chosen = router_for(make_pipeline(p, numeric, categorical, grid[len(grid) // 2]))
        chosen.pipeline.fit(chosen._frame(training_set), y)
        chosen.classes = list(chosen.pipeline.classes_)
        chosen.fallback_tool, chosen.out_of_scope_label = fallback_tool, out_of_scope_label
        _serving_caches(chosen.pipeline)
        return chosen

    y_val = y[val]
    tried: dict[float, float] = {}
    best = None
    for C in grid:
        router = router_for(make_pipeline(p, numeric, categorical, C))
        router.pipeline.fit(router._frame(fit_rows), y[~val])
        scores = router.pipeline.decision_function(router._frame(val_rows))
        scores = np.column_stack([-scores, scores]) if scores.ndim == 1 else scores
        accuracy = float((np.asarray(router.pipeline.classes_)[scores.argmax(axis=1)] == y_val).mean())
        tried[C] = round(accuracy, 4)
        if best is None or accuracy > best[0]:
            best = (accuracy, C, router, scores)
    accuracy, C, selected, scores = best

    classes = list(selected.pipeline.classes_)
    index = {c: i for i, c in enumerate(classes)}
    known = np.array([label in index for label in y_val])  # labels seen when fitting
    y_index = np.array([index.get(label, 0) for label in y_val])
    temperature = fit_temperature(scores[known], y_index[known]) if known.sum() >= 2 else 1.0
    selected.temperature = temperature
    fallback = fallback_tool or out_of_scope_label
    if out_of_scope_label is not None:
        selected.out_of_scope_label = out_of_scope_label
    selected.fallback_tool = fallback_tool
    validation: dict[str, object] = {"C_tried": tried, "C": C, "accuracy": round(accuracy, 4),
                                     "temperature": round(temperature, 4), "rows": int(val.sum()),
                                     "declared_set": int(declared_val)}
    abstaining = target_precision is not None or max_accuracy_loss is not None
    if abstaining and fallback is not None and len(y_val):
        best_index, confidence, out_of_scope = selected.best_in_scope(softmax(scores, temperature))
        # Right = the in-scope tool it would answer; an out-of-scope request is never answered right.
        correct = np.asarray(classes, dtype=object)[best_index] == y_val
        answerable = ~out_of_scope
        if target_precision is not None:
            threshold = (abstention_threshold(confidence[answerable], correct[answerable],
                                              float(target_precision))
                         if answerable.any() else 1.0)  # validation: only out-of-scope requests
            validation["abstain_target_precision"] = float(target_precision)
        else:
            in_scope = y_val != out_of_scope_label  # all rows without an out-of-scope label
            right, conf = (correct & answerable)[in_scope], confidence[in_scope]
            threshold = accuracy_budget_threshold(conf, right, float(max_accuracy_loss)) if len(conf) else 1.0
            validation |= {"abstain_max_accuracy_loss": float(max_accuracy_loss),
                           "in_scope_accuracy_loss": round(float((right & (conf < threshold)).mean())
                                                           if len(conf) else 0.0, 4)}
        selected.threshold = threshold
        answered = answerable & (confidence >= threshold)
        validation |= {"abstain_threshold": round(threshold, 4),
                       "answered_share": round(float(answered.mean()), 4),
                       "answered_precision": round(float(correct[answered].mean()) if answered.any()
                                                   else 0.0, 4)}

    final = selected
    if p["refit"]:
        final = router_for(make_pipeline(p, numeric, categorical, C))
        final.pipeline.fit(final._frame(training_set), y)
        for attr in ("temperature", "threshold", "fallback_tool", "out_of_scope_label"):
            setattr(final, attr, getattr(selected, attr))
    final.classes = list(final.pipeline.classes_)
    final.validation = validation
    _serving_caches(final.pipeline)
    log.info("text router: C=%s (tried %s), temperature %.3f, validation accuracy %.4f",
             C, tried, temperature, accuracy)
    return final


def _serving_caches(pipeline) -> None:
    """The embedding cache helped selection (the same texts, several fits); a served model starts
    without the training texts and caches nothing."""
    from sklearn.pipeline import FeatureUnion

    features = pipeline.steps[0][1]
    for _, transformer, _ in getattr(features, "transformers_", []):
        parts = transformer.transformer_list if isinstance(transformer, FeatureUnion) else [("", transformer)]
        for _, part in parts:
            if hasattr(part, "cache_size"):
                part.cache_size = 0
                from agentops_pipelines.agent.embeddings import clear_cache

                clear_cache()


def _numeric(series: pd.Series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series)  # booleans too: scaled as 0/1
