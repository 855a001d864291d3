"""The agent as an MLflow pyfunc model: route, fill the tool call, answer, trace.

Imported only where a model is trained or served (it imports mlflow at module level).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import mlflow
import numpy as np
import pandas as pd

from agentops_pipelines.agent.interface import Router
from agentops_pipelines.agent.tools import fill_call

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("tool", "confidence", "escalated", "tool_call", "answer", "prompt_version")
#: Acting (a served request runs its tools): the outcome, and the trajectory in a private column
#: the serving process takes out before answering (it becomes the trace's step spans).
ACT_COLUMNS = (*OUTPUT_COLUMNS, "outcome")
TRAJECTORY_COLUMN = "_trajectory"
_ACT_INDEX = pd.Index([*ACT_COLUMNS, TRAJECTORY_COLUMN], dtype=object)  # built once, shared read-only
REQUEST_ID_COLUMN = "request_id"
FeatureLookup = Callable[[list[str]], pd.DataFrame]


def render(template: str, **values: object) -> str:
    """Fill ``{{name}}`` placeholders the way MLflow's prompt registry does."""
    out = template
    for key, value in values.items():
        out = out.replace("{{" + key + "}}", str(value))
    return out


class AgentModel(mlflow.pyfunc.PythonModel):
    """Wraps any router from :mod:`agentops_pipelines.agent.interface` for logging and serving.

    Input: a DataFrame with ``text`` and optionally ``customer_id`` and feature columns. Missing
    features are looked up in the online store (Feast) when the serving process provides one,
    otherwise filled with neutral values.
    """

    text_max_chars: int | None = None  # the longest training text (serving derives its text limit)
    answer_templates: dict[str, str] = {}  # tool -> template; set from Agent.answer_templates at training

    def __init__(self, agent_name: str, router: Router, feature_columns: Sequence[str],
                 tool_descriptions: dict[str, str], escalation_tool: str | None,
                 prompt_template: str, prompt_uri: str):
        self.agent_name = agent_name
        self.router = router
        self.feature_columns = tuple(feature_columns)
        self.tool_descriptions = dict(tool_descriptions)
        self.escalation_tool = escalation_tool
        self.prompt_template = prompt_template
        self.prompt_uri = prompt_uri
        self._feature_lookup: FeatureLookup | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_feature_lookup"] = None  # a live connection is never pickled
        return state

    def set_feature_lookup(self, lookup: FeatureLookup | None) -> None:
        self._feature_lookup = lookup

    def load_context(self, context) -> None:
        """Where it is served, look customers' features up in the online store (Feast).

        The store is this agent's own (its Feast project), found from the serving process's
        environment (``AGENTOPS_HOME``, ``AGENTOPS_FEAST_*``: the variables the code location's
        settings read; a deployer sets the agent's, ``mlflow models serve`` may have only the
        state folder), through the plain
        lookup module the Feast resource uses too: a served model imports nothing from the code
        location's resources. Without a store, features the caller did not send are filled with
        neutral values, and the reason is logged once.
        """
        if not self.feature_columns or self._feature_lookup is not None:
            return
        try:
            import os

            from agentops_pipelines.features.online import OnlineLookup, served_config

            config = served_config(os.environ, self.agent_name)  # this process's edge
            if not config.has_online_store:
                log.warning("no online store at %s: features not sent are filled with defaults", config.repo_dir)
                return
            self._feature_lookup = OnlineLookup(config)  # dict of lists: the fast path
        except Exception as exc:  # noqa: BLE001 - serving without features beats not serving
            log.warning("online features unavailable (%s: %s): features not sent are filled with defaults",
                        type(exc).__name__, exc)

    # -- steps, each a span when traced ------------------------------------------------------
    # Requests travel as columns (name -> list of values): a serving request is one row, and
    # pandas costs ~0.1 ms per frame built or column read, more than the routing itself.

    def _columns(self, requests: pd.DataFrame) -> dict[str, list]:
        """The request's columns plus every feature: sent, looked up online, or the neutral fill."""
        n = len(requests)
        columns = {str(c): requests[c].tolist() for c in requests.columns}
        missing = [c for c in self.feature_columns if c not in columns]
        if not missing:
            return columns
        found: dict = {}
        if self._feature_lookup is not None and "customer_id" in columns:
            found = self._feature_lookup([str(c) for c in columns["customer_id"]])
        for col in missing:
            columns[col] = list(found[col]) if col in found else [_neutral(col)] * n
        return columns

    def _route(self, columns: dict[str, list]) -> tuple[list[str], list[float]]:
        """(tool, confidence) per row. A router with ``predict_columns`` takes the columns as they
        are; any other gets the DataFrame of :class:`~agentops_pipelines.agent.interface.Router`."""
        n = len(columns["text"])
        fast = getattr(self.router, "predict_columns", None)
        if fast is not None:
            tools, confidence = fast(columns, n)
            return [str(t) for t in tools], [float(c) for c in confidence]
        routed = self.router.predict(pd.DataFrame(columns))
        return routed["tool"].astype(str).tolist(), routed["confidence"].astype(float).tolist()

    def _respond(self, customer_id: object, tool: str, features: dict) -> tuple[str, str]:
        """The tool call and the answer: the tool's own template if the agent has one (older
        pickles have no ``answer_templates``), else the agent's; a request from nobody (a plain
        file's agent) is answered without a customer argument."""
        call = fill_call(tool, str(customer_id), features)
        shown = {k: v for k, v in call.items() if k != "customer_id" or v not in ("", "anonymous", "None", "nan")}
        template = getattr(self, "answer_templates", {}).get(tool, self.prompt_template)
        answer = render(
            template,
            agent=self.agent_name,
            tool=tool,
            tool_description=self.tool_descriptions.get(tool, f"Your request is about {tool.replace('_', ' ')}."),
            arguments=", ".join(f"{k}={v}" for k, v in shown.items()),
            customer_id=shown.get("customer_id", ""),
        )
        return json.dumps({"tool": tool, "arguments": call}, default=str), answer

    def _answers(self, columns: dict[str, list], tools: list[str]) -> tuple[list[str], list[str]]:
        customers = columns.get("customer_id") or ["anonymous"] * len(tools)
        calls, answers = [], []
        for i, tool in enumerate(tools):
            call, answer = self._respond(customers[i], tool, {c: columns[c][i] for c in self.feature_columns})
            calls.append(call)
            answers.append(answer)
        return calls, answers

    def _output(self, columns: dict[str, list], tools: list[str], confidence: list[float]) -> pd.DataFrame:
        calls, answers = self._answers(columns, tools)
        return pd.DataFrame({  # OUTPUT_COLUMNS, typed: what a pyfunc caller gets
            "tool": tools,
            "confidence": np.asarray(confidence, dtype=float),
            "escalated": [t == self.escalation_tool for t in tools],
            "tool_call": calls,
            "answer": answers,
            "prompt_version": [self.prompt_uri] * len(tools),
        })

    # -- entry points ------------------------------------------------------------------------
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        columns = self._columns(_as_frame(model_input))
        return self._output(columns, *self._route(columns))

    def predict_with_features(self, model_input) -> tuple[pd.DataFrame, pd.DataFrame]:
        """:meth:`predict` and the feature values it used (``feature_columns``, one row per
        request: sent in the request, looked up online, or the neutral fill). For the serving
        process's inference log."""
        columns = self._columns(_as_frame(model_input))
        out = self._output(columns, *self._route(columns))
        return out, pd.DataFrame({c: columns[c] for c in self.feature_columns}, columns=list(self.feature_columns))

    def predict_with_steps(self, model_input) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, str, int, int]]]:
        """:meth:`predict_with_features` and the wall-clock times (``time.time_ns``) of its steps,
        ``(name, span type, start, end)``: the serving process traces the served request with
        them instead of running it again."""
        t0 = time.time_ns()
        columns = self._columns(_as_frame(model_input))
        t1 = time.time_ns()
        tools, confidence = self._route(columns)
        t2 = time.time_ns()
        calls, answers = self._answers(columns, tools)
        n = len(tools)
        # One object block per frame, as predict_acting builds them: a frame from a dict of
        # lists costs ~0.1 ms per column (pandas checks and converts each), a quarter of a lone
        # request's CPU; the serving process reads these rows back as plain values.
        out = _object_frame(OUTPUT_COLUMNS, [tools, [float(c) for c in confidence],
                                             [t == self.escalation_tool for t in tools], calls, answers,
                                             [self.prompt_uri] * n], n)  # fmt: skip
        t3 = time.time_ns()
        features = _object_frame(self.feature_columns, [columns[c] for c in self.feature_columns], n)
        return out, features, [("feature_lookup", "RETRIEVER", t0, t1), ("route", "LLM", t1, t2),
                               ("tool", "TOOL", t2, t3)]

    # -- acting: the served request runs the executor ------------------------------------------
    def can_act(self) -> bool:
        """True when every tool this router picks is one the support desk can run."""
        from agentops_pipelines.agent.actions import SPECS

        classes = getattr(self.router, "classes", None) or list(self.tool_descriptions)
        return bool(classes) and all(str(c) in SPECS for c in classes)

    def executor(self, actions):
        """An :class:`~agentops_pipelines.agent.trajectory.Executor` over ``actions`` whose
        decide step is this model's router (features come from :meth:`_columns`)."""
        from agentops_pipelines.agent.trajectory import Executor, router_from_model

        return Executor(actions, router_from_model(self.router, self.feature_columns))

    def predict_acting(self, executor, model_input) -> tuple[pd.DataFrame, pd.DataFrame, list]:
        """Serve each row as a trajectory: its tools run against the system of record.

        The idempotency key of each row is its ``request_id`` (the serving process puts the
        client's ``X-Request-Id`` there, ``<id>.<i>`` for a request's rows after the first:
        ``handlers.row_request_ids``), so a retried request replays its writes instead of
        repeating them, even in the micro-batch of its first attempt (the same key twice is the
        same request twice). Without the column, rows get a fresh id each. Returns the predictions
        (:data:`ACT_COLUMNS` and the trajectory as a dict in :data:`TRAJECTORY_COLUMN`), the
        features used, and no shared steps (each row has its own, in its trajectory)."""
        import uuid

        frame = _as_frame(model_input)
        columns = self._columns(frame)
        n = len(frame)
        ids = columns.get(REQUEST_ID_COLUMN)
        rids = [str(i) for i in ids] if ids else [uuid.uuid4().hex for _ in range(n)]
        rows = []
        for t in self.trajectories(executor, columns, rids):
            trajectory = t.to_dict()
            calls = [{"tool": c["tool"], "arguments": c["arguments"], "outcome": c["outcome"]}
                     for c in trajectory["tool_calls"]]
            rows.append((t.tool or "", float(t.confidence or 0.0),
                         t.outcome == "handed_over" or t.tool == self.escalation_tool,
                         json.dumps(calls, default=str), t.answer, self.prompt_uri, t.outcome, trajectory))
        # One object block each: ~20x cheaper than a frame from a dict of lists (pandas checks
        # and converts column by column), which cost more than the request's SQL. dtype=object:
        # pandas would otherwise look in each column for dates (none here), ~3x the frame's cost.
        out = pd.DataFrame(np.array(rows, dtype=object).reshape(n, len(ACT_COLUMNS) + 1),
                           columns=_ACT_INDEX, dtype=object)
        return out, _object_frame(self.feature_columns, [columns[c] for c in self.feature_columns], n), []

    def trajectories(self, executor, columns: dict[str, list], request_ids: Sequence[str],
                     contexts: Sequence[dict | None] | None = None) -> list:
        """Each row of ``columns`` through ``executor``: the router asked once and the customers
        read once for the whole micro-batch (serving and the shadow challenger alike).
        ``contexts``: per row, the customer as a primary's ``fetch_context`` already read it (a
        shadow challenger replaying the primary's requests: no second read, and the customer as
        the primary saw it before its own writes), or None to read it here."""
        n = len(columns["text"])
        customers = columns.get("customer_id") or [""] * n
        decisions = self._decide_batch(columns, n)
        if contexts is not None:
            found = [(c, 0.0) if c is not None else None for c in contexts]
        else:  # one read for the batch's customers (one query per row was ~8% of a saturated server)
            found = executor.customers([str(c or "") for c in customers]) if n > 1 else None
        return [executor.run(request_ids[i], str(columns["text"][i]), str(customers[i] or ""),
                             features={c: _plain(columns[c][i]) for c in self.feature_columns},
                             decision=decisions[i] if decisions else None,
                             customer=found[i] if found else None)
                for i in range(n)]

    def _decide_batch(self, columns: dict[str, list], n: int) -> list[tuple[str, float, float]] | None:
        """The trained router asked once for a micro-batch of ``n`` rows: (tool, confidence, this
        row's share of the routing milliseconds) per row. A vectorised router costs about the
        same for 32 rows as for one, so asking it per row was ~15% of a saturated server's CPU.
        None (each row decides on its own, and a failure stays that row's) for one row, for an
        LLM router (``decide``: one call per request), or when the batch call fails."""
        if n < 2 or callable(getattr(self.router, "decide", None)):
            return None
        start = time.perf_counter()
        try:
            tools, confidence = self._route(columns)
        except Exception:  # noqa: BLE001 - the rows' own decide steps record the error
            return None
        share = (time.perf_counter() - start) * 1000 / n
        return [(tools[i], confidence[i], share) for i in range(n)]

    def predict_traced(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """The same as :meth:`predict`, one MLflow trace per request with a span per step."""
        rows = []
        for _, one in _as_frame(model_input).iterrows():
            rows.append(self._traced_one(one.to_frame().T.reset_index(drop=True)))
        return pd.concat(rows, ignore_index=True) if rows else self.predict(None, model_input)

    def _traced_one(self, request: pd.DataFrame) -> pd.DataFrame:
        with mlflow.start_span(name=self.agent_name, span_type="AGENT") as root:
            root.set_inputs(request.iloc[0].to_dict())
            root.set_attribute("prompt_version", self.prompt_uri)
            with mlflow.start_span(name="feature_lookup", span_type="RETRIEVER") as span:
                span.set_inputs({"customer_id": str(request.get("customer_id", pd.Series(["?"])).iloc[0])})
                columns = self._columns(request)
                span.set_outputs({c: _plain(columns[c][0]) for c in self.feature_columns})
            with mlflow.start_span(name="route", span_type="LLM") as span:
                span.set_inputs({"text": str(columns["text"][0])})
                tools, confidence = self._route(columns)
                span.set_outputs({"tool": tools[0], "confidence": confidence[0]})
            with mlflow.start_span(name=f"tool:{tools[0]}", span_type="TOOL") as span:
                out = self._output(columns, tools, confidence)
                span.set_inputs(json.loads(out["tool_call"].iloc[0]))
                span.set_outputs({"answer": out["answer"].iloc[0]})
            root.set_outputs(out.iloc[0].to_dict())
        return out


def _neutral(column: str) -> object:
    """The value of a feature nobody knows: a category of its own, or zero."""
    return "unknown" if column == "plan_tier" else 0


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _as_frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        frame = pd.DataFrame(model_input if all(isinstance(v, list) for v in model_input.values()) else [model_input])
    else:
        frame = pd.DataFrame(model_input)
    if "text" not in frame:
        raise ValueError(f"the agent needs a 'text' column; got columns {list(frame.columns)}")
    return frame


def signature(feature_columns: Sequence[str]):
    """Input: text (required), customer_id and the features (optional). Output: OUTPUT_COLUMNS."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [ColSpec("string", "text"), ColSpec("string", "customer_id", required=False)]
    for col in feature_columns:
        inputs.append(ColSpec("string" if col == "plan_tier" else "long", col, required=False))
    outputs = [ColSpec("string", "tool"), ColSpec("double", "confidence"), ColSpec("boolean", "escalated"),
               ColSpec("string", "tool_call"), ColSpec("string", "answer"), ColSpec("string", "prompt_version")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


OUTPUT_COLUMNS = ("tool", "confidence", "escalated", "tool_call", "answer", "prompt_version")


def _object_frame(names: Sequence[str], values: Sequence[Sequence], n: int) -> pd.DataFrame:
    """A frame of ``n`` rows whose columns ``names`` hold ``values`` as one object block."""
    block = np.empty((n, len(names)), dtype=object)
    for j, column in enumerate(values):
        block[:, j] = column
    return pd.DataFrame(block, columns=list(names))
