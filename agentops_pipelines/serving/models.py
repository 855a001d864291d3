"""Loaded models: one immutable ``LoadedModel`` per served version, and how it is loaded.

``load_pyfunc`` loads with ``mlflow.pyfunc.load_model`` (mlflow imported only then; through
``model_loading.load_model``, whose requirements check is cheaper than MLflow's) and picks the
fastest safe predict: the unwrapped ``PythonModel.predict`` when it takes a DataFrame as is. A
model may also offer ``predict_with_features`` (the feature values it used, for the inference
log), ``predict_with_steps`` (those plus the wall-clock times of its steps, for traces of the
served request) and ``text_max_chars`` (the longest text it was trained on: the default text
length limit is derived from it).
"""

from __future__ import annotations

import gc
import inspect
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from agentops_pipelines.serving.metrics import DEFAULT_AGENT
from agentops_pipelines.serving.protocol import (
    DEFAULT_MAX_TEXT_CHARS,
    NUMERIC_TYPES,
    REQUIRED_COLUMNS,
    STRING_COLUMNS,
    predictions_json,
)

logger = logging.getLogger("agentops_pipelines.serving")

Step = tuple[str, str, int, int]  # (name, span type, start ns, end ns): wall clock, time.time_ns()

@dataclass(frozen=True)
class LoadedModel:
    """One loaded model, immutable: a swap replaces the whole object."""

    model_uri: str
    version: str
    predict: Callable[[pd.DataFrame], Any]
    required_columns: tuple[str, ...] = REQUIRED_COLUMNS
    string_columns: tuple[str, ...] = STRING_COLUMNS
    loaded_at: str = field(default_factory=lambda: _now())
    load_seconds: float = 0.0
    direct_predict: bool = False  # True: the PythonModel's predict is called without pyfunc
    agent: str = DEFAULT_AGENT  # the metrics' ``agent`` label: AgentModel.agent_name
    input_columns: tuple[str, ...] = ()  # the signature's inputs; empty: take any column
    numeric_columns: tuple[str, ...] = ()
    predict_with_features: Callable[[pd.DataFrame], tuple[Any, pd.DataFrame]] | None = None
    run_id: str | None = None  # the MLflow run that logged the model (traces go to its experiment)
    model_id: str | None = None  # MLflow 3 logged-model id (traces link to it)
    predict_with_steps: Callable[[pd.DataFrame], tuple[Any, Any, list[Step]]] | None = None
    text_max_chars: int | None = None  # the longest training text, when the model says
    # The unwrapped PythonModel (None for other flavours); ``acting.py`` makes one that can act
    # serve through its executor, and then ``acts`` is True (the request id becomes a column).
    python_model: Any = field(default=None, compare=False, repr=False)
    acts: bool = False
    # The model waits on another service for each request (an LLM endpoint: ``io_bound`` on the
    # model or its router): predicted on a worker thread per request, never on the event loop,
    # and never batched (a batch would make each request wait for the others' calls).
    io_bound: bool = False

    def default_max_text_chars(self) -> int:
        """Four times the longest training text (at least 1,000), else a constant."""
        if self.text_max_chars:
            return max(1000, 4 * int(self.text_max_chars))
        return DEFAULT_MAX_TEXT_CHARS

    def infer(self, frame: pd.DataFrame) -> tuple[Any, Any, list[Step]]:
        """(predictions, the feature values used, the model's steps): the model's own features
        and steps when it reports them, else the input frame (the inference log keeps its non-key
        columns) and one ``predict`` step."""
        if self.predict_with_steps is not None:
            return self.predict_with_steps(frame)
        start = time.time_ns()
        if self.predict_with_features is not None:
            predictions, features = self.predict_with_features(frame)
        else:
            predictions, features = self.predict(frame), frame
        return predictions, features, [(self.agent, "AGENT", start, time.time_ns())]

    def infer_without_features(self, frame: pd.DataFrame) -> tuple[Any, None, list[Step]]:
        if self.predict_with_steps is not None:
            predictions, _, steps = self.predict_with_steps(frame)
            return predictions, None, steps
        start = time.time_ns()
        predictions = self.predict(frame)
        return predictions, None, [(self.agent, "AGENT", start, time.time_ns())]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _direct_predict(pyfunc: Any) -> Callable[[pd.DataFrame], Any] | None:
    """The unwrapped PythonModel's predict, when it takes a DataFrame as is; else None."""
    try:
        python_model = pyfunc.unwrap_python_model()
        hints = getattr(python_model, "predict_type_hints", None)
        if hints is not None and hints.input not in (None, Any, pd.DataFrame):
            return None  # pyfunc converts the frame to the hinted type: keep its predict
        context = getattr(pyfunc._model_impl, "context", None)
        parameters = [
            p for p in inspect.signature(python_model.predict).parameters if p != "params"
        ]
    except Exception:
        return None
    fn = python_model.predict
    if "context" in parameters or len(parameters) == 2:
        return lambda df: fn(context, df)
    if len(parameters) == 1:
        return fn
    return None


def _signature_columns(pyfunc: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Required and string columns: ours (``text``) plus the model signature's."""
    required, strings = list(REQUIRED_COLUMNS), list(STRING_COLUMNS)
    try:
        inputs = pyfunc.metadata.get_input_schema()
        if inputs is not None and inputs.has_input_names():
            required += [c for c in inputs.required_input_names() if c not in required]
            strings += [
                s.name
                for s in inputs.inputs
                if getattr(getattr(s, "type", None), "name", None) == "string"
                and s.name not in strings
            ]
    except Exception:
        logger.warning("could not read the model signature; requiring only %s", required)
    return tuple(required), tuple(strings)


def _signature_inputs(pyfunc: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """All input names and the numeric ones; empty when the model has no named signature."""
    try:
        inputs = pyfunc.metadata.get_input_schema()
        if inputs is None or not inputs.has_input_names():
            return (), ()
        names = tuple(inputs.input_names())
        numeric = tuple(
            s.name
            for s in inputs.inputs
            if getattr(getattr(s, "type", None), "name", None) in NUMERIC_TYPES
        )
        return tuple(dict.fromkeys((*REQUIRED_COLUMNS, *STRING_COLUMNS, *names))), numeric
    except Exception:
        return (), ()


def load_pyfunc(model_uri: str, version: str) -> LoadedModel:
    """Load with ``mlflow.pyfunc.load_model`` and pick the fastest safe predict."""
    from agentops_pipelines.model_loading import load_model

    started = time.perf_counter()
    # into a fresh copy: MLflow writes beside a registered model it loads, and the store is
    # read-only to a confined serving process (confine.py)
    pyfunc = load_model(model_uri, dst_path=tempfile.mkdtemp(prefix="model-"))
    direct = _direct_predict(pyfunc)
    required, strings = _signature_columns(pyfunc)
    inputs, numeric = _signature_inputs(pyfunc)
    try:
        python_model = pyfunc.unwrap_python_model()
    except Exception:
        python_model = None
    with_features = getattr(python_model, "predict_with_features", None) if direct else None
    with_steps = getattr(python_model, "predict_with_steps", None) if direct else None
    text_max = getattr(python_model, "text_max_chars", None)
    agent = getattr(python_model, "agent_name", None)
    io_bound = any(getattr(o, "io_bound", False) is True
                   for o in (python_model, getattr(python_model, "router", None)))
    return LoadedModel(
        model_uri=model_uri,
        version=str(version),
        predict=direct or pyfunc.predict,
        required_columns=required,
        string_columns=strings,
        load_seconds=time.perf_counter() - started,
        direct_predict=direct is not None,
        agent=agent if isinstance(agent, str) and agent else DEFAULT_AGENT,
        input_columns=inputs,
        numeric_columns=numeric,
        predict_with_features=with_features if callable(with_features) else None,
        run_id=getattr(pyfunc.metadata, "run_id", None),
        model_id=getattr(pyfunc.metadata, "model_id", None),
        predict_with_steps=with_steps if callable(with_steps) else None,
        text_max_chars=text_max if isinstance(text_max, int) and text_max > 0 else None,
        python_model=python_model,
        io_bound=io_bound,
    )


def warm_up(model: LoadedModel) -> None:
    """One prediction on a made-up row before serving: the first call imports hundreds of modules
    lazily (measured: ~720 for the support-desk model, Feast's for its online feature lookup, ~70k
    objects), which would otherwise land on the first request and, created after
    ``freeze_heap``, be scanned by every collection (~40 ms each, every few seconds)."""
    row = {c: 0 if c in model.numeric_columns else "warm up" for c in model.required_columns}
    if "customer_id" in model.string_columns:  # the online feature lookup has its own first time
        row.setdefault("customer_id", "warm-up")
    try:
        predictions, _, _ = model.infer(pd.DataFrame([row]))
        predictions_json(predictions)
    except Exception as e:  # a model that cannot take the made-up row is served all the same
        logger.info("warm-up prediction failed (%s: %s); serving anyway", type(e).__name__, e)


def freeze_heap() -> None:
    """Collect, then exclude everything alive now (the models, mlflow, sklearn: ~350k objects)
    from the cyclic garbage collector. Without it a full collection, which allocations trigger
    every few seconds under load, stops every thread for ~0.2 s and owns the p99. Collecting first
    frees what a replaced model left in cycles, once per load rather than at random."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def same(model: LoadedModel, model_uri: str, version: str) -> bool:
    return (model.model_uri, model.version) == (model_uri, str(version))
