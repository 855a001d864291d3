"""Agents that act in the served path: the request runs its tools, and what it did is recorded.

A loaded model that can act (``AgentModel.can_act``: every tool its router picks is one of the
support desk's, ``agent/actions.py``) is served through its executor (``agent/trajectory.py``):
fetch context, decide, extract arguments, call the tool against the system of record (a
hand-over to a person when the policy says so), observe, answer. The request's ``X-Request-Id``
is the idempotency key of its writes (``handlers.py`` puts it in the ``request_id`` column), so a
retried request replays its refund instead of refunding twice.

Each row's trajectory travels in the predictions' private ``_trajectory`` column (micro-batching
splits it by rows like any column); ``handlers.py`` takes it out before answering and turns its
steps into the trace's spans (:func:`trace_steps`), hands it to online evaluation and to the shadow
challenger (``online_eval.py``), and never sends it to the client.

Invalid tool arguments (pydantic says which, e.g. ``order_id: String should match pattern``) fail
the ``call_tool`` step; the request still answers 200 with the agent asking for what it lacks
(outcome ``invalid_arguments``), the step's span has status ERROR with the message, and such
requests are always traced (reason ``flagged``) within the tracer's rate cap.

Configuration, read once by the serving process's ``main`` (:meth:`ActSettings.from_environ`):
``AGENTOPS_SOR_URL``: the system of record of this process's environment only, which the deployer
puts there (default: that environment's SQLite file under ``<AGENTOPS_HOME>``,
``system_of_record.db`` for prod, ``system_of_record_<environment>.db`` otherwise; with
``--sor-fallback off``, as on Kubernetes, no URL means no acting; ``off``: serve without running
tools), ``AGENTOPS_REFUND_LIMIT``, ``AGENTOPS_ONLINE_EVAL_SAMPLE_RATE``. The URL is never
logged (it may hold a password).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agentops_pipelines.vocabulary import (
    DEFAULT_ONLINE_EVAL_SAMPLE_RATE,
    DEFAULT_REFUND_LIMIT,
    EnvVar,
)

logger = logging.getLogger("agentops_pipelines.serving")

TRAJECTORY_COLUMN = "_trajectory"  # agent.model.TRAJECTORY_COLUMN (not imported: it imports mlflow)
REQUEST_ID_COLUMN = "request_id"
FLAGGED_OUTCOMES = frozenset({"error", "invalid_arguments", "unknown_tool"})


@dataclass(frozen=True)
class ActSettings:
    sor_url: str  # "" : do not act
    refund_limit: float = DEFAULT_REFUND_LIMIT
    online_eval_sample_rate: float = DEFAULT_ONLINE_EVAL_SAMPLE_RATE

    @classmethod
    def from_environ(cls, env: Mapping[str, str], environment: str = "prod",
                     fallback: str = "local") -> ActSettings:
        """Read once by the serving process of ``environment``. Without ``AGENTOPS_SOR_URL``,
        ``fallback`` decides: ``local``, that environment's own SQLite file under the state
        folder (never another environment's); ``off``, do not act (a Kubernetes pod whose
        environment has no system-of-record Secret must not act on a throwaway file)."""
        from agentops_pipelines.agent.system_of_record import default_url
        from agentops_pipelines.features.online import default_home

        if fallback not in ("local", "off"):
            raise ValueError(f"the system-of-record fallback must be 'local' or 'off', not {fallback!r}")
        url = env.get(EnvVar.SOR_URL, "").strip()
        if url.lower() == "off" or (not url and fallback == "off"):
            url = ""
        elif not url:
            url = default_url(default_home(env), environment)
        try:
            limit = float(env.get(EnvVar.REFUND_LIMIT) or DEFAULT_REFUND_LIMIT)
            rate = float(env.get(EnvVar.ONLINE_EVAL_SAMPLE_RATE) or DEFAULT_ONLINE_EVAL_SAMPLE_RATE)
        except ValueError as e:
            raise ValueError(f"{EnvVar.REFUND_LIMIT} and {EnvVar.ONLINE_EVAL_SAMPLE_RATE} must be numbers: {e}") from None
        if not 0 < limit < 1e9 or not 0.0 <= rate <= 1.0:
            raise ValueError(f"{EnvVar.REFUND_LIMIT} must be positive ({limit}) and "
                             f"{EnvVar.ONLINE_EVAL_SAMPLE_RATE} in [0, 1] ({rate})")
        return cls(url, limit, rate)

    @property
    def enabled(self) -> bool:
        return bool(self.sor_url)


class Acting:
    """One system of record per serving process, and the models made to act on it."""

    def __init__(self, settings: ActSettings):
        self.settings = settings
        self._sor = None

    @property
    def sor(self):
        if self._sor is None:
            from agentops_pipelines.agent.system_of_record import SystemOfRecord

            sor = SystemOfRecord(self.settings.sor_url)
            sor.ensure()  # the demo's SQLite file is created and seeded on first use
            self._sor = sor
        return self._sor

    def attach(self, model):
        """``model`` (a ``LoadedModel``) serving through its executor, when it can act."""
        python_model = model.python_model
        if not self.settings.enabled or python_model is None:
            return model
        can_act = getattr(python_model, "can_act", None)
        if not callable(can_act) or not can_act():
            return model
        from agentops_pipelines.agent.actions import Actions, Policy

        executor = python_model.executor(Actions(self.sor, Policy(self.settings.refund_limit)))
        act = python_model.predict_acting

        def with_steps(frame):
            return act(executor, frame)

        def with_features(frame):
            out, features, _ = act(executor, frame)
            return out, features

        def predict(frame):
            return act(executor, frame)[0]

        logger.info("version %s acts: its tools run against the system of record (refund limit %.2f)",
                    model.version, self.settings.refund_limit)
        return replace(model, predict=predict, predict_with_features=with_features,
                       predict_with_steps=with_steps, acts=True)

    def close(self) -> None:
        if self._sor is not None:
            self._sor.dispose()


def split_trajectories(predictions: Any) -> tuple[Any, list[dict]]:
    """(the predictions without the private column, the trajectories of its rows). Takes a
    DataFrame or the batcher's plain row dicts (``batching.plain_rows``): the column never
    reaches a client either way."""
    if isinstance(predictions, list):
        if not predictions or not isinstance(predictions[0], dict) or TRAJECTORY_COLUMN not in predictions[0]:
            return predictions, []
        return ([{k: v for k, v in row.items() if k != TRAJECTORY_COLUMN} for row in predictions],
                [row.get(TRAJECTORY_COLUMN) for row in predictions])
    columns = getattr(predictions, "columns", None)
    if columns is None or TRAJECTORY_COLUMN not in columns:
        return predictions, []
    trajectories = predictions[TRAJECTORY_COLUMN].tolist()
    if columns[-1] == TRAJECTORY_COLUMN:  # AgentModel puts it last: a slice is ~3x cheaper than drop
        return predictions.iloc[:, :-1], trajectories
    return predictions.drop(columns=[TRAJECTORY_COLUMN]), trajectories


class StepFailed(RuntimeError):
    """A step of the served request failed on our side (the router raised, a tool's database was
    down): the request is a server error (5xx), counted as such, so the error-rate alert and the
    rollback loop see a failing model even though the executor answered politely."""


def failed_trajectory(trajectories: list[dict]) -> StepFailed | None:
    """The first row whose execution ended in ``error`` (not a business outcome such as a
    rejected refund or invalid arguments), as the exception the request fails with."""
    for t in trajectories:
        if t and t.get("outcome") == "error":
            step = next((s for s in t.get("steps") or [] if s.get("error")), None)
            where = f"step {step['name']}: {step['error']}" if step else "no step recorded an error"
            return StepFailed(f"request {t.get('request_id', '?')} failed in {where}")
    return None


def trace_steps(trajectory: dict) -> list[tuple]:
    """The trajectory's steps as the tracer's step records: ``(name, span type, start ns, end ns,
    details)``, details holding the step's inputs, outputs and error; a ``decide`` step that called
    an LLM has the call as a child record (``llm``: model, token counts, latency)."""
    from agentops_pipelines.agent.llm.endpoint import llm_step
    from agentops_pipelines.agent.trajectory import SPAN_TYPES

    out = []
    for s in trajectory.get("steps") or []:
        start = int(s.get("started_ns") or 0)
        end = start + int(float(s.get("latency_ms") or 0.0) * 1e6)
        name = s["name"]
        if name == "call_tool":
            name = f"call_tool:{(s.get('inputs') or {}).get('tool', '')}"
        details = {"inputs": s.get("inputs") or {}, "outputs": s.get("outputs") or {}, "error": s.get("error")}
        if isinstance(usage := details["outputs"].get("llm"), dict):
            details["children"] = [llm_step(usage, start, details["inputs"], details["outputs"])]
        out.append((name, SPAN_TYPES.get(s.get("kind", ""), "UNKNOWN"), start, end, details))
    return out


def flagged(trajectory: dict) -> bool:
    """A request worth a trace whatever the sample: a tool call failed or the outcome is an error."""
    if trajectory.get("outcome") in FLAGGED_OUTCOMES:
        return True
    return any(c.get("outcome") in FLAGGED_OUTCOMES for c in trajectory.get("tool_calls") or [])
