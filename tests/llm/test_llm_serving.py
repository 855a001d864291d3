"""LLM agents served like any other: registered, deployed to dev, answering HTTP through the local
LLM, canaried and traced (the ``llm`` span with its tokens); the LLM key reaches the serving
processes of agents that declare an LLM endpoint and no other."""

import os
import threading
import time
import urllib.request
import uuid

import mlflow
import pytest

from agentops_pipelines.agent.llm.endpoint import Endpoint, serving_secrets
from agentops_pipelines.agent.tools import TOOL_NAMES
from agentops_pipelines.resources.deployers import (
    LocalProcessDeployer,
    agent_secrets,
    serving_environment,
)
from agentops_pipelines.vocabulary import EnvVar
from tests.llm.conftest import needs_llm
from tests.llm.serving import environ, invoke, latest, register, serving_deployer, trace_of

KEY = EnvVar.LLM_API_KEY.value
LLM_AGENTS = ("support_llm_agent", "support_responses_agent")
MODEL_CODE = """
import mlflow
import pandas as pd


class Model(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"tool": ["track_order"] * len(model_input)})


mlflow.models.set_model(Model())
"""


@pytest.fixture
def llm_settings(home, monkeypatch):
    """Settings naming an endpoint (nothing needs to answer there) and a key in the environment."""
    from agentops_pipelines.resources.settings import load_settings

    monkeypatch.setenv(EnvVar.LLM_BASE_URL, "http://127.0.0.1:9/v1")
    monkeypatch.setenv(EnvVar.LLM_MODEL, "m")
    monkeypatch.setenv(KEY, "sk-only-for-llm-agents")
    return load_settings()


def test_the_deployer_passes_the_key_to_llm_agents_only(llm_settings, monkeypatch):
    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings

    deployer = build_definitions(llm_settings).resources["deployer"]
    assert deployer.agent_secret_env == {agent: [KEY] for agent in LLM_AGENTS}
    assert "support_agent" not in deployer.agent_secret_env
    # the allowlist alone never passes it; the agent's own secrets do, when set
    assert KEY not in serving_environment(os.environ)
    assert agent_secrets(os.environ, [KEY]) == {KEY: "sk-only-for-llm-agents"}
    assert agent_secrets({}, [KEY]) == {}
    monkeypatch.delenv(EnvVar.LLM_BASE_URL)
    assert build_definitions(load_settings()).resources["deployer"].agent_secret_env == {}


def test_on_kubernetes_only_the_llm_agents_pods_read_the_key_from_a_secret(llm_settings, monkeypatch):
    from dataclasses import replace

    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.k8s.render import render_manifests

    monkeypatch.setenv("AGENTOPS_DEPLOYER", "kubernetes")
    from agentops_pipelines.resources.settings import load_settings

    deployer = build_definitions(load_settings()).resources["deployer"]
    spec = deployer.spec_for("dev")
    assert set(spec.agent_secret_env) == {(agent, KEY) for agent in LLM_AGENTS}

    def env_of(agent: str) -> dict:
        manifests = render_manifests(agent, "dev", "1", f"models:/{agent}/1", spec=replace(spec, admin_token_secret="t"))
        deployment = next(m for m in manifests if m["kind"] == "Deployment")
        return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}

    ref = env_of("support_llm_agent")[KEY]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "agentops-support-llm-agent-secrets", "key": KEY, "optional": False}
    assert KEY not in env_of("support_agent")  # another agent's pods never reference it
    assert "sk-only-for-llm-agents" not in str(env_of("support_llm_agent"))  # a reference, not the value


def test_agents_declare_an_endpoint_or_not():
    from agentops_pipelines.agent.llm.agent import SupportDeskLLMAgent
    from agentops_pipelines.agent.support_desk import SupportDeskAgent

    endpoint = Endpoint("https://llm.example.com/v1", "m", api_key_env="AGENTOPS_LLM_API_KEY")
    assert serving_secrets([SupportDeskAgent(), SupportDeskLLMAgent(endpoint)]) == {"support_llm_agent": [KEY]}


@pytest.fixture
def plain_and_llm_models(home, tmp_path, monkeypatch):
    """Two tiny registered models: ``plain_agent`` and ``llm_agent`` (an agent's name decides)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    code = tmp_path / "model.py"
    code.write_text(MODEL_CODE)
    experiment = mlflow.create_experiment("env", artifact_location=str(tmp_path / "artifacts"))
    for name in ("plain_agent", "llm_agent"):
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=["pandas"],
                                    registered_model_name=name)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri("")


@pytest.mark.slow
def test_only_the_llm_agents_serving_process_receives_the_key(plain_and_llm_models, tmp_path, monkeypatch):
    key = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv(KEY, key)
    deployer = LocalProcessDeployer(state_dir=str(tmp_path / "serving"), trace_sample_rate=0.0,
                                    health_timeout_s=90, agent_secret_env={"llm_agent": [KEY]})
    try:
        plain = deployer.deploy("dev", "models:/plain_agent/1", "1")
        llm = deployer.deploy("dev", "models:/llm_agent/1", "1")
        assert KEY not in environ(plain.pid) and environ(llm.pid)[KEY] == key
        for agent in ("plain_agent", "llm_agent"):  # nor its supervisor, for the plain agent
            supervisor = deployer.supervision("dev", agent=agent)["supervisor_pid"]
            assert (KEY in environ(supervisor)) == (agent == "llm_agent")
            assert key not in deployer.files("dev", agent).log.read_text()  # never logged
    finally:
        for agent in ("plain_agent", "llm_agent"):
            deployer.stop("dev", agent=agent)


# -- the whole path on the local SmolLM2 -------------------------------------------------------


@needs_llm
@pytest.mark.slow
def test_an_llm_agent_is_served_canaried_and_traced_like_any_other(llm_env, llm_key, instance):
    from agentops_pipelines.agent.llm.agent import SupportDeskLLMAgent, configured_endpoint
    from agentops_pipelines.definitions import build_definitions

    agent = SupportDeskLLMAgent(configured_endpoint(llm_env))
    defs = build_definitions(llm_env, [agent])
    version = register(defs, instance, agent.name, rows=60, llm_judge=True)
    trajectory = latest(instance, agent.name, "trajectory_evaluation")  # the optional judge ran
    assert trajectory["answer_relevance_judge_calls"] == 8 and "answer_relevance" in trajectory["per_scorer"]

    client = mlflow.MlflowClient()
    deployer = serving_deployer(llm_env, [agent])
    try:
        served = deployer.deploy("dev", f"models:/{agent.name}/{version}", version)
        assert environ(served.pid)[KEY] == llm_key  # the LLM agent's process has its key
        ids = {}
        for i, text in enumerate(["where is my order #100234?", "I forgot my password",
                                  "please cancel my subscription"]):
            rid = f"llm-{i}-{uuid.uuid4().hex[:8]}"
            answer, headers = invoke(served.url, text, f"C{i + 1:05d}", rid)
            assert answer["tool"] in TOOL_NAMES and answer["answer"] and headers.get("X-Request-Id") == rid
            ids[rid] = text

        # Each served request's trace: decide -> llm (CHAT_MODEL) with the call's tokens, and the
        # LLM call is most of the request's time (the serving path adds milliseconds).
        experiment = client.get_experiment_by_name(agent.name).experiment_id
        for rid in ids:
            trace = trace_of(experiment, rid)
            spans = {s.name: s for s in trace.data.spans}
            llm = spans["llm"]
            assert llm.parent_id == spans["decide"].span_id and llm.span_type == "CHAT_MODEL"
            assert llm.attributes["llm.prompt_tokens"] > 20 and llm.attributes["llm.completion_tokens"] > 0
            assert llm.attributes["llm.model"] and llm.attributes["llm.latency_ms"] > 0
            served_ms = spans["invocations"].attributes["served_latency_ms"]
            print(f"served {served_ms:.1f} ms, of which the LLM call {llm.attributes['llm.latency_ms']:.1f} ms")
            assert llm.attributes["llm.latency_ms"] > 0.5 * served_ms

        # While a request waits on the LLM, the server answers others at once (not on its loop).
        waiting = threading.Thread(target=invoke, args=(served.url, "my parcel never arrived", "C00009", "busy"))
        waiting.start()
        time.sleep(0.1)
        started = time.perf_counter()
        with urllib.request.urlopen(f"{served.url}/health", timeout=30):
            health_s = time.perf_counter() - started
        in_flight = waiting.is_alive()
        waiting.join()
        assert health_s < 0.25 or not in_flight, f"/health took {health_s:.2f} s behind an LLM call"

        # A canary (version 2: the same model registered again) takes a share, sticky per customer.
        mv = client.get_model_version(agent.name, version)
        canary = client.create_model_version(agent.name, mv.source, run_id=mv.run_id).version
        deployer.deploy_canary("dev", f"models:/{agent.name}/{canary}", canary, 0.5)
        served_by = {invoke(served.url, "the app keeps crashing", f"C{i:05d}", f"canary-{i}")[1].get("X-Model-Version")
                     for i in range(10, 22)}
        assert served_by == {version, str(canary)}
        stats = deployer.stats("dev", agent=agent.name)
        assert stats["stable"]["requests"] > 0 and stats["canary"]["requests"] > 0
        assert stats["stable"]["errors"] == stats["canary"]["errors"] == 0
        promoted = deployer.promote_canary("dev", agent=agent.name)
        assert promoted.version == str(canary) and promoted.pid == served.pid
        assert llm_key not in deployer.files("dev", agent.name).log.read_text()  # never logged
    finally:
        deployer.stop("dev", agent=agent.name)
