"""``LLMRouter``: the agent interface's router, deciding with one constrained chat completion.

The system prompt (versioned in MLflow's prompt registry by the agent's ``train``) lists the
tools; the answer is constrained by a JSON schema whose ``tool`` is an enum of the tool names, so
every decision is a valid tool call, however small the model. What the router cannot know is its
confidence: an LLM's answer carries none that is calibrated, so it reports 1.0 for an answer and
0.0 for the hand-over it falls back to when the endpoint fails (serving does not stop). Calls and
failures by reason (``endpoint.FAILURE_REASONS``) are counted per process (``llm_call_counts``:
the serving process exports them as ``agentops_llm_calls_total`` and
``agentops_llm_call_failures_total``), the last error kept in ``last_error``.

Decisions are memoised per text (temperature 0: the same text gets the same answer), which keeps
an evaluation over templated requests from paying for one call per repeated text; a traced
request always makes the call, so its trace shows the real tokens and latency.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agentops_pipelines.agent.llm.endpoint import (
    Endpoint,
    EndpointError,
    active_span,
    traced_complete,
)

if TYPE_CHECKING:
    import pandas as pd

CACHE_SIZE = 4096


def tool_schema(tools: Sequence[str]) -> dict:
    return {"type": "object", "properties": {"tool": {"type": "string", "enum": list(tools)}},
            "required": ["tool"], "additionalProperties": False}


class DecidingRouter:
    """The interface's router for routers that decide one text at a time (``decide``): the batch
    entry points, the counts of calls and failures, and pickling without the runtime state (locks,
    caches, loaded code, this process's counts) that ``_init_runtime`` rebuilds."""

    io_bound = True  # each decision waits on an endpoint: serving predicts it off its event loop
    classes: list[str]
    fallback_tool: str

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0  # LLM calls this process made (a memoised decision makes none)
        self.failed: dict[str, int] = {}  # reason (endpoint.FAILURE_REASONS) -> failed calls
        self.last_error: str | None = None

    def _runtime_names(self) -> tuple[str, ...]:
        return ("_lock", "calls", "failed", "last_error")

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in self._runtime_names():
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    def decide(self, text: str, features: Mapping[str, Any] | None = None) -> tuple[str, float, dict]:
        raise NotImplementedError

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    def llm_call_counts(self) -> tuple[int, dict[str, int]]:
        """(calls, failed calls by reason) since this process loaded the router."""
        with self._lock:
            return self.calls, dict(self.failed)

    def _called(self) -> None:
        with self._lock:
            self.calls += 1

    def _failed(self, error: str, reason: str, usage: dict | None = None) -> tuple[str, float, dict]:
        """The hand-over a failed decision falls back to (confidence 0), counted by ``reason``
        and kept."""
        with self._lock:
            self.failed[reason] = self.failed.get(reason, 0) + 1
            self.last_error = error
        return self.fallback_tool, 0.0, {**(usage or {}), "error": error, "reason": reason}

    def predict_columns(self, columns: Mapping[str, Sequence], n: int) -> tuple[list[str], list[float]]:
        decided = [self.decide(str(t)) for t in columns["text"][:n]]
        return [d[0] for d in decided], [d[1] for d in decided]

    def predict(self, requests: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        tools, confidence = self.predict_columns({"text": requests["text"].tolist()}, len(requests))
        return pd.DataFrame({"tool": tools, "confidence": confidence})


class LLMRouter(DecidingRouter):
    def __init__(self, endpoint: Endpoint, tools: Sequence[str], system_prompt: str, prompt_uri: str,
                 fallback_tool: str):
        self.endpoint = endpoint
        self.classes = list(tools)  # the labels it may answer (what the evaluations read)
        self.system_prompt = system_prompt
        self.prompt_uri = prompt_uri
        self.fallback_tool = fallback_tool
        self._init_runtime()

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._cache: OrderedDict[str, tuple[str, float, dict]] = OrderedDict()

    def _runtime_names(self) -> tuple[str, ...]:
        return (*super()._runtime_names(), "_cache")

    def decide(self, text: str, features: Mapping[str, Any] | None = None) -> tuple[str, float, dict]:
        """(tool, confidence, usage: tokens, latency, model; ``cached`` when memoised)."""
        key = str(text)
        traced = active_span() is not None  # a traced request shows a real call, never a memo
        with self._lock:
            hit = None if traced else self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[0], hit[1], {**hit[2], "cached": True}
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": key}]
        self._called()
        try:
            done = traced_complete(self.endpoint, messages, tool_schema(self.classes))
        except EndpointError as exc:
            return self._failed(str(exc), exc.reason)
        tool = done.content.get("tool")
        if tool not in self.classes:  # an endpoint that ignored the schema
            return self._failed(f"answered {str(done.content)[:100]}, not one of the tools", "off_schema",
                                done.usage())
        result = (str(tool), 1.0, done.usage())
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return result
