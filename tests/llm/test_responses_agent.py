"""An agent written as an MLflow ResponsesAgent (models from code) on the local SmolLM2: its tool
calls, its versioned source, the key kept out of it, and the pipeline evaluating, registering and
serving it like the trained router."""

import pickle
import uuid

import mlflow
import pytest

from agentops_pipelines.agent.llm.responses import (
    EXAMPLE,
    ResponsesAgentAdapter,
    ResponsesAgentRouter,
)
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES
from agentops_pipelines.vocabulary import EnvVar
from tests.llm.conftest import needs_llm
from tests.llm.serving import environ, invoke, latest, register, serving_deployer, trace_of

BROKEN = """
import mlflow
from mlflow.pyfunc import ResponsesAgent


class Broken(ResponsesAgent):
    def predict(self, request):
        raise RuntimeError("the author's code failed")


mlflow.models.set_model(Broken())
"""


def test_the_example_is_a_responses_agent_read_from_its_source(tmp_path):
    from agentops_pipelines.agent.llm.endpoint import Endpoint

    adapter = ResponsesAgentAdapter(Endpoint("http://127.0.0.1:9/v1", "m"))
    router = adapter.train(None, {})
    assert router.code == EXAMPLE.read_text() and router.classes == list(TOOL_NAMES)
    assert router.model_config["api_key_env"] == EnvVar.LLM_API_KEY and adapter.llm_endpoint.base_url.endswith(":9/v1")
    agent = router.agent()
    assert isinstance(agent, mlflow.pyfunc.ResponsesAgent)
    assert agent.endpoint.base_url == "http://127.0.0.1:9/v1"  # from ModelConfig, not the file's default
    # An unreachable endpoint, or code that raises: the hand-over, counted, never a crash.
    assert router.decide("where is my order?")[:2] == (ESCALATE, 0.0) and router.failures == 1
    broken = ResponsesAgentRouter(BROKEN, "broken.py", {}, {t: "" for t in TOOL_NAMES}, ESCALATE)
    tool, confidence, usage = broken.decide("hello")
    assert (tool, confidence) == (ESCALATE, 0.0) and "author's code failed" in usage["error"]


@needs_llm
def test_the_responses_agent_calls_tools_on_the_local_llm(endpoint, llm_key):
    router = ResponsesAgentAdapter(endpoint).train(None, {})
    for text in ("where is my order #100234?", "I forgot my password", "refund order #100871 please"):
        tool, confidence, usage = router.decide(text)
        assert tool in TOOL_NAMES and confidence == 1.0, usage
        assert usage["prompt_tokens"] > 20 and usage["completion_tokens"] > 0 and usage["model"]
    assert router.failures == 0
    blob = pickle.dumps(router)  # what the logged model holds: the source, the key's name only
    assert llm_key.encode() not in blob and b"set_model" in blob
    again = pickle.loads(blob)
    assert again.decide("I forgot my password")[0] in TOOL_NAMES


@needs_llm
@pytest.mark.slow
def test_the_pipeline_evaluates_registers_and_serves_a_responses_agent(llm_env, llm_key, instance):
    from agentops_pipelines.agent.llm.agent import configured_endpoint
    from agentops_pipelines.definitions import build_definitions

    agent = ResponsesAgentAdapter(configured_endpoint(llm_env))
    defs = build_definitions(llm_env, [agent])
    version = register(defs, instance, agent.name, rows=60)
    trajectory = latest(instance, agent.name, "trajectory_evaluation")  # the same golden trajectories
    assert trajectory["applicable"] is True and trajectory["cases"] == 8 and "tool_choice" in trajectory["per_scorer"]

    deployer = serving_deployer(llm_env, [agent])
    try:
        served = deployer.deploy("dev", f"models:/{agent.name}/{version}", version)
        assert environ(served.pid)[EnvVar.LLM_API_KEY] == llm_key
        rid = f"responses-{uuid.uuid4().hex[:8]}"
        answer, _ = invoke(served.url, "where is my order #100234?", "C00003", rid)
        assert answer["tool"] in TOOL_NAMES and answer["outcome"]
        trace = trace_of(mlflow.MlflowClient().get_experiment_by_name(agent.name).experiment_id, rid)
        llm = next(s for s in trace.data.spans if s.name == "llm")
        assert llm.attributes["llm.prompt_tokens"] > 20
        # ResponsesAgent wraps predict in a trace of its own: not exported per served request.
        assert mlflow.search_traces(locations=["0"], return_type="list") == []
    finally:
        deployer.stop("dev", agent=agent.name)
