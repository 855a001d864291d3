"""The OpenAI-compatible endpoint the settings name (``AGENTOPS_LLM_*``), for assets that call it.

LLM agents carry their endpoint in their model (``agent/llm``); this resource is for the pipeline's
own calls: the optional LLM judge of the trajectory evaluation. The key is not here: it stays in
``AGENTOPS_LLM_API_KEY``, read by name when a call is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from agentops_pipelines.agent.llm.endpoint import Endpoint


class LLMEndpointResource(dg.ConfigurableResource):
    base_url: str = ""  # empty: no endpoint configured
    model: str = ""
    response_format: str = "json_schema"

    def endpoint(self) -> Endpoint | None:
        from agentops_pipelines.agent.llm.endpoint import Endpoint

        if not self.base_url:
            return None
        return Endpoint(self.base_url, self.model or "default", self.response_format)
