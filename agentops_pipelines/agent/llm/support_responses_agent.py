"""An example agent written as an MLflow ``ResponsesAgent`` (models from code).

What an agent author writes: a ``ResponsesAgent`` whose ``predict`` calls an OpenAI-compatible
endpoint and answers with a tool call, and a last line handing the agent to MLflow
(``mlflow.models.set_model``). Nothing here knows the pipeline: the endpoint comes from
``mlflow.models.ModelConfig`` (the pipeline passes its ``AGENTOPS_LLM_*`` settings; the key stays
in the variable ``api_key_env`` names, read when a call is made), the tools come in the request
(the Responses API's ``tools``), and the answer is a ``function_call`` output item with ``usage``.

The pipeline loads this file with ``agent/llm/responses.py`` (``ResponsesAgentAdapter``): it is
evaluated on the golden trajectories, registered, served and traced like the trained router.
Any client works (the ``openai`` package, LangChain ...); this one uses the project's small
``Endpoint`` client, which constrains the answer to the tool names with a JSON schema and traces
the call as an ``llm`` span with its token counts.
"""

from __future__ import annotations

import uuid

import mlflow
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse

from agentops_pipelines.agent.llm.endpoint import Endpoint, traced_complete

INSTRUCTIONS = ("You are a customer-support agent. Call the one tool that serves the customer's "
                "message. Tools:\n{tools}\nAnswer with JSON: {{\"tool\": \"<tool name>\"}}.")


class SupportResponsesAgent(ResponsesAgent):
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        tools = [tool.model_dump() for tool in request.tools or []]
        listing = "\n".join(f"- {t['name']}: {t.get('description') or ''}" for t in tools)
        messages = [{"role": "system", "content": INSTRUCTIONS.format(tools=listing)},
                    *self.prep_msgs_for_cc_llm(request.input)]
        schema = {"type": "object", "required": ["tool"], "additionalProperties": False,
                  "properties": {"tool": {"type": "string", "enum": [t["name"] for t in tools]}}}
        done = traced_complete(self.endpoint, messages, schema)
        call = self.create_function_call_item(id=uuid.uuid4().hex, call_id=uuid.uuid4().hex,
                                              name=str(done.content.get("tool")), arguments="{}")
        usage = {"input_tokens": done.prompt_tokens, "output_tokens": done.completion_tokens,
                 "total_tokens": done.prompt_tokens + done.completion_tokens,
                 "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
        return ResponsesAgentResponse(output=[call], usage=usage, model=done.model)


config = mlflow.models.ModelConfig(development_config={
    "base_url": "http://127.0.0.1:8080/v1", "model": "smollm2-135m-instruct",
    "response_format": "json_object", "api_key_env": "AGENTOPS_LLM_API_KEY"})
mlflow.models.set_model(SupportResponsesAgent(Endpoint(
    base_url=config.get("base_url"), model=config.get("model"),
    response_format=config.get("response_format"), api_key_env=config.get("api_key_env"))))
