"""An LLM endpoint's replies are untrusted: a hostile or broken one (a real HTTP server here) can
make the router hand the request over, never fail it, pick a tool outside the agent's, or choose
the tool's arguments (they come from the customer's text and the request, not from the LLM)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentops_pipelines.agent.actions import Actions, Policy
from agentops_pipelines.agent.llm.endpoint import Endpoint
from agentops_pipelines.agent.llm.router import LLMRouter
from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES
from agentops_pipelines.agent.trajectory import Executor


def chat(content, **extra) -> dict:
    return {"choices": [{"message": {"content": content}}], **extra}


HOSTILE = {
    "a JSON list": chat(json.dumps(["request_refund"])),
    "a JSON string": chat(json.dumps("request_refund")),
    "token counts that are words": chat(json.dumps({"tool": "request_refund"}), usage={"prompt_tokens": "lots"}),
    "absurd token counts": chat(json.dumps({"tool": "request_refund"}), usage={"completion_tokens": 1e308}),
    "a tool outside the agent's": chat(json.dumps({"tool": "drop_tables"})),
    "not a chat completion": [1, 2],
}


@pytest.fixture
def hostile():
    """A real OpenAI-compatible URL whose next reply the test chooses."""
    reply: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(reply["next"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield reply, Endpoint(f"http://127.0.0.1:{server.server_port}/v1", "hostile")
    server.shutdown()


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_a_hostile_reply_hands_the_request_over(hostile, sor, what):
    reply, endpoint = hostile
    reply["next"] = HOSTILE[what]
    router = LLMRouter(endpoint, TOOL_NAMES, "Pick the tool.", "prompts:/x/1", ESCALATE)
    tool, confidence, usage = router.decide(f"refund order #100001, {what}")
    assert (tool, confidence) == (ESCALATE, 0.0) and usage["error"], usage
    assert router.failures == 1
    t = Executor(Actions(sor), router.decide).run(f"hostile-{len(what)}", "I want a refund", "C00001")
    assert t.outcome == "handed_over" and t.tools_called == [ESCALATE], t.to_dict()


def test_arguments_in_a_reply_are_never_used(hostile, sor):
    """The reply may name a tool; the amount and the customer come from the request."""
    reply, endpoint = hostile
    reply["next"] = chat(json.dumps({"tool": "request_refund", "customer_id": "C00002", "amount": 99999,
                                     "arguments": {"customer_id": "C00002", "amount": 99999}}))
    router = LLMRouter(endpoint, TOOL_NAMES, "Pick the tool.", "prompts:/x/1", ESCALATE)
    t = Executor(Actions(sor, Policy(refund_limit=100)), router.decide).run(
        "hostile-args", "please refund $20 on my last order", "C00001")
    call = t.tool_calls[0]
    assert call["tool"] == "request_refund" and call["arguments"]["customer_id"] == "C00001"
    assert call["arguments"].get("amount") == 20.0
