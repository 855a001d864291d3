"""The default recipe: a text router (TF-IDF words and characters into a linear SVM), with the
customer features an agent declares.

This is a thin wrapper around the support desk's recipe so that agents declared by configuration
train today; the "recipe" work of issue 11 (refit on all data, calibrated abstention, a stronger
default text model) replaces it, keeping the signature below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from agentops_pipelines.agent.interface import Router

DEFAULT_PARAMS: dict[str, object] = {"C": 0.5, "word_ngrams": 2, "char_ngrams": 5,
                                     "embeddings": False, "embedding_scale": 2.0}


def train_text_router(training_set: pd.DataFrame, params: Mapping[str, object],
                      feature_columns: Sequence[str] = ()) -> Router:
    """A router over ``text`` (and ``feature_columns``, when given) predicting ``tool``."""
    from agentops_pipelines.agent.support_desk import SupportDeskAgent

    recipe = SupportDeskAgent()
    recipe.feature_columns = tuple(feature_columns)
    p = {**DEFAULT_PARAMS, "use_features": bool(feature_columns), **params}
    return recipe.train(training_set, p)
