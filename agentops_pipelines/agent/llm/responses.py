"""Agents written as an MLflow ``ResponsesAgent`` (models from code), in the same lifecycle.

An author writes one Python file that defines a :class:`mlflow.pyfunc.ResponsesAgent` calling an
OpenAI-compatible endpoint and ends with ``mlflow.models.set_model(agent)`` (MLflow's "models from
code"; ``support_responses_agent.py`` here is an example). The file reads its endpoint from
``mlflow.models.ModelConfig`` (``base_url``, ``model``, ``response_format``, ``api_key_env``: the
key variable's *name*), so the same file runs on the local SmolLM2 and on a hosted endpoint.

:class:`ResponsesAgentAdapter` brings such a file into the pipeline: its ``train`` trains nothing;
it returns a :class:`ResponsesAgentRouter` holding the file's *source* and the endpoint settings
(never the key). The lifecycle wraps that router like any other (``AgentModel``), so the agent is
evaluated on the held-out requests and the golden trajectories, registered, deployed, canaried and
traced like the trained router: the version is immutable (its code is inside the model's
artifacts, under the digests approvals bind to), and the file is loaded with MLflow's own
models-from-code loader where the model is used.

The protocol between the pipeline and the agent is the Responses API's: each request is one user
message, with the agent's tools as ``tools`` and ``tool_choice="required"``; the agent answers a
``function_call`` output item naming the tool, and ``usage`` (input and output tokens). An answer
without a known tool, or an agent that raises, falls back to the hand-over (counted by reason,
``endpoint.failure_reason``, kept in ``last_error``), as the LLM router does when its endpoint
fails.
"""

from __future__ import annotations

import inspect
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.agent.llm.endpoint import Endpoint, active_span, failure_reason
from agentops_pipelines.agent.llm.router import DecidingRouter
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES, TOOLS

if TYPE_CHECKING:
    import pandas as pd

EXAMPLE = Path(__file__).with_name("support_responses_agent.py")
_load_lock = threading.Lock()  # MLflow's loader keeps the model it loads in a module global


def endpoint_config(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint as the ``ModelConfig`` of a models-from-code file: settings and the key
    variable's name, never its value."""
    return asdict(endpoint)


def load_code_agent(code: str, filename: str, model_config: Mapping[str, Any]):
    """The object ``code`` passes to ``mlflow.models.set_model``, loaded by MLflow's
    models-from-code loader with ``model_config`` (what ``mlflow.models.ModelConfig`` reads)."""
    import mlflow.models.model
    from mlflow.models.utils import _load_model_code_path

    with _load_lock, tempfile.TemporaryDirectory(prefix="agentops-code-") as folder:
        path = Path(folder) / Path(filename).name
        path.write_text(code)
        mlflow.models.model.__mlflow_model__ = None  # a file that never calls set_model fails
        return _load_model_code_path(str(path), dict(model_config))


class ResponsesAgentRouter(DecidingRouter):
    """The interface's router over a ResponsesAgent's source: one ``predict`` per decision."""

    def __init__(self, code: str, filename: str, model_config: Mapping[str, Any],
                 tools: Mapping[str, str], fallback_tool: str):
        self.code = code
        self.filename = filename
        self.model_config = dict(model_config)
        self.tool_descriptions = dict(tools)
        self.classes = list(tools)
        self.fallback_tool = fallback_tool
        self._init_runtime()

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._agent = None

    def _runtime_names(self) -> tuple[str, ...]:
        return (*super()._runtime_names(), "_agent")

    def agent(self):
        """The ResponsesAgent, loaded from the code on first use (once per process)."""
        with self._lock:
            if self._agent is None:
                self._agent = load_code_agent(self.code, self.filename, self.model_config)
            return self._agent

    def request(self, text: str) -> dict:
        """A Responses API request: the customer's message, the tools, a tool call required."""
        return {"input": [{"role": "user", "content": text}], "tool_choice": "required",
                "tools": [{"type": "function", "name": name, "description": description,
                           "parameters": {"type": "object", "properties": {}}}
                          for name, description in self.tool_descriptions.items()]}

    def decide(self, text: str, features: Mapping[str, Any] | None = None) -> tuple[str, float, dict]:
        """(tool, confidence, usage). Outside a trace, ``predict`` runs without the AGENT span
        ``ResponsesAgent`` wraps it in, which would otherwise export a trace of its own for every
        served request (the serving process traces requests itself, sampled, off its hot path)."""
        from mlflow.types.responses import ResponsesAgentRequest

        agent = self.agent()
        predict = agent.predict
        if active_span() is None:
            predict = inspect.unwrap(type(agent).predict).__get__(agent)
        self._called()
        started = time.perf_counter()
        try:
            response = predict(ResponsesAgentRequest(**self.request(str(text))))
        except Exception as exc:  # noqa: BLE001 - the author's code failed: hand over, counted
            return self._failed(f"{type(exc).__name__}: {exc}"[:500], failure_reason(exc))
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                 "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                 "model": str(response.model or self.model_config.get("model") or "")}
        if response.usage is not None:
            usage |= {"prompt_tokens": response.usage.input_tokens, "completion_tokens": response.usage.output_tokens,
                      "total_tokens": response.usage.total_tokens}
        calls = [item for item in response.output if item.type == "function_call"]
        tool = getattr(calls[0], "name", None) if calls else None
        if tool not in self.classes:
            return self._failed(f"answered {'tool ' + repr(tool) if calls else 'no tool call'}, "
                                f"not one of the tools", "off_schema", usage)
        return str(tool), 1.0, usage


class ResponsesAgentAdapter(Agent):
    """An agent written as a ResponsesAgent file, with the support desk's tools and lifecycle.

    ``train`` trains nothing: it reads the file and returns the router that runs it (the source
    is what gets versioned). Compared with the trained router's champion (``baseline_agent``)
    while it has none of its own.
    """

    feature_columns = ()  # the agent reads the text alone
    tools = TOOL_NAMES
    tool_descriptions = {t.name: t.description for t in TOOLS}
    escalation_tool = ESCALATE
    baseline_agent = "support_agent"

    def __init__(self, endpoint: Endpoint, code_path: Path = EXAMPLE, name: str = "support_responses_agent"):
        self.name = name
        self.endpoint = endpoint
        self.code_path = Path(code_path)

    @property
    def llm_endpoint(self) -> Endpoint:
        """The endpoint this agent declares: its serving processes get the endpoint's key."""
        return self.endpoint

    def train(self, training_set: pd.DataFrame, params: Mapping[str, object]) -> ResponsesAgentRouter:
        return ResponsesAgentRouter(self.code_path.read_text(), self.code_path.name, endpoint_config(self.endpoint),
                                    {t: self.tool_descriptions[t] for t in self.tools}, ESCALATE)
