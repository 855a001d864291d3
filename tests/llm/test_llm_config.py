"""LLM agents by configuration (no model needed): settings, endpoint validation, the code location."""

import dagster as dg
import pytest

from agentops_pipelines.agent.llm.endpoint import Endpoint
from agentops_pipelines.vocabulary import EnvVar


def test_bad_settings_fail_naming_the_variable(home, monkeypatch):
    from agentops_pipelines.resources.settings import load_settings

    with pytest.raises(ValueError, match=EnvVar.LLM_BASE_URL):
        Endpoint("127.0.0.1:8000/v1", "m")
    with pytest.raises(ValueError, match=EnvVar.LLM_RESPONSE_FORMAT):
        Endpoint("http://127.0.0.1:8000/v1", "m", "yaml")
    # the key's variable is passed to the agent's serving processes: a key, never another secret
    with pytest.raises(ValueError, match="api_key_env"):
        Endpoint("http://127.0.0.1:8000/v1", "m", api_key_env="DAGSTER_PG_PASSWORD")
    assert Endpoint("https://api.openai.com/v1", "m", api_key_env="OPENAI_API_KEY").api_key_env == "OPENAI_API_KEY"
    monkeypatch.setenv(EnvVar.LLM_RESPONSE_FORMAT, "yaml")
    assert any(EnvVar.LLM_RESPONSE_FORMAT in p for p in load_settings().problems)


def test_the_llm_agent_joins_the_code_location_only_when_an_endpoint_is_set(home, monkeypatch):
    from agentops_pipelines.definitions import build_definitions
    from agentops_pipelines.resources.settings import load_settings

    key = dg.AssetKey(["support_llm_agent", "trajectory_evaluation"])
    assert key not in build_definitions(load_settings()).resolve_asset_graph().get_all_asset_keys()
    monkeypatch.setenv(EnvVar.LLM_BASE_URL, "https://llm.example.com/v1/")
    monkeypatch.setenv(EnvVar.LLM_MODEL, "some-model")
    monkeypatch.setenv(EnvVar.LLM_API_KEY, "sk-secret-value")
    settings = load_settings()
    assert settings.llm_base_url == "https://llm.example.com/v1" and "sk-secret-value" not in repr(settings)
    defs = build_definitions(settings)
    assert key in defs.resolve_asset_graph().get_all_asset_keys()
    job = defs.resolve_job_def("support_llm_agent_training_job")
    assert "support_llm_agent__trajectory_evaluation" in {n.name for n in job.nodes_in_topological_order}
