"""Agents declared by configuration: one YAML file per agent in the ``agents/`` folder.

A file names the agent's data (the built-in generator or a file, and which of its columns hold the
text, the label, the customer id and the timestamp), its label set, the customer features it
reads (none for a plain file), the recipe and its parameters, answer templates per tool, the
fallback and escalation tools, thresholds (data gates, evaluation gate, drift), a golden test set,
abstention and the out-of-scope label. :class:`ConfiguredAgent` turns a file into an
:class:`~agentops_pipelines.agent.interface.Agent`; a file may instead name a Python agent
(``python: support_desk``) to keep that agent's code and take the rest from the file.

Why a pydantic schema and not Dagster components: a component is a ``defs.yaml`` per folder
loaded by ``load_from_defs_folder``, which imports the whole defs package and resolves component
types by entry point. Our lifecycle is one factory (``build_lifecycle``) and the definitions are
built once, explicitly, in ``definitions.py`` with resources chosen per environment; a team adds
a file, not a folder and a component type. The schema is strict (``extra="forbid"``): a typo is an
error naming the file and the field, never a silently ignored key.

Approvers are NOT configuration. Who may approve an agent, and how many approvals each
environment needs, live only in the approvers file (``AGENTOPS_APPROVERS_FILE``: the trust root,
mounted as a secret in production). An agent file cannot add approvers or loosen ``require``:
the keys ``approvers``, ``require`` and ``policies`` are refused with a message saying so.

Loading needs PyYAML and pydantic only (both already imported by Dagster): no pandas, no sklearn.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentops_pipelines.agent.interface import Agent, GoldenTestSet

if TYPE_CHECKING:
    import pandas as pd

    from agentops_pipelines.agent.interface import Router

# A plain file's answer: no e-commerce arguments, no promise that something was started.
NEUTRAL_PROMPT = "{{tool_description}}"
# Keys that belong to the approvers file (the trust root), never to an agent's configuration.
TRUST_ROOT_KEYS = ("approvers", "require", "policies", "approval", "approvals")
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class AgentConfigError(ValueError):
    """An agent file is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the agent's requests come from. Relative paths are from the project root."""

    source: Literal["generator", "file"] = "generator"
    path: str = Field(default="", description="file source: CSV, Parquet or JSONL; may contain {date}")
    text_column: str = "text"
    label_column: str = "tool"
    customer_id_column: str | None = Field(
        default=None, description="the column of customer ids; none: the file has no customers "
                                  "(no customer features, duplicates judged on the text)")
    timestamp_column: str | None = Field(
        default=None, description="the column of request times; none: the whole file is one day's snapshot")
    labels_file: str = Field(default="", description="the label set as a JSON list or one label per line")
    rows_per_day: int | None = Field(default=None, ge=1, le=1_000_000, description="generator only")
    seed: int | None = Field(default=None, description="generator only")
    min_text_length: int | None = Field(default=None, ge=0, description="none: 1 (any non-empty text)")
    max_text_length: int | None = Field(default=None, ge=1, description="none: from the data (see gates)")
    max_duplicate_share: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _file_needs_a_path(self):
        if self.source == "file" and not self.path:
            raise ValueError("source: file needs a path")
        if self.min_text_length is not None and self.max_text_length is not None \
                and self.min_text_length > self.max_text_length:
            raise ValueError("min_text_length is above max_text_length")
        return self


class RecipeConfig(_Strict):
    """The model recipe and its parameters (``agentops_pipelines.agent.recipes``)."""

    name: Literal["text_router"] = "text_router"
    params: dict[str, float | int | bool | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_params(self):
        from agentops_pipelines.agent.recipes import DEFAULT_PARAMS  # light: no sklearn at import

        unknown = sorted(set(self.params) - set(DEFAULT_PARAMS))
        if unknown:
            raise ValueError(f"unknown recipe parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
        return self


class AnswerConfig(_Strict):
    """Answer templates ({{agent}}, {{tool}}, {{tool_description}}, {{arguments}}, {{customer_id}})."""

    default: str = NEUTRAL_PROMPT
    tools: dict[str, str] = Field(default_factory=dict, description="tool -> template")
    descriptions: dict[str, str] = Field(default_factory=dict, description="tool -> one sentence")


class AbstentionConfig(_Strict):
    """How the abstention threshold is chosen on the validation split: one of the two."""

    target_precision: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="answered validation requests are right at least this often")
    max_accuracy_loss: float | None = Field(
        default=None, ge=0.0, lt=1.0,
        description="abstaining gives up at most this share of in-scope validation accuracy")

    @model_validator(mode="after")
    def _one_rule(self) -> AbstentionConfig:
        if self.target_precision is not None and self.max_accuracy_loss is not None:
            raise ValueError("set target_precision or max_accuracy_loss, not both")
        return self


class GoldenConfig(_Strict):
    path: str
    text_column: str = "text"
    label_column: str = "tool"


class ThresholdsConfig(_Strict):
    drift: float = Field(default=0.5, gt=0.0, le=1.0, description="share of drifted columns that triggers retraining")
    gates: dict[str, float] = Field(default_factory=dict, description="evaluation gate minimums, e.g. min_accuracy")

    @field_validator("gates")
    @classmethod
    def _known_minimums(cls, gates: dict[str, float]) -> dict[str, float]:
        for key, value in gates.items():
            if not key.startswith("min_"):
                raise ValueError(f"{key!r} is not a minimum (keys look like min_accuracy)")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be between 0 and 1, not {value}")
        return gates


class AgentConfig(_Strict):
    """One agent, as written in ``agents/<name>.yaml``."""

    name: str
    enabled: bool = Field(default=True, description="false: the file is an example, not loaded")
    description: str = ""
    python: str | None = Field(default=None, description="a Python agent from agentops_pipelines.agents.PYTHON_AGENTS")
    data: DataConfig = Field(default_factory=DataConfig)
    labels: list[str] = Field(default_factory=list, description="the label set; or data.labels_file")
    features: list[str] = Field(default_factory=list, description="customer features (Feast) besides the text")
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    answers: AnswerConfig = Field(default_factory=AnswerConfig)
    fallback_tool: str | None = None
    escalation_tool: str | None = None
    abstention: AbstentionConfig = Field(default_factory=AbstentionConfig)
    out_of_scope_label: str | None = None
    golden_test_set: GoldenConfig | None = None
    validation_set: GoldenConfig | None = Field(
        default=None, description="a fixed validation file: selection, calibration and the abstention "
                                  "threshold are chosen on it instead of a share of the training rows")
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.fullmatch(name):
            raise ValueError(f"{name!r}: use lower-case letters, digits and underscores, starting "
                             "with a letter (it names the asset prefix and the registered model)")
        return name

    @field_validator("features")
    @classmethod
    def _known_features(cls, features: list[str]) -> list[str]:
        from agentops_pipelines.agent.support_desk import CATEGORICAL_FEATURES, NUMERIC_FEATURES

        known = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)
        unknown = [f for f in features if f not in known]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; the feature store has {list(known)}")
        return features

    @model_validator(mode="after")
    def _tools_in_label_set(self):
        if self.python is not None and "recipe" in self.model_fields_set:
            raise ValueError(f"recipe: a Python agent's recipe is its code ({self.python}); "
                             "set its parameters in the training step's config instead")
        if self.python is not None and self.validation_set is not None:
            raise ValueError(f"validation_set: a Python agent's recipe is its code ({self.python}); "
                             "it chooses its own validation rows")
        if self.labels:
            for field, tool in (("fallback_tool", self.fallback_tool), ("escalation_tool", self.escalation_tool),
                                ("out_of_scope_label", self.out_of_scope_label)):
                if tool is not None and tool not in self.labels:
                    raise ValueError(f"{field} {tool!r} is not in labels")
            unknown = sorted(set(self.answers.tools) - set(self.labels))
            if unknown:
                raise ValueError(f"answers.tools names tools not in labels: {unknown}")
        if self.data.source == "file" and not (self.labels or self.data.labels_file):
            raise ValueError("a file source needs its label set: labels, or data.labels_file")
        if self.features and self.data.source == "file" and not self.data.customer_id_column:
            raise ValueError("features need customers: set data.customer_id_column or remove features")
        return self

    def dataset_defaults(self) -> dict[str, object]:
        """The dataset step's config defaults (DatasetConfig fields) this file sets.

        A Python agent takes only what its file spells out. An agent with no code also gets the
        neutral defaults: no customer or timestamp column unless named, any non-empty text, and
        the longest text bounded by the data rather than by a fixed number.
        """
        d = self.data
        out: dict[str, object] = {}
        if self.python is None:
            out |= {"customer_id_column": "", "timestamp_column": "", "min_text_length": 1,
                    "max_text_length": None}
        for key in d.model_fields_set:
            value = getattr(d, key)
            if value is None and key in ("customer_id_column", "timestamp_column"):
                value = ""
            if value is not None:
                out[key] = value
        return out


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse(raw: object, source: str) -> AgentConfig:
    """``raw`` (the parsed YAML) as an AgentConfig; errors name ``source`` and the field."""
    if not isinstance(raw, Mapping):
        raise AgentConfigError(f"{source}: an agent file is a mapping of fields (name, data, ...), "
                               f"not {type(raw).__name__}")
    trust = [k for k in TRUST_ROOT_KEYS if k in raw]
    if trust:
        raise AgentConfigError(
            f"{source}: field {trust[0]!r} is not allowed: approvers and the approvals each "
            f"environment requires live only in the approvers file (AGENTOPS_APPROVERS_FILE, the "
            f"trust root); an agent's configuration cannot add approvers or loosen them")
    try:
        return AgentConfig.model_validate(dict(raw))
    except ValidationError as exc:
        lines = [f"{source}: field {_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise AgentConfigError("\n".join(lines)) from None


def load_file(path: Path) -> AgentConfig:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{path}: cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise AgentConfigError(f"{path}: not valid YAML: {exc}") from None
    config = parse(raw, str(path))
    if config.name != path.stem:
        raise AgentConfigError(f"{path}: field name: {config.name!r} must match the file name ({path.stem!r})")
    return config


def _declared_paths(config: AgentConfig) -> list[tuple[str, str, Path]]:
    """(field, value as written, absolute path) of every file the agent's file names."""
    from agentops_pipelines.resources.settings import PROJECT_ROOT

    d = config.data
    found = []
    for what, value in (("data.path", d.path if d.source == "file" else ""), ("data.labels_file", d.labels_file),
                        ("golden_test_set.path", config.golden_test_set.path if config.golden_test_set else ""),
                        ("validation_set.path", config.validation_set.path if config.validation_set else "")):
        if value:
            p = Path(value).expanduser()
            found.append((what, value, p if p.is_absolute() else PROJECT_ROOT / p))
    return found


def data_available(config: AgentConfig) -> str:
    """"" when the agent's data can be read, else why not (a missing file or labels file)."""
    for what, value, p in _declared_paths(config):
        if "{date}" not in value and not p.exists():
            return f"{what} {p} does not exist"
    return ""


def reads_pipeline_state(config: AgentConfig, protected: Iterable[Path]) -> str:
    """"" unless a path of the file leads into the pipeline's own state (``protected``: the state
    folder with every agent's lake and inference log, serving tokens, the audit key and anchor,
    reviewers' keys), else which field and where. Agent files are the team's to edit; what the
    pipeline recorded for *other* agents (their customers' requests, say) or keeps secret is
    not theirs to read. Resolved, so ``..`` and symbolic links do not walk around it."""
    roots = [Path(r).expanduser().resolve() for r in protected]
    for what, value, p in _declared_paths(config):
        real = p.resolve()
        root = next((r for r in roots if real.is_relative_to(r)), None)
        if root is not None:
            return (f"field {what}: {value!r} leads into {root}, the pipeline's own state (records, "
                    "logs, keys); an agent's data lives outside it")
    return ""


def apply(agent: Agent, config: AgentConfig) -> Agent:
    """Set what ``config`` declares on ``agent`` (instance attributes; the class keeps its defaults)."""
    agent.name = config.name
    agent.dataset_defaults = config.dataset_defaults()
    if config.labels:
        agent.tools = tuple(config.labels)
    if "features" in config.model_fields_set:
        agent.feature_columns = tuple(config.features)
    if config.answers.descriptions:
        agent.tool_descriptions = {**agent.tool_descriptions, **config.answers.descriptions}
    if "default" in config.answers.model_fields_set:
        agent.prompt_template = config.answers.default
    agent.answer_templates = dict(config.answers.tools)
    for field in ("fallback_tool", "escalation_tool", "out_of_scope_label"):
        if field in config.model_fields_set:
            setattr(agent, field, getattr(config, field))
    agent.abstain_target_precision = config.abstention.target_precision
    agent.abstain_max_accuracy_loss = config.abstention.max_accuracy_loss
    if config.golden_test_set is not None:
        g = config.golden_test_set
        agent.golden_test_set = GoldenTestSet(g.path, g.text_column, g.label_column)
    if config.validation_set is not None:
        v = config.validation_set
        agent.validation_set = GoldenTestSet(v.path, v.text_column, v.label_column)
    agent.drift_threshold = config.thresholds.drift
    agent.gate_minimums = dict(config.thresholds.gates)
    if config.recipe.params:
        agent.recipe_params = dict(config.recipe.params)
    return agent


class ConfiguredAgent(Agent):
    """An agent with no code: everything comes from its YAML file; training is the default recipe."""

    prompt_template = NEUTRAL_PROMPT
    escalation_tool = None
    feature_columns = ()

    def __init__(self, config: AgentConfig):
        self.config = config
        self.recipe_params: dict[str, object] = {}
        apply(self, config)

    def default_params(self) -> dict[str, object]:
        from agentops_pipelines.agent.recipes import DEFAULT_PARAMS

        return {**DEFAULT_PARAMS, **self.recipe_params}

    def train(self, training_set: pd.DataFrame, params: Mapping[str, object]) -> Router:
        from agentops_pipelines.agent.recipes import train_text_router

        validation, lineage = None, {}
        if self.validation_set is not None:
            from agentops_pipelines.data.sources import resolve_path
            from agentops_pipelines.evaluation import load_golden, refuse_unknown_labels

            v = self.validation_set
            # the digest of the very bytes the router learns from (the file is read once)
            validation, digest = load_golden(v.path, v.text_column, v.label_column, what="validation set")
            # The file skips the dataset's gates: a label outside what they accepted would become
            # a tool the served router can answer.
            refuse_unknown_labels(validation, set(training_set["tool"].astype(str)) | set(self.tools or ()),
                                  v.path, v.label_column, what="validation set")
            lineage = {"agentops.validation_set": str(resolve_path(v.path)),
                       "agentops.validation_set_sha256": digest}
        router = train_text_router(training_set, {**self.default_params(), **params},
                                   feature_columns=tuple(self.feature_columns), validation_set=validation,
                                   **self.abstention())
        router.lineage = lineage
        return router
