"""The default agent: a support desk whose router is a linear model over text and features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES, TOOLS

if TYPE_CHECKING:
    import pandas as pd

NUMERIC_FEATURES = (
    "account_age_days", "orders_30d", "has_open_order", "days_since_last_order",
    "failed_payments_30d", "open_tickets", "refunds_90d", "requests_7d", "escalations_30d",
)
CATEGORICAL_FEATURES = ("plan_tier",)


class LinearRouter:
    """TF-IDF words and characters plus scaled customer features into a linear SVM."""

    def __init__(self, pipeline, classes: list[str], feature_columns: tuple[str, ...]):
        self.pipeline = pipeline
        self.classes = classes
        self.feature_columns = feature_columns

    def _frame(self, requests: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame({"text": requests["text"].astype(str).to_numpy()})
        for col in self.feature_columns:
            if col in requests:
                frame[col] = requests[col].to_numpy()
            else:
                frame[col] = "unknown" if col in CATEGORICAL_FEATURES else 0
        return frame

    def predict(self, requests: pd.DataFrame) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        scores = np.atleast_2d(self.pipeline.decision_function(self._frame(requests)))
        best = scores.argmax(axis=1)
        # A softmax over margins: a confidence that ranks like the margins, in [0, 1].
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        confidence = (z / z.sum(axis=1, keepdims=True))[np.arange(len(best)), best]
        return pd.DataFrame({"tool": np.asarray(self.pipeline.classes_)[best], "confidence": confidence})


class SupportDeskAgent(Agent):
    name = "support_agent"
    feature_columns = NUMERIC_FEATURES + CATEGORICAL_FEATURES
    tools = TOOL_NAMES
    tool_descriptions = {t.name: t.description for t in TOOLS}
    escalation_tool = ESCALATE

    def default_params(self) -> dict[str, object]:
        # embeddings=1 adds MiniLM sentence embeddings (numpy, no torch) to the TF-IDF blocks:
        # +3 points on Banking77 (0.90 → 0.93), at ~10 ms per request instead of ~1 ms.
        return {"C": 0.5, "word_ngrams": 2, "char_ngrams": 5, "use_features": True,
                "embeddings": False, "embedding_scale": 2.0}

    def train(self, training_set: pd.DataFrame, params: Mapping[str, object]) -> LinearRouter:
        from sklearn.compose import ColumnTransformer
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import Pipeline, make_union
        from sklearn.preprocessing import OneHotEncoder, StandardScaler
        from sklearn.svm import LinearSVC

        p = {**self.default_params(), **params}
        blocks = [
            TfidfVectorizer(ngram_range=(1, int(p["word_ngrams"])), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, int(p["char_ngrams"])),
                            sublinear_tf=True, min_df=2),
        ]
        if p["embeddings"]:
            from agentops_pipelines.agent.embeddings import SentenceEmbedder

            blocks.append(SentenceEmbedder(scale=float(p["embedding_scale"])))
        text = make_union(*blocks)
        columns = tuple(self.feature_columns) if p["use_features"] else ()
        numeric = [c for c in columns if c in NUMERIC_FEATURES]
        categorical = [c for c in columns if c in CATEGORICAL_FEATURES]
        transformers = [("text", text, "text")]
        if numeric:
            transformers.append(("numeric", StandardScaler(), numeric))
        if categorical:
            transformers.append(("categorical", OneHotEncoder(handle_unknown="ignore"), categorical))
        pipeline = Pipeline([
            ("features", ColumnTransformer(transformers)),
            ("svm", LinearSVC(C=float(p["C"]))),
        ])
        router = LinearRouter(pipeline, [], columns)
        pipeline.fit(router._frame(training_set), training_set["tool"].astype(str))
        router.classes = list(pipeline.classes_)
        return router
