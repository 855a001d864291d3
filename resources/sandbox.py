"""Where a candidate's model code runs: a thin Dagster shell over :mod:`agentops_pipelines.sandbox`."""

from __future__ import annotations

import dagster as dg

from agentops_pipelines.sandbox import Policy


class ModelSandbox(dg.ConfigurableResource):
    """``require_landlock``: refuse to run model code where the kernel has no Landlock (ABI 4+:
    files and TCP), rather than run it with a scrubbed environment only (on in production).
    ``read``: extra read-only paths a model needs (the MiniLM weights' folder when it is not in
    the virtual environment). ``hidden``: paths model code must never read (the state folder, the
    audit key and anchor): evaluation refuses to run if one lies under a readable folder."""

    require_landlock: bool = False
    read: list[str] = []
    hidden: list[str] = []
    timeout_s: float = 1800.0

    def policy(self, agent: object) -> Policy:
        """The policy for ``agent``'s models: an LLM agent's may reach its declared endpoint's
        port and read its key's variable; no other agent's model gets a port or a secret."""
        from agentops_pipelines.agent.llm.endpoint import declared_endpoint, endpoint_port
        from agentops_pipelines.vocabulary import EnvVar

        ports, names = (), [EnvVar.MINILM_DIR.value]
        endpoint = declared_endpoint(agent)
        if endpoint is not None:
            ports = (endpoint_port(endpoint),)
            names.append(endpoint.api_key_env)
        return Policy(require_landlock=self.require_landlock, connect_ports=ports, pass_env=tuple(names),
                      read=tuple(self.read), hidden=tuple(self.hidden), timeout_s=self.timeout_s)
