"""An optional LLM judge on the same endpoint as the LLM agents: is the answer relevant (yes/no)?

The code scorers (``agent/scorers.py``) check what can be checked exactly: the tool, its
arguments, the outcome, the facts the answer must state. Whether an answer *addresses the
customer's message* is a judgement; :class:`AnswerRelevanceJudge` asks the configured endpoint
(``AGENTOPS_LLM_*``, the key read by name when a call is made) for a constrained verdict
``{"relevant": "yes" | "no"}``.

It is off by default. The trajectory evaluation runs it when its config says ``llm_judge: true``
and an endpoint is configured (``assets/trajectory.py``), as one more scorer, ``answer_relevance``,
for the candidate and the champion alike. A judge is a model and can fail (the endpoint is down,
the answer is not a verdict): a failed judgement has no value (left out of the mean) and is
counted (``failures`` here, ``errors`` in the per-scorer table), never a crash and never a
"no". :meth:`AnswerRelevanceJudge.mlflow_scorer` is the same judge as an MLflow scorer for
``mlflow.genai.evaluate`` and live traces (a failure is a ``Feedback`` with an error).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from agentops_pipelines.agent.llm.endpoint import Endpoint, EndpointError, traced_complete
from agentops_pipelines.agent.scorers import Score

NAME = "answer_relevance"
INSTRUCTIONS = ("You judge a customer-support agent. Read the customer's message and the agent's "
                "answer. Is the answer relevant to what the customer asked? "
                "Answer with JSON: {\"relevant\": \"yes\"} or {\"relevant\": \"no\"}.")
VERDICT = {"type": "object", "required": ["relevant"], "additionalProperties": False,
           "properties": {"relevant": {"type": "string", "enum": ["yes", "no"]}}}


class AnswerRelevanceJudge:
    """``(outputs, expectations) -> Score | None`` over a trajectory (``Trajectory.to_dict``:
    ``text`` and ``answer``); None when it could not judge (counted in ``failures``)."""

    name = NAME

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.calls = self.failures = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def _failed(self, error: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error

    def __call__(self, outputs: Mapping, expectations: Mapping | None = None) -> Score | None:
        message, answer = str(outputs.get("text") or ""), str(outputs.get("answer") or "")
        messages = [{"role": "system", "content": INSTRUCTIONS},
                    {"role": "user", "content": f"Customer: {message}\nAgent: {answer}"}]
        with self._lock:
            self.calls += 1
        try:
            done = traced_complete(self.endpoint, messages, VERDICT, name="verdict")
        except EndpointError as exc:
            return self._failed(str(exc))
        verdict = done.content.get("relevant")
        if verdict not in ("yes", "no"):  # an endpoint that ignored the schema
            return self._failed(f"answered {str(done.content)[:100]}, not a verdict")
        return Score(verdict == "yes", f"{done.model} judged the answer {'relevant' if verdict == 'yes' else 'not relevant'}")

    def mlflow_scorer(self):
        """The judge as an MLflow scorer: a verdict as ``Feedback(value=bool)``, a failure as
        ``Feedback(error=...)`` (MLflow counts it as an error, not a "no")."""
        from mlflow.entities import Feedback
        from mlflow.genai.scorers import scorer

        def answer_relevance(outputs):
            found = self(outputs or {})
            if found is None:
                return Feedback(error=self.last_error or "the judge failed")
            return Feedback(value=found.value, rationale=found.rationale)

        return scorer(answer_relevance, name=NAME)


def judges_for(endpoint: Endpoint | None) -> dict[str, AnswerRelevanceJudge]:
    """The judges to run on ``endpoint``: none without one."""
    return {} if endpoint is None else {NAME: AnswerRelevanceJudge(endpoint)}
