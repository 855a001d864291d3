"""The default agent: a support desk, trained with the default recipe on text and customer features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.agent.recipes import DEFAULT_PARAMS, TextRouter, train_text_router
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES, TOOLS

if TYPE_CHECKING:
    import pandas as pd

NUMERIC_FEATURES = (
    "account_age_days", "orders_30d", "has_open_order", "days_since_last_order",
    "failed_payments_30d", "open_tickets", "refunds_90d", "requests_7d", "escalations_30d",
)
CATEGORICAL_FEATURES = ("plan_tier",)


class LinearRouter(TextRouter):
    """The support desk's router before the default recipe: kept so versions pickled then still
    load (temperature 1, no abstention: what they did). New routers are
    :class:`~agentops_pipelines.agent.recipes.TextRouter`."""

    categorical = CATEGORICAL_FEATURES


class SupportDeskAgent(Agent):
    name = "support_agent"
    feature_columns = NUMERIC_FEATURES + CATEGORICAL_FEATURES
    tools = TOOL_NAMES
    tool_descriptions = {t.name: t.description for t in TOOLS}
    escalation_tool = ESCALATE

    def default_params(self) -> dict[str, object]:
        # The default recipe's parameters, plus whether to read the customer features, without
        # the MiniLM embeddings: on the simulated shop's templated requests they add nothing
        # (0.9862 either way, 3 days trained, a later day tested; BENCHMARKS.md "Tool routing")
        # and cost ~1.5 ms of CPU per request on the path with the tightest latency goal.
        return {**DEFAULT_PARAMS, "embeddings": 0, "use_features": 1}

    def train(self, training_set: pd.DataFrame, params: Mapping[str, object]) -> TextRouter:
        params = {**self.default_params(), **params}
        columns = tuple(self.feature_columns) if params.pop("use_features", 1) else ()
        return train_text_router(training_set, params, columns, categorical=CATEGORICAL_FEATURES,
                                 **self.abstention())
