"""LLM agents on a real local model: valid tool calls, the key kept secret, the whole lifecycle.

SmolLM2-135M picks the right tool rarely; the point is an honest evaluation, and the gates
refusing it against the trained router is the correct outcome.
"""

import pickle
import re

import dagster as dg
import mlflow
import pytest

from agentops_pipelines.agent.llm.endpoint import EndpointError
from agentops_pipelines.agent.llm.router import LLMRouter
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES
from agentops_pipelines.vocabulary import EnvVar
from tests.helpers import promoted
from tests.llm.conftest import MODEL_ALIAS, needs_llm

pytestmark = needs_llm
LLM = "support_llm_agent"
TEXTS = ["where is my order #100234?", "I forgot my password", "refund order #100871 please",
         "cancel my membership", "the app keeps crashing"]


def router(endpoint) -> LLMRouter:
    return LLMRouter(endpoint, TOOL_NAMES, "Pick the tool for the customer's message.", "prompts:/x/1", ESCALATE)


def test_every_answer_is_a_valid_tool_call_with_tokens_and_latency(endpoint):
    r = router(endpoint)
    for text in TEXTS:
        tool, confidence, usage = r.decide(text)
        assert tool in TOOL_NAMES and confidence == 1.0, usage
        assert usage["prompt_tokens"] > 20 and usage["completion_tokens"] > 0 and usage["latency_ms"] > 0
    assert r.failures == 0 and r.calls == len(TEXTS)
    assert r.decide(TEXTS[0])[2]["cached"] is True and r.calls == len(TEXTS)  # temperature 0: memoised


def test_the_key_is_read_by_name_and_never_pickled_shown_or_echoed(endpoint, llm_key, monkeypatch):
    r = router(endpoint)
    r.decide(TEXTS[1])
    blob = pickle.dumps(r)
    assert llm_key.encode() not in blob and EnvVar.LLM_API_KEY.encode() in blob
    assert llm_key not in repr(endpoint)
    monkeypatch.setenv(EnvVar.LLM_API_KEY, "sk-wrong")
    with pytest.raises(EndpointError, match="answered 401") as err:
        endpoint.complete([{"role": "user", "content": "hi"}], {"type": "object"})
    assert "sk-wrong" not in str(err.value) and llm_key not in str(err.value)
    # A failing endpoint hands the request over (confidence 0) instead of failing the request.
    tool, confidence, usage = router(endpoint).decide("something new")
    assert (tool, confidence) == (ESCALATE, 0.0) and "401" in usage["error"]


def run(defs, instance, agent: str, stage: str, **kwargs) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(f"{agent}_{stage}_job").execute_in_process(instance=instance, raise_on_error=False, **kwargs)


def latest(instance, agent: str, name: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey([agent, name]))
    assert event is not None, f"{agent}/{name} was never materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_the_llm_agent_goes_through_the_lifecycle_and_the_gates_refuse_it(
        home, instance, llm_server, llm_key, monkeypatch, tmp_path):
    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings

    monkeypatch.setenv(EnvVar.LLM_BASE_URL, llm_server.base_url)
    monkeypatch.setenv(EnvVar.LLM_MODEL, MODEL_ALIAS)
    monkeypatch.setenv(EnvVar.LLM_RESPONSE_FORMAT, "json_object")
    monkeypatch.setenv(EnvVar.LLM_API_KEY, llm_key)
    defs = build_definitions(load_settings())
    day = "2026-11-01"

    # The trained router, registered and made champion: what the LLM agent is measured against.
    assert run(defs, instance, "support_agent", "ingest", partition_key=day,
               run_config={"ops": {"support_agent__dataset": {"config": {"rows_per_day": 300}}}}).success
    quick = {"evaluation_report": {"config": {"evidently_report": False, "latency_samples": 5}},
             "training_set": {"config": {"days": 1, "end_date": day}}}
    baseline = {**quick, "trained_agent": {"config": {"trace_samples": 0}},
                "trajectory_evaluation": {"config": {"cases": 19, "min_answer_check": 0.0, "min_tool_choice": 0.0,
                                                     "min_argument_correctness": 0.0, "min_steps_taken": 0.0,
                                                     "min_outcome_match": 0.0}}}
    assert run(defs, instance, "support_agent", "training",
               run_config={"ops": {f"support_agent__{k}": v for k, v in baseline.items()}}).success
    client = mlflow.MlflowClient(f"sqlite:///{home}/mlflow/mlflow.db")
    champion = latest(instance, "support_agent", "registered_version")["version"]
    promoted(defs.resources["audit"].store, champion, "support_agent")  # the champion: what serves in prod

    # The LLM agent: its own (small) day of requests, then "training", evaluation and the gates.
    assert run(defs, instance, LLM, "ingest", partition_key=day,
               run_config={"ops": {f"{LLM}__dataset": {"config": {"rows_per_day": 60}}}}).success
    config = {**quick, "trained_agent": {"config": {"trace_samples": 2}},
              "trajectory_evaluation": {"config": {"cases": 19}}}
    result = run(defs, instance, LLM, "training", run_config={"ops": {f"{LLM}__{k}": v for k, v in config.items()}})
    assert not result.success  # refused: nothing registered
    assert instance.get_latest_materialization_event(dg.AssetKey([LLM, "registered_version"])) is None

    trained = latest(instance, LLM, "trained_agent")
    assert trained["prompt"].startswith(f"prompts:/{LLM}_answer/")
    system = mlflow.genai.load_prompt(f"prompts:/{LLM}_system/1")
    assert "request_refund" in system.template and system.tags["model"] == MODEL_ALIAS

    trajectory = latest(instance, LLM, "trajectory_evaluation")
    assert trajectory["cases"] == 19 and trajectory["champion_version"] == f"support_agent v{champion}"
    assert trajectory["gate_passed"] is False and trajectory["gate_reasons"]
    assert re.search(r"\| tool_choice +\|", trajectory["per_scorer"]) and re.search(r"\| decide +\|", trajectory["per_step"])
    report = latest(instance, LLM, "evaluation_report")
    assert report["gate_passed"] is False and 0.0 <= report["accuracy"] < 0.8

    run_id = trajectory["candidate_run_id"]
    assert client.get_run(run_id).data.tags["agentops.trajectory_gate"] == "failed"
    html = client.download_artifacts(run_id, "evaluation/trajectory/report.html", str(tmp_path))
    assert "Trajectory gate: <b>failed</b>" in open(html).read()

    # Token counts and latency on the LLM step of the traced validation requests.
    traces = mlflow.search_traces(locations=[client.get_run(run_id).info.experiment_id], run_id=run_id,
                                  return_type="list")
    llm_spans = [s for t in traces for s in t.data.spans if s.name == "llm"]
    assert llm_spans, "the LLM call is a span of the traced request"
    attrs = llm_spans[0].attributes
    assert attrs["llm.prompt_tokens"] > 0 and attrs["llm.latency_ms"] > 0 and attrs["llm.model"]

    # The key never reached MLflow: not in params, tags or the logged model.
    logged = client.get_run(run_id)
    assert llm_key not in str(logged.data.params) + str(logged.data.tags)
    model_dir = client.download_artifacts(run_id, "agent", str(tmp_path / "model"))
    assert not any(llm_key.encode() in p.read_bytes() for p in __import__("pathlib").Path(model_dir).rglob("*") if p.is_file())
