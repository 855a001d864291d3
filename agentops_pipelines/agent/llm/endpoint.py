"""An OpenAI-compatible chat-completions client: constrained JSON out, usage and latency recorded.

Plain ``urllib`` (no SDK): one POST to ``{base_url}/chat/completions``. Two spellings of
"answer with JSON matching this schema" exist in the wild, chosen by ``response_format``:

- ``json_schema``: OpenAI, vLLM, llama.cpp's ``llama-server``, most hosted endpoints
  (``{"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}``);
- ``json_object``: llama-cpp-python's server (``{"type": "json_object", "schema": ...}``).

The key is read from ``AGENTOPS_LLM_API_KEY`` by name when a call is made, in whichever process
makes it: an :class:`Endpoint` (pickled inside a logged model) holds the variable's name, never
its value, and its ``repr`` and errors never show the key.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from agentops_pipelines.vocabulary import EnvVar

RESPONSE_FORMATS = ("json_schema", "json_object")
#: What a key variable may be called: an agent's serving processes get it besides the allowlist,
#: so it must look like a key (AGENTOPS_LLM_API_KEY, OPENAI_API_KEY), never a database password.
KEY_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*_(KEY|TOKEN)")


#: Why an LLM call failed: the ``reason`` label of ``agentops_llm_call_failures_total`` in the
#: serving process. A closed set, so the label never carries the URL, the answer or the key.
FAILURE_REASONS = (
    "timeout",  # no answer within the endpoint's timeout
    "unreachable",  # connection refused, DNS, TLS: nothing answered
    "auth",  # 401/403: a wrong or missing key
    "rate_limited",  # 429
    "server_error",  # 5xx
    "client_error",  # another 4xx: e.g. a model name the endpoint does not serve
    "bad_response",  # an answer that is not the asked-for JSON
    "off_schema",  # JSON naming no tool the agent has
    "agent_error",  # an agent's own code (a ResponsesAgent) raised something else
)


class EndpointError(RuntimeError):
    """The endpoint failed or answered something that is not the asked-for JSON; ``reason`` is
    one of :data:`FAILURE_REASONS`."""

    def __init__(self, message: str, reason: str = "bad_response"):
        super().__init__(message)
        self.reason = reason


def http_reason(status: int) -> str:
    """The :data:`FAILURE_REASONS` class of an HTTP error status."""
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "rate_limited"
    return "server_error" if status >= 500 else "client_error"


def failure_reason(exc: BaseException) -> str:
    """The :data:`FAILURE_REASONS` class of what an LLM call raised, whichever client made it
    (ours, or e.g. the ``openai`` package inside a ResponsesAgent: its errors carry a
    ``status_code`` or are named ``APITimeoutError``/``APIConnectionError``)."""
    if isinstance(exc, EndpointError):
        return exc.reason
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 400:
        return http_reason(status)
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) or "Timeout" in name:
        return "timeout"
    if isinstance(exc, ConnectionError) or "Connection" in name:
        return "unreachable"
    return "agent_error"


@dataclass(frozen=True)
class Completion:
    content: dict  # the parsed JSON answer
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "latency_ms": round(self.latency_ms, 2), "model": self.model}


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. http://127.0.0.1:8081/v1 or https://api.openai.com/v1
    model: str
    response_format: str = "json_schema"
    api_key_env: str = EnvVar.LLM_API_KEY.value  # the variable's *name* (a plain str: YAML-safe)
    timeout_s: float = 120.0  # a local CPU model under load can take tens of seconds on a first call
    max_tokens: int = 48
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"{EnvVar.LLM_BASE_URL}: an http(s) URL is needed, not {self.base_url!r}")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"{EnvVar.LLM_RESPONSE_FORMAT}: one of {RESPONSE_FORMATS}, not {self.response_format!r}")
        if not KEY_VARIABLE.fullmatch(self.api_key_env):  # the deployer passes it to serving processes
            raise ValueError(f"api_key_env names the variable holding the endpoint's key (e.g. "
                             f"{EnvVar.LLM_API_KEY}, ending in _KEY or _TOKEN), not {self.api_key_env!r}")

    def _format(self, name: str, schema: dict) -> dict:
        if self.response_format == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}

    def complete(self, messages: list[dict], schema: dict, name: str = "answer") -> Completion:
        """One constrained completion; :class:`EndpointError` (naming the URL, never the key) if
        the call fails or the answer is not JSON."""
        import urllib.error  # here, not at module level: the code location loads without http/ssl
        import urllib.request

        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "response_format": self._format(name, schema)}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise EndpointError(f"{self.base_url}/chat/completions answered {exc.code}: {detail}",
                                http_reason(exc.code)) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            timed_out = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
            raise EndpointError(f"{self.base_url}/chat/completions {'timed out' if timed_out else 'unreachable'}: "
                                f"{exc}", "timeout" if timed_out else "unreachable") from None
        latency = (time.perf_counter() - started) * 1000
        # Whatever the endpoint answers is untrusted: anything but a JSON object with sane token
        # counts is the endpoint failing (the router hands over, counted as bad_response), never
        # an exception that fails the request (a 5xx the rollback loop would act on).
        payload: object = raw[:200]
        try:
            payload = json.loads(raw)
            content = json.loads(payload["choices"][0]["message"]["content"])
            if not isinstance(content, dict):
                raise TypeError(f"a JSON {type(content).__name__}, not an object")
            usage = payload.get("usage") or {}
            tokens = [_token_count(usage.get(k)) for k in ("prompt_tokens", "completion_tokens")]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:  # ValueError: JSON, UTF-8
            raise EndpointError(f"{self.base_url}: not the JSON asked for ({type(exc).__name__}): "
                                f"{str(payload)[:200]}", "bad_response") from None
        return Completion(content, *tokens, latency, str(payload.get("model") or self.model)[:200])


def _token_count(value: object) -> int:
    """A usage count as the endpoint reported it: absent (0) or a whole number in [0, 10**9)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
        raise ValueError(f"token count {str(value)[:40]!r}")
    return value


def declared_endpoint(agent: object) -> Endpoint | None:
    """The LLM endpoint ``agent`` declares (its ``llm_endpoint``), or None for any other agent."""
    endpoint = getattr(agent, "llm_endpoint", None)
    return endpoint if isinstance(endpoint, Endpoint) else None


def serving_secrets(agents: Iterable[object]) -> dict[str, list[str]]:
    """Agent name -> the key variable its serving processes need, for the agents that declare an
    LLM endpoint only (the deployer passes it to them and to no other agent's processes)."""
    return {agent.name: [endpoint.api_key_env] for agent in agents
            if (endpoint := declared_endpoint(agent)) is not None}


def endpoint_port(endpoint: Endpoint) -> int:
    """The TCP port a process must reach ``endpoint`` on (for the sandbox's and the serving
    process's confinement: Landlock allows ports, not hosts)."""
    from urllib.parse import urlparse

    url = urlparse(endpoint.base_url)
    return url.port or (443 if url.scheme == "https" else 80)


def serving_connect_ports(agents: Iterable[object]) -> dict[str, list[int]]:
    """Agent name -> the port of the LLM endpoint it declares: its confined serving processes may
    connect there (serving/confine.py); other agents' may not."""
    return {agent.name: [endpoint_port(endpoint)] for agent in agents
            if (endpoint := declared_endpoint(agent)) is not None}


def active_span():
    """The MLflow span active in this thread, if mlflow is in use here (no import cost otherwise)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    return mlflow.get_current_active_span() if mlflow is not None else None


def traced_complete(endpoint: Endpoint, messages: list[dict], schema: dict, name: str = "tool_call") -> Completion:
    """:meth:`Endpoint.complete`, as a CHAT_MODEL span (messages in, answer out, token counts and
    latency as attributes) when an MLflow trace is active in this thread; a plain call otherwise."""
    if active_span() is None:
        return endpoint.complete(messages, schema, name)
    import mlflow

    with mlflow.start_span(name="llm", span_type="CHAT_MODEL") as span:
        span.set_inputs({"messages": messages, "model": endpoint.model})
        try:
            result = endpoint.complete(messages, schema, name)
        except EndpointError as exc:
            span.set_attribute("error", str(exc))
            raise
        span.set_outputs(result.content)
        span.set_attributes(usage_attributes(result.usage()))
        return result


def usage_attributes(usage: dict) -> dict:
    """An LLM call's usage (tokens, latency, model, ``cached``) as span attributes ``llm.*``."""
    return {f"llm.{k}": v for k, v in usage.items() if isinstance(v, str | int | float | bool)}


def llm_step(usage: dict, started_ns: int, inputs: dict, outputs: dict) -> tuple:
    """The LLM call inside a ``decide`` step, as a tracer step record (``serving/tracing.py``):
    ``("llm", "CHAT_MODEL", start, end, details)``; a memoised decision (``cached``) shows the
    tokens of the call it reuses, with ``llm.cached`` true."""
    latency_ms = 0.0 if usage.get("cached") else float(usage.get("latency_ms") or 0.0)
    return ("llm", "CHAT_MODEL", started_ns, started_ns + int(latency_ms * 1e6),
            {"inputs": {"model": usage.get("model"), "text": inputs.get("text")},
             "outputs": {"tool": outputs.get("tool")}, "error": usage.get("error"),
             "attributes": usage_attributes(usage)})
