"""The HTTP process a deployment runs: MLflow pyfunc models behind a small, fast server.

Endpoints:

- ``POST /invocations``: MLflow's scoring formats (JSON ``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``; ``text/csv``) → ``{"predictions": [...]}`` with the headers
  ``X-Model-Version``, ``X-Model-Role`` (stable|canary) and ``X-Request-Id`` (the client's, or a
  new one).
- ``GET /health`` (alias ``/ping``): 200 with the versions being served, 503 until one is loaded.
- ``GET /metrics``: Prometheus text format (see ``metrics.py``).
- Admin (``Authorization: Bearer <token>`` when ``AGENTOPS_SERVING_ADMIN_TOKEN`` is set):
  ``POST /admin/load`` ``{"model_uri", "version", "role": "stable"|"canary", "canary_share",
  "keep_canary", "force"}``, ``POST /admin/promote``, ``POST /admin/abort``,
  ``GET /admin/stats?window=60``.

Versions and traffic: a *stable* version takes every request, or all but ``canary_share`` of them
when a *canary* is loaded. The split is sticky per ``customer_id`` (of the request's first row),
by request id otherwise (``traffic.py``). Loading a stable version drops the canary unless
``keep_canary``; loading the canary version again only changes its share. A model is loaded
outside any lock that requests take, then the routing (one immutable object) is replaced at once:
requests already running finish on the model they started with, no listener restarts, a failed
load keeps what is served.

Bad input never reaches a model: an unreadable body, a missing required column (the model
signature's required inputs, and ``text``), a value of the wrong type for the signature, more than
``--max-rows`` rows or ``--max-body-bytes`` bytes, or a content type other than JSON/CSV is a 4xx
``{"error_code", "message"}``, counted in the metrics. Columns the signature does not name are
accepted and dropped before predict (MLflow's scoring server does the same with a non-strict
schema); without a signature they are passed on. A failing model answers 500 and keeps serving;
tracebacks go to the log, never to the client.

Predictions run on one thread per served model that merges waiting requests (``batching.py``);
each request is then counted (``metrics.py``), kept in a ring for ``/admin/stats``
(``traffic.py``), appended to the inference log (``inference_log.py``) and, if it failed or was
sampled, traced in MLflow from a background thread (``tracing.py``). The request thread does no
I/O beyond its socket.

mlflow is imported only when a model is loaded; the tracking and registry URIs come from
``MLFLOW_TRACKING_URI`` (read by mlflow itself).
"""

from __future__ import annotations

import argparse
import gc
import hmac
import inspect
import io
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pandas as pd

from agentops_pipelines.serving.batching import Batcher, Overloaded
from agentops_pipelines.serving.inference_log import InferenceLogWriter, LogEntry
from agentops_pipelines.serving.metrics import DEFAULT_AGENT, NO_VERSION, ServingMetrics
from agentops_pipelines.serving.tracing import TraceJob, Tracer
from agentops_pipelines.serving.traffic import CANARY, ROLES, STABLE, OutcomeRing, goes_to_canary

logger = logging.getLogger("agentops_pipelines.serving")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_ROWS = 1000
DEFAULT_BATCH_MAX_ROWS = 64
DEFAULT_TRACE_SAMPLE_RATE = 0.01
DEFAULT_CANARY_SHARE = 0.1
MAX_DRAIN_BYTES = 16 * 1024 * 1024  # an oversized body up to this is read and dropped, then 413
REQUIRED_COLUMNS: tuple[str, ...] = ("text",)
STRING_COLUMNS: tuple[str, ...] = ("text", "customer_id")
NUMERIC_TYPES = frozenset({"long", "integer", "double", "float"})
JSON_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
ADMIN_TOKEN_ENV = "AGENTOPS_SERVING_ADMIN_TOKEN"
JSON_CT = "application/json"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# --------------------------------------------------------------------------------------------
# Errors and responses


class RequestError(Exception):
    """A request the server refuses: becomes ``{"error_code", "message"}`` with ``status``."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_CT
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(payload).encode(), JSON_CT, headers)


def error_response(status: int, error_code: str, message: str) -> Response:
    return json_response(status, {"error_code": error_code, "message": message})


# --------------------------------------------------------------------------------------------
# Parsing: request body -> DataFrame


def _split_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    mime, *parts = (p.strip() for p in content_type.split(";"))
    params = {}
    for part in parts:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return mime.lower(), params


def _frame(build: Callable[[], pd.DataFrame], what: str) -> pd.DataFrame:
    try:
        return build()
    except Exception as e:  # pandas raises ValueError, TypeError, ... on shapes it cannot use
        raise RequestError(400, "BAD_REQUEST", f"{what} is not a valid table: {e}") from None


def _frame_from_rows_or_columns(data: Any, key: str) -> pd.DataFrame:
    """``instances`` / ``inputs``: a list of records, a dict of columns, or one record."""
    if isinstance(data, list):
        if not all(isinstance(row, dict) for row in data):
            raise RequestError(
                400,
                "BAD_REQUEST",
                f"'{key}' must be a list of objects (records) or an object of columns",
            )
        return _frame(lambda: pd.DataFrame.from_records(data), f"'{key}'")
    if isinstance(data, dict):
        if data and all(isinstance(v, list) for v in data.values()):
            return _frame(lambda: pd.DataFrame(data), f"'{key}'")
        if not any(isinstance(v, list | dict) for v in data.values()):
            return _frame(lambda: pd.DataFrame([data]), f"'{key}'")  # a single record
    raise RequestError(
        400, "BAD_REQUEST", f"'{key}' must be a list of objects (records) or an object of columns"
    )


def parse_json_payload(payload: Any) -> pd.DataFrame:
    """A decoded MLflow scoring JSON payload -> DataFrame."""
    if not isinstance(payload, dict):
        raise RequestError(
            400, "BAD_REQUEST", f"expected a JSON object with one of the keys {list(JSON_FORMATS)}"
        )
    keys = [k for k in JSON_FORMATS if k in payload]
    if len(keys) != 1:
        raise RequestError(
            400,
            "BAD_REQUEST",
            f"expected exactly one of the keys {list(JSON_FORMATS)}, got {sorted(payload)}",
        )
    key = keys[0]
    if extra := sorted(set(payload) - {key}):
        raise RequestError(
            400, "BAD_REQUEST", f"unsupported keys {extra} (params are not supported)"
        )
    data = payload[key]
    if key == "dataframe_split":
        if (
            not isinstance(data, dict)
            or "data" not in data
            or set(data) - {"columns", "data", "index"}
        ):
            raise RequestError(
                400,
                "BAD_REQUEST",
                "'dataframe_split' must be an object with 'data' and optionally 'columns', 'index'",
            )
        return _frame(
            lambda: pd.DataFrame(
                data["data"], columns=data.get("columns"), index=data.get("index")
            ),
            "'dataframe_split'",
        )
    if key == "dataframe_records":
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise RequestError(400, "BAD_REQUEST", "'dataframe_records' must be a list of objects")
        return _frame(lambda: pd.DataFrame.from_records(data), "'dataframe_records'")
    return _frame_from_rows_or_columns(data, key)


def parse_csv(body: bytes, string_columns: tuple[str, ...] = STRING_COLUMNS) -> pd.DataFrame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, "BAD_REQUEST", f"CSV body is not valid UTF-8: {e}") from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=dict.fromkeys(string_columns, str))
    except Exception as e:
        raise RequestError(400, "BAD_REQUEST", f"body is not valid CSV: {e}") from None


def parse_request(
    body: bytes, content_type: str | None, string_columns: tuple[str, ...] = STRING_COLUMNS
) -> pd.DataFrame:
    """The body of a ``POST /invocations`` -> DataFrame, or ``RequestError`` (4xx)."""
    mime, params = _split_content_type(content_type)
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise RequestError(
            415, "UNSUPPORTED_MEDIA_TYPE", f"only UTF-8 is supported, got charset={charset}"
        )
    if not body and mime in (JSON_CT, "text/csv"):
        raise RequestError(400, "BAD_REQUEST", "the request body is empty")
    if mime == JSON_CT:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, "MALFORMED_REQUEST", f"body is not valid JSON: {e}") from None
        return parse_json_payload(payload)
    if mime == "text/csv":
        return parse_csv(body, string_columns)
    raise RequestError(
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        f"Content-Type must be application/json or text/csv, got {content_type or 'none'!r}",
    )


def validate_frame(df: pd.DataFrame, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Refuse a frame without the model's required columns, or with nulls in them."""
    if missing := [c for c in required if c not in df.columns]:
        raise RequestError(
            400,
            "BAD_REQUEST",
            f"missing required column(s) {missing}; got columns {[str(c) for c in df.columns]}",
        )
    for c in required:
        if pd.isna(df[c].to_numpy()).any():  # on the array: a third of Series.isna's cost
            raise RequestError(400, "BAD_REQUEST", f"required column {c!r} has null values")
    return df


# --------------------------------------------------------------------------------------------
# Predictions -> JSON


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


def predictions_json(predictions: Any) -> bytes:
    """``{"predictions": ...}`` as mlflow's scoring server writes it (DataFrames as records)."""
    if isinstance(predictions, pd.DataFrame | pd.Series):
        body = predictions.to_json(orient="records", date_format="iso", default_handler=str)
    else:
        if hasattr(predictions, "tolist"):
            predictions = predictions.tolist()
        body = json.dumps(predictions, default=_json_default)
    return b'{"predictions":' + body.encode() + b"}"


def prepare_frame(
    df: pd.DataFrame, model: LoadedModel, max_rows: int = DEFAULT_MAX_ROWS
) -> pd.DataFrame:
    """The frame the model gets: within ``max_rows``, required columns present and non-null,
    columns the signature does not name dropped, values of the signature's types."""
    if len(df) > max_rows:
        raise RequestError(
            413, "TOO_MANY_ROWS", f"{len(df)} rows exceed the limit of {max_rows} rows per request"
        )
    validate_frame(df, model.required_columns)
    if model.input_columns:
        known = set(model.input_columns)
        if extra := [c for c in df.columns if c not in known]:
            logger.debug("ignoring columns %s the model does not take", extra)
            df = df[[c for c in df.columns if c in known]]
    for c in model.string_columns:
        if c in df.columns:
            df = _as_strings(df, c)
    for c in model.numeric_columns:
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c].dtype):
            try:
                values = pd.to_numeric(df[c])
            except (ValueError, TypeError):
                raise RequestError(
                    400, "BAD_REQUEST", f"column {c!r} must be numeric; got {_sample(df[c])}"
                ) from None
            df = df.assign(**{c: values})
    return df


_STRINGABLE = frozenset(
    {"integer", "floating", "mixed-integer-float", "boolean", "decimal", "mixed", "mixed-integer"}
)


def _as_strings(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Strings stay; numbers and booleans become their text (``123`` -> ``"123"``, as a CSV
    would give); objects and lists are refused."""
    series = df[column]
    kind = pd.api.types.infer_dtype(series, skipna=True)
    if kind in ("string", "empty"):
        return df
    if kind not in _STRINGABLE or any(isinstance(v, dict | list) for v in series):
        raise RequestError(
            400, "BAD_REQUEST", f"column {column!r} must hold strings; got {_sample(series)}"
        )
    values = [
        None if v is None or (isinstance(v, float) and math.isnan(v))
        else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
        for v in series.tolist()
    ]  # fmt: skip
    return df.assign(**{column: pd.Series(values, index=df.index, dtype=object)})


def _sample(series: pd.Series) -> str:
    bad = [v for v in series.tolist() if v is not None][:3]
    return ", ".join(f"{type(v).__name__} {v!r}"[:80] for v in bad) or "nulls"


# --------------------------------------------------------------------------------------------
# Models


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
    predict_traced: Callable[[pd.DataFrame], Any] | None = None
    run_id: str | None = None  # the MLflow run that logged the model (traces go to its experiment)
    model_id: str | None = None  # MLflow 3 logged-model id (traces link to it)

    def infer(self, frame: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
        """(predictions, the feature values used): the model's own when it reports them, else the
        input frame (the inference log keeps its non-key columns)."""
        if self.predict_with_features is not None:
            return self.predict_with_features(frame)
        return self.predict(frame), frame

    def infer_without_features(self, frame: pd.DataFrame) -> tuple[Any, None]:
        return self.predict(frame), None


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
    import mlflow.pyfunc

    started = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    direct = _direct_predict(pyfunc)
    required, strings = _signature_columns(pyfunc)
    inputs, numeric = _signature_inputs(pyfunc)
    try:
        python_model = pyfunc.unwrap_python_model()
    except Exception:
        python_model = None
    with_features = getattr(python_model, "predict_with_features", None) if direct else None
    traced = getattr(python_model, "predict_traced", None)
    agent = getattr(python_model, "agent_name", None)
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
        predict_traced=traced if callable(traced) else None,
        run_id=getattr(pyfunc.metadata, "run_id", None),
        model_id=getattr(pyfunc.metadata, "model_id", None),
    )


# --------------------------------------------------------------------------------------------
# The serving state: what is served, and how traffic splits


class Served:
    """A model as installed in the routing, with its predict thread (``batching.py``)."""

    def __init__(
        self,
        model: LoadedModel,
        batch_max_rows: int = DEFAULT_BATCH_MAX_ROWS,
        features: bool = True,
    ):
        self.model = model
        self._infer = model.infer if features else model.infer_without_features
        self.batcher = (
            Batcher(self._infer, max_rows=batch_max_rows, name=f"v{model.version}")
            if batch_max_rows > 0
            else None
        )

    def infer(self, frame: pd.DataFrame) -> tuple[Any, Any]:
        """(predictions, features or None: only wanted by the inference log)."""
        return self.batcher.predict(frame) if self.batcher else self._infer(frame)

    def retire(self) -> None:
        if self.batcher is not None:
            self.batcher.retire()


@dataclass(frozen=True)
class Routing:
    """Immutable: requests read it once; every change replaces it."""

    stable: Served | None = None
    canary: Served | None = None
    canary_share: float = 0.0

    @cached_property
    def string_columns(self) -> tuple[str, ...]:
        cols = self.stable.model.string_columns if self.stable else STRING_COLUMNS
        if self.canary:
            cols = tuple(dict.fromkeys((*cols, *self.canary.model.string_columns)))
        return cols

    def served(self) -> list[tuple[str, Served]]:
        return [(r, s) for r, s in ((STABLE, self.stable), (CANARY, self.canary)) if s is not None]


class ServingState:
    """What is served and everything a request reports to. Readers take ``routing`` once."""

    def __init__(
        self,
        environment: str,
        loader: Callable[[str, str], LoadedModel] = load_pyfunc,
        admin_token: str | None = None,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        batch_max_rows: int = DEFAULT_BATCH_MAX_ROWS,
        metrics: ServingMetrics | None = None,
        inference_log: InferenceLogWriter | None = None,
        tracer: Tracer | None = None,
        ring_capacity: int = 100_000,
        freeze_gc: bool = False,
        pod_role: str = STABLE,
    ):
        if pod_role not in ROLES:
            raise ValueError(f"pod_role must be one of {list(ROLES)}, got {pod_role!r}")
        self.environment = environment
        # The role of the whole process in its environment. On Kubernetes each pod serves one
        # model and the canary is a Deployment of its own: its pods say "canary" (headers,
        # inference log, traces, metrics, stats) although their one model is loaded as stable.
        self.pod_role = pod_role
        self.admin_token = admin_token or None
        self.max_rows = max_rows
        self.batch_max_rows = batch_max_rows
        self.metrics = metrics or ServingMetrics(environment, process_metrics=False)
        self.inference_log = inference_log
        self.tracer = tracer
        self.outcomes = OutcomeRing(ring_capacity)
        self.freeze_gc = freeze_gc
        self.draining = False
        self._loader = loader
        self._routing = Routing()
        self._swap_lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time
        self._on_swap: list[Callable[[LoadedModel], None]] = []
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._error_log_at = 0.0

    # -- reading

    @property
    def routing(self) -> Routing:
        return self._routing

    @property
    def current(self) -> LoadedModel | None:
        """The stable model."""
        stable = self._routing.stable
        return stable.model if stable else None

    @property
    def canary(self) -> LoadedModel | None:
        canary = self._routing.canary
        return canary.model if canary else None

    # -- changing

    def on_swap(self, callback: Callable[[LoadedModel], None]) -> None:
        """Call ``callback(stable_model)`` after every routing change (state file, ...)."""
        self._on_swap.append(callback)

    def load(
        self,
        model_uri: str,
        version: str,
        force: bool = False,
        role: str = STABLE,
        canary_share: float | None = None,
        keep_canary: bool = False,
    ) -> tuple[LoadedModel, bool]:
        """Load and install as ``role``; returns (model, loaded). Raises what the loader raises
        (keeping what is served) or a 409 ``RequestError``. Without ``force``, the uri and version
        already serving in that role is not reloaded (a canary's share still changes)."""
        if role not in ROLES:
            raise RequestError(400, "BAD_REQUEST", f"role must be one of {list(ROLES)}")
        version = str(version)
        with self._load_lock:
            routing = self._routing
            if role == CANARY:
                share = DEFAULT_CANARY_SHARE if canary_share is None else canary_share
                if routing.stable is None:
                    raise RequestError(
                        409, "NO_STABLE_VERSION", "load a stable version before a canary"
                    )
                if _same(routing.stable.model, model_uri, version):
                    raise RequestError(
                        409, "CONFLICT", f"version {version} ({model_uri}) is the stable version"
                    )
                if not force and routing.canary and _same(routing.canary.model, model_uri, version):
                    self._change(lambda r: replace(r, canary_share=share) if r.canary else r)
                    return routing.canary.model, False
                model = self._loader(model_uri, version)
                self.swap(model, CANARY, canary_share=share)
                return model, True
            current = routing.stable
            if not force and current and _same(current.model, model_uri, version):
                if routing.canary and not keep_canary:
                    self._change(lambda r: replace(r, canary=None, canary_share=0.0))
                return current.model, False
            model = self._loader(model_uri, version)
            self.swap(model, STABLE, keep_canary=keep_canary)
            return model, True

    def swap(
        self,
        model: LoadedModel,
        role: str = STABLE,
        canary_share: float | None = None,
        keep_canary: bool = False,
    ) -> None:
        """Install ``model`` as ``role`` (a new stable drops the canary unless ``keep_canary``)."""
        if self.freeze_gc:
            warm_up(model)
            _freeze_heap()
        served = Served(model, self.batch_max_rows, features=self.inference_log is not None)
        if role == CANARY:
            share = DEFAULT_CANARY_SHARE if canary_share is None else canary_share
            self._change(lambda r: replace(r, canary=served, canary_share=share))
        elif keep_canary:
            self._change(lambda r: replace(r, stable=served))
        else:
            self._change(lambda r: Routing(stable=served))

    def promote(self) -> LoadedModel:
        """The canary becomes the stable version (same loaded model, no reload)."""
        with self._load_lock:
            if self._routing.canary is None:
                raise RequestError(409, "NO_CANARY", "there is no canary to promote")
            return self._change(lambda r: Routing(stable=r.canary)).stable.model

    def abort(self) -> LoadedModel | None:
        """Drop the canary; returns it (None when there was none)."""
        with self._load_lock:
            canary = self._routing.canary
            if canary is not None:
                self._change(lambda r: replace(r, canary=None, canary_share=0.0))
            return canary.model if canary else None

    def _change(self, update: Callable[[Routing], Routing]) -> Routing:
        with self._swap_lock:
            old = self._routing
            new = update(old)
            self._routing = new
        kept = {id(s) for _, s in new.served()}
        for _, served in old.served():
            if id(served) not in kept:
                served.retire()  # finishes its queued requests, then its thread ends
        self._publish(new)
        return new

    def _publish(self, routing: Routing) -> None:
        try:
            self.metrics.set_models(
                [(s.model.agent, s.model.version, self.reported(role), s.model.model_uri)
                 for role, s in routing.served()],
                (routing.stable.model.agent if routing.stable else DEFAULT_AGENT,
                 routing.canary_share if routing.canary else 0.0),
            )  # fmt: skip
        except Exception:
            logger.exception("updating the model metrics failed")
        if self.tracer is not None:
            for _, served in routing.served():
                self.tracer.prepare(served.model)
        if routing.stable is None:
            return
        for callback in self._on_swap:
            try:
                callback(routing.stable.model)
            except Exception:
                logger.exception("on_swap callback failed")

    def close(self) -> None:
        for _, served in self._routing.served():
            served.retire()

    # -- requests in flight (for a clean stop)

    def enter(self) -> None:
        with self._in_flight_lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._in_flight_lock:
                if self._in_flight <= 0:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def reported(self, role: str) -> str:
        """The role a request is reported under: the pod's, when the pod is a canary."""
        return CANARY if self.pod_role == CANARY else role

    # -- recording one request

    def record(
        self,
        served: Served | None,
        role: str,
        status: int,
        started: float,
        *,
        received: float = 0.0,
        request_id: str = "",
        error_code: str | None = None,
        error: str | None = None,
        frame: pd.DataFrame | None = None,
        predictions: Any = None,
        features: Any = None,
        sampled: bool = False,
    ) -> None:
        """Metrics, the stats ring, the inference log and tracing for one finished request.
        Never raises: reporting must not fail a request."""
        latency_s = time.perf_counter() - started
        model = served.model if served else None
        try:
            tools, escalations, rows = None, 0, 0
            if isinstance(predictions, pd.DataFrame):
                rows = len(predictions)
                if "tool" in predictions.columns:
                    tools = predictions["tool"].tolist()
                if "escalated" in predictions.columns:
                    escalations = int(predictions["escalated"].sum())
            version = model.version if model else NO_VERSION
            self.metrics.observe(
                model.agent if model else DEFAULT_AGENT, version, status, latency_s,
                error_code=error_code, tools=tools, escalations=escalations, rows=rows,
            )  # fmt: skip
            self.outcomes.add(role, version, status, latency_s * 1000.0)
            if model is None or frame is None or not len(frame):
                return
            if self.inference_log is not None:
                self.inference_log.append(
                    LogEntry(received, request_id, self.reported(role), model.version, status, error_code,
                             latency_s * 1000.0, frame, predictions, features)
                )  # fmt: skip
            if self.tracer is not None and (sampled or status >= 500):
                self.tracer.submit(
                    TraceJob.of(model, frame, request_id, self.reported(role), status, error, latency_s * 1000.0,
                                "error" if status >= 500 else "sampled")
                )  # fmt: skip
        except Exception:
            logger.exception("recording request %s failed", request_id)

    def log_model_error(self, model: LoadedModel, e: BaseException, request_id: str) -> None:
        """A traceback at most once a second; one line otherwise (an error storm must not flood
        the log or spend the CPU on formatting)."""
        now = time.monotonic()
        if now - self._error_log_at >= 1.0:
            self._error_log_at = now
            logger.error(
                "predict failed (model %s version %s, request %s)",
                model.model_uri, model.version, request_id, exc_info=e,
            )  # fmt: skip
        else:
            logger.warning(
                "predict failed (version %s, request %s): %s: %s",
                model.version, request_id, type(e).__name__, e,
            )  # fmt: skip


def warm_up(model: LoadedModel) -> None:
    """One prediction on a made-up row before serving: the first call imports hundreds of modules
    lazily (measured: ~720 for the support-desk model, Feast's for its online feature lookup, ~70k
    objects), which would otherwise land on the first request and, created after
    ``_freeze_heap``, be scanned by every collection (~40 ms each, every few seconds)."""
    row = {c: 0 if c in model.numeric_columns else "warm up" for c in model.required_columns}
    if "customer_id" in model.string_columns:  # the online feature lookup has its own first time
        row.setdefault("customer_id", "warm-up")
    try:
        predictions, _ = model.infer(pd.DataFrame([row]))
        predictions_json(predictions)
    except Exception as e:  # a model that cannot take the made-up row is served all the same
        logger.info("warm-up prediction failed (%s: %s); serving anyway", type(e).__name__, e)


def _freeze_heap() -> None:
    """Collect, then exclude everything alive now (the models, mlflow, sklearn: ~350k objects)
    from the cyclic garbage collector. Without it a full collection, which allocations trigger
    every few seconds under load, stops every thread for ~0.2 s and owns the p99. Collecting first
    frees what a replaced model left in cycles, once per load rather than at random."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _same(model: LoadedModel, model_uri: str, version: str) -> bool:
    return (model.model_uri, model.version) == (model_uri, str(version))


# --------------------------------------------------------------------------------------------
# Endpoints as plain functions


def new_request_id(supplied: str | None = None) -> str:
    if supplied and _REQUEST_ID.match(supplied):
        return supplied
    return uuid.uuid4().hex


def _first(frame: pd.DataFrame, column: str) -> Any:
    if column not in frame.columns or not len(frame):
        return None
    return frame[column].iat[0]


def _headers(
    state: ServingState, served: Served | None, role: str, request_id: str
) -> tuple[tuple[str, str], ...]:
    if served is None:
        return (("X-Request-Id", request_id),)
    return (
        ("X-Model-Version", served.model.version),
        ("X-Model-Role", state.reported(role)),
        ("X-Request-Id", request_id),
    )


def handle_invocations(
    state: ServingState,
    body: bytes,
    content_type: str | None,
    request_id: str | None = None,
    started: float | None = None,
) -> Response:
    started = time.perf_counter() if started is None else started
    received = time.time()
    request_id = new_request_id(request_id)
    routing = state.routing
    served, role = routing.stable, STABLE
    try:
        if served is None:
            raise RequestError(503, "MODEL_NOT_LOADED", "no model is loaded yet")
        frame = parse_request(body, content_type, routing.string_columns)
        if routing.canary is not None and goes_to_canary(
            routing.canary_share, _first(frame, "customer_id"), request_id
        ):
            served, role = routing.canary, CANARY
        frame = prepare_frame(frame, served.model, state.max_rows)
    except RequestError as e:
        state.record(
            served, role, e.status, started, request_id=request_id, error_code=e.error_code
        )
        return Response(e.status, _error_body(e), JSON_CT, _headers(state, served, role, request_id))
    headers = _headers(state, served, role, request_id)
    if frame.empty:
        state.record(served, role, 200, started, request_id=request_id)
        return Response(200, b'{"predictions":[]}', JSON_CT, headers)
    sampled = state.tracer is not None and state.tracer.sample()
    try:
        predictions, features = served.infer(frame)
        out = predictions_json(predictions)
    except Overloaded as e:
        error = RequestError(503, "OVERLOADED", f"the server is overloaded: {e}; retry later")
        state.record(served, role, 503, started, request_id=request_id, error_code="OVERLOADED")
        return Response(503, _error_body(error), JSON_CT, (*headers, ("Retry-After", "1")))
    except Exception as e:
        state.log_model_error(served.model, e, request_id)
        error = RequestError(500, "INTERNAL_ERROR", f"prediction failed: {type(e).__name__}: {e}")
        state.record(
            served, role, 500, started, received=received, request_id=request_id,
            error_code=error.error_code, error=error.message, frame=frame,
        )  # fmt: skip
        return Response(500, _error_body(error), JSON_CT, headers)
    state.record(
        served, role, 200, started, received=received, request_id=request_id, frame=frame,
        predictions=predictions, features=features, sampled=sampled,
    )  # fmt: skip
    return Response(200, out, JSON_CT, headers)


def reject_invocation(
    state: ServingState, error: RequestError, started: float, request_id: str | None = None
) -> Response:
    """A request to /invocations refused before its body was read (size, length, method)."""
    request_id = new_request_id(request_id)
    routing = state.routing
    state.record(routing.stable, STABLE, error.status, started, request_id=request_id,
                 error_code=error.error_code)  # fmt: skip
    return Response(
        error.status, _error_body(error), JSON_CT, _headers(state, routing.stable, STABLE, request_id)
    )


def _error_body(e: RequestError) -> bytes:
    return json.dumps({"error_code": e.error_code, "message": e.message}).encode()


def health_payload(state: ServingState) -> dict[str, Any]:
    routing = state.routing
    model = routing.stable.model if routing.stable else None
    canary = routing.canary.model if routing.canary else None
    return {
        "status": "ok" if model else "loading",
        "model_uri": model.model_uri if model else None,
        "version": model.version if model else None,
        "agent": model.agent if model else None,
        "environment": state.environment,
        "loaded_at": model.loaded_at if model else None,
        "canary_model_uri": canary.model_uri if canary else None,
        "canary_version": canary.version if canary else None,
        "canary_share": routing.canary_share if canary else 0.0,
        "canary_loaded_at": canary.loaded_at if canary else None,
        "pod_role": state.pod_role,
        "pid": os.getpid(),
    }


def handle_health(state: ServingState) -> Response:
    return json_response(200 if state.current else 503, health_payload(state))


def handle_metrics(state: ServingState) -> Response:
    body, content_type = state.metrics.render()
    return Response(200, body, content_type)


def _check_admin(state: ServingState, authorization: str | None) -> None:
    if state.admin_token is None:
        return
    supplied = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(supplied.encode(), state.admin_token.encode()):
        raise RequestError(
            401, "UNAUTHENTICATED", "admin endpoints need 'Authorization: Bearer <token>'"
        )


def _admin_json(body: bytes, content_type: str | None, required: bool = True) -> dict[str, Any]:
    if not body and not required:
        return {}
    if _split_content_type(content_type)[0] != JSON_CT:
        raise RequestError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, "MALFORMED_REQUEST", f"body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "BAD_REQUEST", "expected a JSON object")
    return payload


def _load_request(payload: dict[str, Any]) -> dict[str, Any]:
    usage = ('expected {"model_uri": str, "version": str, "role": "stable"|"canary", '
             '"canary_share": 0..1, "keep_canary": bool, "force": bool}')  # fmt: skip
    if not isinstance(payload.get("model_uri"), str) or not payload["model_uri"]:
        raise RequestError(400, "BAD_REQUEST", usage)
    version = payload.get("version")
    if not isinstance(version, str | int) or isinstance(version, bool) or str(version) == "":
        raise RequestError(400, "BAD_REQUEST", "'version' must be a non-empty string")
    role = payload.get("role", STABLE)
    if role not in ROLES:
        raise RequestError(400, "BAD_REQUEST", f"'role' must be one of {list(ROLES)}, got {role!r}")
    share = payload.get("canary_share")
    if share is not None:
        if (
            isinstance(share, bool)
            or not isinstance(share, int | float)
            or not 0.0 <= share <= 1.0
            or math.isnan(share)
        ):
            raise RequestError(
                400, "BAD_REQUEST", f"'canary_share' must be in [0, 1], got {share!r}"
            )
        if role != CANARY:
            raise RequestError(400, "BAD_REQUEST", "'canary_share' applies to role 'canary' only")
    for flag in ("force", "keep_canary"):
        if not isinstance(payload.get(flag, False), bool):
            raise RequestError(400, "BAD_REQUEST", f"'{flag}' must be true or false")
    return {
        "model_uri": payload["model_uri"],
        "version": str(version),
        "role": role,
        "canary_share": None if share is None else float(share),
        "force": payload.get("force", False),
        "keep_canary": payload.get("keep_canary", False),
    }


def handle_admin_load(
    state: ServingState, body: bytes, content_type: str | None, authorization: str | None = None
) -> Response:
    try:
        _check_admin(state, authorization)
        request = _load_request(_admin_json(body, content_type))
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message)
    uri, version, role = request["model_uri"], request["version"], request["role"]
    previous = state.routing
    try:
        model, loaded = state.load(
            uri, version, force=request["force"], role=role,
            canary_share=request["canary_share"], keep_canary=request["keep_canary"],
        )  # fmt: skip
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message)
    except Exception as e:
        logger.exception("loading %s (version %s) as %s failed", uri, version, role)
        status = 500
        code_of = getattr(e, "get_http_status_code", None)
        if callable(code_of) and 400 <= (code := code_of()) < 600:
            status = code
        serving = ", ".join(
            f"{'canary ' if r == CANARY else ''}{s.model.model_uri} version {s.model.version}"
            for r, s in previous.served()
        )
        return error_response(
            status,
            "MODEL_LOAD_FAILED",
            f"could not load {uri!r} (version {version}): {type(e).__name__}: {e}; "
            f"still serving {serving or 'nothing'}",
        )
    if loaded:
        logger.info("loaded %s version %s as %s in %.2fs", model.model_uri, model.version, role,
                    model.load_seconds)  # fmt: skip
    before = previous.canary if role == CANARY else previous.stable
    return json_response(
        200,
        {
            **health_payload(state),
            "role": role,
            "swapped": loaded,
            "previous_version": before.model.version if before else None,
            "load_seconds": round(model.load_seconds, 3) if loaded else 0.0,
        },
    )


def handle_admin_promote(
    state: ServingState, body: bytes = b"", content_type: str | None = None,
    authorization: str | None = None,
) -> Response:  # fmt: skip
    try:
        _check_admin(state, authorization)
        _admin_json(body, content_type, required=False)
        previous = state.current
        promoted = state.promote()
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message)
    logger.info("promoted version %s to stable (was %s)", promoted.version,
                previous.version if previous else None)  # fmt: skip
    return json_response(
        200,
        {
            **health_payload(state),
            "promoted_version": promoted.version,
            "previous_version": previous.version if previous else None,
        },
    )


def handle_admin_abort(
    state: ServingState, body: bytes = b"", content_type: str | None = None,
    authorization: str | None = None,
) -> Response:  # fmt: skip
    try:
        _check_admin(state, authorization)
        _admin_json(body, content_type, required=False)
        aborted = state.abort()
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message)
    if aborted is not None:
        logger.info("aborted canary version %s", aborted.version)
    return json_response(
        200, {**health_payload(state), "aborted_version": aborted.version if aborted else None}
    )


def stats_payload(state: ServingState, window_s: float) -> dict[str, Any]:
    routing = state.routing
    versions = {
        STABLE: routing.stable.model.version if routing.stable else None,
        CANARY: routing.canary.model.version if routing.canary else None,
    }
    stats = state.outcomes.stats(window_s, versions)
    for role, served in routing.served():
        stats[role]["model_uri"] = served.model.model_uri
    if state.pod_role == CANARY:  # a canary pod: its one model is the environment's canary
        stats[CANARY], stats[STABLE] = stats[STABLE], None
    return {
        "environment": state.environment,
        "window_s": window_s,
        "covered_s": stats.pop("covered_s"),
        "canary_share": routing.canary_share if routing.canary else 0.0,
        **stats,
    }


def handle_admin_stats(
    state: ServingState, query: str = "", authorization: str | None = None
) -> Response:
    try:
        _check_admin(state, authorization)
        raw = parse_qs(query).get("window", ["60"])[-1]
        try:
            window = float(raw)
        except ValueError:
            window = float("nan")
        if not 0 < window <= 86400:
            raise RequestError(
                400, "BAD_REQUEST", f"'window' must be seconds in (0, 86400], got {raw!r}"
            )
    except RequestError as e:
        return error_response(e.status, e.error_code, e.message)
    return json_response(200, stats_payload(state, window))


# --------------------------------------------------------------------------------------------
# HTTP plumbing

_ADMIN_POST = {
    "/admin/load": handle_admin_load,
    "/admin/promote": handle_admin_promote,
    "/admin/abort": handle_admin_abort,
}
_KNOWN = {"/invocations", "/health", "/ping", "/metrics", "/admin/stats", *_ADMIN_POST}


class ServingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed ACKs
    timeout = 60  # seconds a keep-alive connection may sit idle
    server: ServingHTTPServer
    server_version = "agentops-serving"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        state = self.server.state
        state.enter()
        try:
            try:
                response = self._route(method, started)
            except Exception as e:  # never let a bug drop the connection without an answer
                logger.exception("unhandled error on %s %s", method, self.path)
                response = error_response(500, "INTERNAL_ERROR", f"{type(e).__name__}: {e}")
            if state.draining:
                self.close_connection = True  # stopping: let the client reconnect elsewhere
            self._send(response)
        finally:
            state.leave()

    def _route(self, method: str, started: float) -> Response:
        path, _, query = self.path.partition("?")
        state = self.server.state
        if path == "/invocations":
            request_id = self.headers.get("X-Request-Id")
            if method != "POST":
                self._skip_body()
                return reject_invocation(
                    state,
                    RequestError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}"),
                    started,
                    request_id,
                )
            try:
                body = self._read_body()
            except RequestError as e:
                return reject_invocation(state, e, started, request_id)
            return handle_invocations(
                state, body, self.headers.get("Content-Type"), request_id, started
            )
        if method == "POST" and path in _ADMIN_POST:
            try:
                body = self._read_body()
            except RequestError as e:
                return error_response(e.status, e.error_code, e.message)
            return _ADMIN_POST[path](
                state, body, self.headers.get("Content-Type"), self.headers.get("Authorization")
            )
        self._skip_body()
        if method == "GET":
            if path in ("/health", "/ping"):
                return handle_health(state)
            if path == "/metrics":
                return handle_metrics(state)
            if path == "/admin/stats":
                return handle_admin_stats(state, query, self.headers.get("Authorization"))
        if path in _KNOWN:
            return error_response(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}")
        return error_response(404, "ENDPOINT_NOT_FOUND", f"no endpoint {path}")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise RequestError(
                411, "LENGTH_REQUIRED", "send a Content-Length (chunked bodies are not supported)"
            )
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise RequestError(400, "BAD_REQUEST", f"invalid Content-Length {raw!r}") from None
        limit = self.server.max_body_bytes
        if length > limit:
            self.close_connection = True
            self._discard(length)  # so the client reads our 413 instead of a connection reset
            raise RequestError(
                413,
                "REQUEST_TOO_LARGE",
                f"body of {length} bytes exceeds the limit of {limit} bytes",
            )
        return self.rfile.read(length)

    def _skip_body(self) -> None:
        """Read and drop a body sent where none is expected, keeping the connection usable."""
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            return
        try:
            length = int(raw) if raw else 0
        except ValueError:
            self.close_connection = True
            return
        if length > 0:
            if length > self.server.max_body_bytes:
                self.close_connection = True
            self._discard(length)

    def _discard(self, length: int) -> None:
        remaining = min(length, MAX_DRAIN_BYTES)
        try:
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, 65536))):
                remaining -= len(chunk)
        except OSError:
            pass

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            self.wfile.write(response.body)
        except OSError:  # the client went away
            self.close_connection = True

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the hot path stays quiet: requests are in the metrics and the inference log

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class ServingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not delay shutdown
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        state: ServingState,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.max_body_bytes = max_body_bytes
        super().__init__(address, ServingHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its connection is routine; anything else is logged (not printed)."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            logger.debug("connection from %s dropped", client_address)
        else:
            logger.exception("error on the connection from %s", client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


# --------------------------------------------------------------------------------------------
# The process


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def remove_state_file(path: Path, pid: int) -> None:
    """Remove the state file if it is still this process's (a successor may own it)."""
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _share(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m agentops_pipelines.serving", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-uri", required=True, help="e.g. models:/support-agent/3")
    p.add_argument("--version", required=True, help="the model version being served (reported)")
    p.add_argument("--environment", required=True, help="dev, staging, production, ...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 binds an ephemeral port")
    p.add_argument("--state-file", default=None, help="JSON written on start, removed on shutdown")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="rows per request")
    p.add_argument(
        "--batch-max-rows",
        type=int,
        default=DEFAULT_BATCH_MAX_ROWS,
        help="rows merged into one predict call; 0 predicts on each request's thread",
    )
    p.add_argument(
        "--trace-sample-rate",
        type=_share,
        default=DEFAULT_TRACE_SAMPLE_RATE,
        help="share of successful requests traced in MLflow (failed ones always are)",
    )
    p.add_argument(
        "--trace-experiment",
        default="",
        help="MLflow experiment for traces (default: the model's training experiment)",
    )
    p.add_argument("--trace-max-per-second", type=float, default=20.0)
    p.add_argument("--no-tracing", action="store_true", help="trace nothing, not even errors")
    p.add_argument(
        "--trace-in-process",
        action="store_true",
        help="trace on a thread of this process (no second copy of the model in "
        "memory, but tracing then slows requests down)",
    )
    p.add_argument("--inference-log-dir", default="", help="Parquet inference log; empty: none")
    p.add_argument("--inference-log-flush-seconds", type=float, default=60.0)
    p.add_argument("--inference-log-flush-rows", type=int, default=50_000)
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, how long in-flight requests may take to finish",
    )
    p.add_argument(
        "--pod-role",
        choices=ROLES,
        default=os.environ.get("AGENTOPS_SERVING_ROLE") or STABLE,
        help="the role this process reports (env AGENTOPS_SERVING_ROLE; set on the canary pods "
        "of a Kubernetes rollout, where each pod serves one model)",
    )
    p.add_argument("--log-level", default="INFO")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # no *_created series: half the scrape size, nothing alerts on them
    # The predict thread holds the GIL for ~8 ms per call; with the default 5 ms switch interval a
    # request thread waits up to 5 ms for each of the several times it needs the GIL (read, parse,
    # hand over, answer); 1 ms bounds that wait.
    sys.setswitchinterval(0.001)
    metrics = ServingMetrics(args.environment)
    inference_log = None
    if args.inference_log_dir:
        inference_log = InferenceLogWriter(
            args.inference_log_dir,
            args.environment,
            flush_seconds=args.inference_log_flush_seconds,
            flush_rows=args.inference_log_flush_rows,
            on_rows=metrics.log_rows,
        ).start()
    tracer = None
    if not args.no_tracing:
        tracer = Tracer(
            args.environment,
            sample_rate=args.trace_sample_rate,
            max_per_second=args.trace_max_per_second,
            experiment=args.trace_experiment or None,
            on_result=metrics.trace,
            mode="thread" if args.trace_in_process else "process",
        ).start()
    state = ServingState(
        args.environment,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV),
        max_rows=args.max_rows,
        batch_max_rows=args.batch_max_rows,
        metrics=metrics,
        inference_log=inference_log,
        tracer=tracer,
        freeze_gc=True,
        pod_role=args.pod_role,
    )
    server = ServingHTTPServer((args.host, args.port), state, args.max_body_bytes)
    if state.admin_token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("/admin/* is open on %s: set %s", args.host, ADMIN_TOKEN_ENV)
    pid, started_at = os.getpid(), _now()
    state_file = Path(args.state_file).resolve() if args.state_file else None

    def write_state(model: LoadedModel | None) -> None:
        if state_file is None:
            return
        canary = state.canary
        write_json_atomic(
            state_file,
            {
                "pid": pid,
                "host": args.host,
                "port": server.port,
                "url": server.url,
                "model_uri": model.model_uri if model else args.model_uri,
                "version": model.version if model else str(args.version),
                "environment": args.environment,
                "started_at": started_at,
                "status": "serving" if model else "loading",
                "loaded_at": model.loaded_at if model else None,
                "canary_model_uri": canary.model_uri if canary else None,
                "canary_version": canary.version if canary else None,
                "canary_share": state.routing.canary_share if canary else 0.0,
                "inference_log_dir": args.inference_log_dir or None,
                "trace_sample_rate": args.trace_sample_rate if tracer else 0.0,
            },
        )

    stop = threading.Event()
    exit_code = [0]

    def initial_load() -> None:
        try:
            model, _ = state.load(args.model_uri, args.version)
            logger.info(
                "serving %s version %s on %s (loaded in %.2fs, direct predict: %s)",
                model.model_uri,
                model.version,
                server.url,
                model.load_seconds,
                model.direct_predict,
            )
        except Exception as e:
            logger.exception("loading the model failed")
            logger.error(  # last, on one line, so the tail of the log says why
                "could not load %s (version %s): %s: %s",
                args.model_uri, args.version, type(e).__name__, e,
            )  # fmt: skip
            exit_code[0] = 1
            stop.set()

    state.on_swap(write_state)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    write_state(None)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    threading.Thread(target=initial_load, name="initial-load", daemon=True).start()
    logger.info("listening on %s (environment %s, pid %d)", server.url, args.environment, pid)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        state.draining = True
        server.shutdown()  # no new connections; open ones finish their request and close
        if not state.wait_idle(args.drain_seconds):
            logger.warning(
                "requests still running after %.1fs: stopping anyway", args.drain_seconds
            )
        server.server_close()
        state.close()
        if inference_log is not None:
            inference_log.close(timeout=5.0)
            logger.info("inference log: %d files written", inference_log.files_written)
        if tracer is not None:
            tracer.close(timeout=2.0)
        if state_file is not None:
            remove_state_file(state_file, pid)
        logger.info("stopped (exit code %d)", exit_code[0])
    return exit_code[0]
