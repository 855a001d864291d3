"""The support desk behind an LLM: same tools, same lifecycle, no training.

``train`` versions the system prompt in MLflow's prompt registry (a new version only when the
text changed) and returns an :class:`~agentops_pipelines.agent.llm.router.LLMRouter` on the
configured endpoint. The lifecycle then logs it as a pyfunc model like any router, evaluates it on
the held-out requests and on the golden trajectories, and compares it with the trained router's
champion (``baseline_agent``): a small local model is expected to lose, and the gates say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agentops_pipelines.agent.interface import Agent
from agentops_pipelines.agent.llm.endpoint import Endpoint
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES, TOOLS

if TYPE_CHECKING:
    import pandas as pd

    from agentops_pipelines.agent.llm.router import LLMRouter
    from agentops_pipelines.resources.settings import Settings

SYSTEM_PROMPT = (
    "You are the routing step of a customer-support agent. Read the customer's message and choose "
    "the one tool that serves it. Tools:\n{{tools}}\n"
    "Answer with JSON: {\"tool\": \"<tool name>\"}."
)


class SupportDeskLLMAgent(Agent):
    name = "support_llm_agent"
    feature_columns = ()  # the LLM reads the text alone
    tools = TOOL_NAMES
    tool_descriptions = {t.name: t.description for t in TOOLS}
    escalation_tool = ESCALATE
    #: Compared with this registered model's champion while it has none of its own.
    baseline_agent = "support_agent"
    system_prompt_template = SYSTEM_PROMPT

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    @property
    def llm_endpoint(self) -> Endpoint:
        """The endpoint this agent declares: its serving processes get the endpoint's key."""
        return self.endpoint

    def system_prompt(self) -> str:
        listing = "\n".join(f"- {t.name}: {t.description}" for t in TOOLS)
        return self.system_prompt_template.replace("{{tools}}", listing)

    def ensure_system_prompt(self) -> tuple[str, str]:
        """(uri, text) of the system prompt in MLflow's prompt registry: a new version only if the
        text changed. The tracking URI is the caller's (the training asset configures it)."""
        import mlflow

        name = f"{self.name}_system"
        text = self.system_prompt()
        latest = mlflow.genai.load_prompt(f"prompts:/{name}@latest", allow_missing=True, link_to_model=False,
                                          cache_ttl_seconds=0)
        if latest is not None and latest.template == text:
            return latest.uri, text
        prompt = mlflow.genai.register_prompt(
            name=name, template=text, tags={"agent": self.name, "model": self.endpoint.model},
            commit_message="system prompt changed in code" if latest is not None else "first version")
        return prompt.uri, text

    def train(self, training_set: pd.DataFrame, params: Mapping[str, object]) -> LLMRouter:
        """No training: version the prompt, return the router that calls the endpoint."""
        from agentops_pipelines.agent.llm.router import LLMRouter

        uri, text = self.ensure_system_prompt()
        return LLMRouter(self.endpoint, self.tools, text, uri, fallback_tool=ESCALATE)


def configured_endpoint(settings: Settings) -> Endpoint | None:
    """The endpoint settings name (``AGENTOPS_LLM_*``), or None."""
    if not settings.llm_base_url:
        return None
    return Endpoint(settings.llm_base_url, settings.llm_model or "default", settings.llm_response_format)


def configured_llm_agents(settings: Settings) -> list[Agent]:
    """When settings name an endpoint (``AGENTOPS_LLM_BASE_URL``): the support desk behind the
    LLM, and the same desk written as an MLflow ResponsesAgent (``support_responses_agent.py``);
    else none."""
    from agentops_pipelines.agent.llm.responses import ResponsesAgentAdapter

    endpoint = configured_endpoint(settings)
    return [] if endpoint is None else [SupportDeskLLMAgent(endpoint), ResponsesAgentAdapter(endpoint)]
