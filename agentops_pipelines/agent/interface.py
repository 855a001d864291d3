"""Bring your own agent: the small interface the lifecycle needs.

The pipeline owns everything around the model (data, features, MLflow logging, evaluation,
registration, serving). An agent supplies two things:

1. ``train(training_set, params)``: learn from the training set (request text, the label column
   ``tool``, and the customer features named in ``feature_columns``) and return a *router*.
2. The router: a picklable object with ``predict(requests) -> DataFrame`` returning one row per
   request with columns ``tool`` (str) and ``confidence`` (float in [0, 1]). Optionally, for
   serving, ``predict_columns(columns, n) -> (tools, confidences)`` taking the same requests as
   ``{column: list of values}``: serving predicts one request at a time, and building a DataFrame
   per request costs more than a linear router's arithmetic (the support desk's router does both).

Most agents need no model code: :func:`agentops_pipelines.agent.recipes.train_text_router` is the
default recipe (model selection on a validation split, calibrated confidence, abstention, refit
on all rows); ``train`` can return ``train_text_router(training_set, params, self.feature_columns,
**self.abstention())``. The ML fields below (fallback tool, target precision, out-of-scope label,
golden test set, gate minimums) configure that recipe and the evaluation.

The pipeline wraps the router in :class:`agentops_pipelines.agent.model.AgentModel`, an MLflow
pyfunc model that fills the tool call from the customer's online features, answers from the
versioned prompt (or the tool's own template, ``answer_templates``), and traces each step.

Most agents need no Python: a YAML file in ``agents/`` declares one (agent/config.py). For custom
logic, subclass ``Agent``, add it to ``PYTHON_AGENTS`` in ``agentops_pipelines.agents`` and name
it from a file with ``python: <key>``::

    class MyAgent(Agent):
        name = "my_agent"
        feature_columns = ("plan_tier",)
        def train(self, training_set, params):
            ...
            return my_router

    PYTHON_AGENTS = {"support_desk": SupportDeskAgent, "my_agent": MyAgent}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PROMPT = (
    "Hello, and thanks for contacting {{agent}}. {{tool_description}} "
    "I have started `{{tool}}` for you with {{arguments}}. "
    "If anything else comes up, reply here and we will pick it up."
)


@dataclass(frozen=True)
class GoldenTestSet:
    """A fixed test file (CSV, Parquet or JSONL; a relative path is from the project root): the
    evaluation scores every candidate and the champion on the same cases, whatever data trained
    them."""

    path: str
    text_column: str = "text"
    label_column: str = "tool"


@runtime_checkable
class Router(Protocol):
    def predict(self, requests: pd.DataFrame) -> pd.DataFrame: ...


class Agent(ABC):
    """An agent the lifecycle can train, evaluate, register and deploy."""

    #: Registered model name in MLflow and the asset key prefix in Dagster.
    name: str
    #: Customer features (Feast feature names) the router reads besides the text.
    feature_columns: Sequence[str] = ()
    #: The known tools; a file source may bring its own label set instead.
    tools: Sequence[str] = ()
    #: Tool descriptions used when answering; unknown tools get a generic sentence.
    tool_descriptions: Mapping[str, str] = {}
    #: The tool meaning "hand over to a person", for escalation precision and recall.
    escalation_tool: str | None = None
    #: Share of drifted columns in a day of production traffic that triggers retraining.
    drift_threshold: float = 0.5
    #: The answer template, registered in MLflow's prompt registry ({{var}} placeholders).
    prompt_template: str = DEFAULT_PROMPT
    #: Answered when the router abstains. None: the escalation tool; both None: no abstention.
    fallback_tool: str | None = None
    #: Abstain below the confidence at which answered validation requests reach this precision.
    abstain_target_precision: float | None = None
    #: Or: abstain below the highest confidence that gives up at most this share of in-scope
    #: validation accuracy (estimated without out-of-scope examples).
    abstain_max_accuracy_loss: float | None = None
    #: The label in the data meaning "none of our tools" (e.g. ``oos``): out-of-scope metrics.
    out_of_scope_label: str | None = None
    #: A fixed test set scored beside the held-out split (and used against the champion).
    golden_test_set: GoldenTestSet | None = None
    #: A fixed validation file (same shape as a golden set): the default recipe chooses C, the
    #: calibration and the abstention threshold on it instead of a share of the training rows,
    #: then refits on both. For data whose validation requests were collected apart.
    validation_set: GoldenTestSet | None = None
    #: Defaults of the evaluation gate's minimums (``EvaluationConfig`` field names).
    gate_minimums: Mapping[str, float] = {}
    #: Per-tool answer templates ({{var}} placeholders); a tool without one uses prompt_template.
    answer_templates: Mapping[str, str] = {}
    #: Defaults for the dataset step's config (DatasetConfig field -> value): source, path,
    #: text_column, label_column, labels_file, min/max_text_length, max_duplicate_share, ...
    dataset_defaults: Mapping[str, object] = {}
    #: The YAML file that declared or configured the agent ("" for a Python agent without one).
    config_file: str = ""

    @abstractmethod
    def train(self, training_set: pd.DataFrame, params: Mapping[str, object]) -> Router:
        """Learn a router from ``training_set`` (columns: text, tool, feature_columns...)."""

    def default_params(self) -> dict[str, object]:
        return {}

    @property
    def answer_when_unsure(self) -> str | None:
        """The tool answered when the router abstains (``fallback_tool``, else the escalation
        tool); None: the router never abstains."""
        return self.fallback_tool or self.escalation_tool

    def abstention(self) -> dict[str, object]:
        """Keyword arguments of :func:`~agentops_pipelines.agent.recipes.train_text_router` that
        come from the agent's declaration (fallback tool, target precision or accuracy budget,
        out-of-scope label)."""
        return {"fallback_tool": self.answer_when_unsure,
                "target_precision": self.abstain_target_precision,
                "max_accuracy_loss": self.abstain_max_accuracy_loss,
                "out_of_scope_label": self.out_of_scope_label}
