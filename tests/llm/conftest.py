"""A real small LLM (SmolLM2-135M-Instruct) behind llama-cpp-python's OpenAI-compatible server.

Skips, saying why, where ``make install-llm`` has not installed the runtime and the model.
"""

import secrets

import pytest

from agentops_pipelines.agent.llm.local import MODEL_ALIAS, LocalServer, unavailable

REASON = unavailable()
needs_llm = pytest.mark.skipif(REASON is not None, reason=f"no local LLM: {REASON}")


@pytest.fixture(scope="session")
def llm_key():
    return "sk-test-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def llm_server(llm_key, tmp_path_factory):
    if REASON is not None:
        pytest.skip(f"no local LLM: {REASON}")
    log = tmp_path_factory.mktemp("llm") / "server.log"
    with LocalServer(api_key=llm_key, log_file=log) as server:
        yield server


@pytest.fixture
def endpoint(llm_server, llm_key, monkeypatch):
    from agentops_pipelines.agent.llm.endpoint import Endpoint
    from agentops_pipelines.vocabulary import EnvVar

    monkeypatch.setenv(EnvVar.LLM_API_KEY, llm_key)
    return Endpoint(llm_server.base_url, MODEL_ALIAS, "json_object")


@pytest.fixture
def llm_env(home, llm_server, llm_key, monkeypatch):
    """Settings naming the local server (``AGENTOPS_LLM_*``), the key in the environment."""
    from agentops_pipelines.resources.settings import load_settings
    from agentops_pipelines.vocabulary import EnvVar

    monkeypatch.setenv(EnvVar.LLM_BASE_URL, llm_server.base_url)
    monkeypatch.setenv(EnvVar.LLM_MODEL, MODEL_ALIAS)
    monkeypatch.setenv(EnvVar.LLM_RESPONSE_FORMAT, "json_object")
    monkeypatch.setenv(EnvVar.LLM_API_KEY, llm_key)
    return load_settings()
