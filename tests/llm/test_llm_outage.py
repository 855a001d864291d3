"""An LLM agent's endpoint outage on a real serving process: each request still answers 200 with a
hand-over, and ``/metrics`` counts the failed calls by reason (never the URL or the key); a
hanging endpoint holds its own threads, not the admin's. The endpoint is a tiny local HTTP server
that answers 500, hangs, or is closed (no local LLM needed)."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from agentops_pipelines.agent.llm.endpoint import (
    FAILURE_REASONS,
    Endpoint,
    EndpointError,
    failure_reason,
)
from agentops_pipelines.vocabulary import EnvVar
from tests.helpers import AGENT, register_versions
from tests.serving.support import AUTH, JSON, Server, request, scrape

KEY = "sk-outage-" + "9" * 24


class FakeEndpoint:
    """``/v1/chat/completions`` answering as ``mode`` says: ``"500"``, ``"hang"`` (``hang_s``
    seconds, then 500) or ``"ok"`` (a valid tool call); ``close()`` leaves the port closed."""

    def __init__(self, mode: str = "500", hang_s: float = 4.0):
        self.mode, self.hang_s, self.requests = mode, hang_s, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                if outer.mode == "hang":
                    time.sleep(outer.hang_s)
                if outer.mode == "ok":
                    body = json.dumps({"choices": [{"message": {"content": json.dumps({"tool": "track_order"})}}],
                                       "usage": {"prompt_tokens": 5, "completion_tokens": 2}, "model": "m"})
                    status = 200
                else:
                    status, body = 500, json.dumps({"error": "the model server crashed"})
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(body.encode())
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # the serving process is confined: it may connect to the ports it is given, as deployed
        self.flags = ("--connect-port", str(self.server.server_address[1]))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def llm_router(endpoint: Endpoint):
    from agentops_pipelines.agent.llm.router import LLMRouter
    from agentops_pipelines.agent.tools import ESCALATE, TOOL_NAMES

    return LLMRouter(endpoint, TOOL_NAMES, "Choose the tool.", "prompts:/support_llm_agent_system/1",
                     fallback_tool=ESCALATE)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A serving process (acting, as deployed) of an LLM agent whose endpoint is ``fake``."""
    import mlflow

    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    tmp = tmp_path_factory.mktemp("llm-outage")
    fake = FakeEndpoint("500")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(name, uri)
        endpoint = Endpoint(fake.base_url, "m", timeout_s=30.0)
        versions = register_versions(uri, 1, wrap=lambda _: llm_router(endpoint))
        sor = SystemOfRecord(f"sqlite:///{tmp}/system_of_record.db").ensure()
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "AGENTOPS_SOR_URL": sor.url,
               "AGENTOPS_ONLINE_EVAL_SAMPLE_RATE": "0", EnvVar.LLM_API_KEY.value: KEY}
        server = Server(tmp / "server", f"models:/{AGENT}/{versions[0]}", versions[0], *fake.flags, env=env)
        try:
            yield SimpleNamespace(url=server.url, fake=fake, version=versions[0], server=server)
        finally:
            server.stop()
            fake.close()
            sor.dispose()
            mlflow.set_tracking_uri(None)


def ask(url: str, text: str, request_id: str) -> tuple[int, dict]:
    body = json.dumps({"dataframe_records": [{"text": text, "customer_id": "C00001"}]}).encode()
    status, _, answer = request(url, "POST", "/invocations", body, JSON, {"X-Request-Id": request_id})
    return status, answer["predictions"][0] if status == 200 else answer


def llm_counts(url: str, version: str) -> dict[str, float]:
    """``calls`` and each reason's failures, from the process's /metrics."""
    labels = (("agent", AGENT), ("environment", "test"), ("version", version))
    samples = scrape(url)
    out = {"calls": samples[("agentops_llm_calls_total", labels)]}
    for reason in FAILURE_REASONS:
        out[reason] = samples[("agentops_llm_call_failures_total", tuple(sorted((*labels, ("reason", reason)))))]
    return out


@pytest.mark.slow
def test_an_endpoint_outage_is_counted_by_reason_and_answered_with_a_hand_over(served):
    before = llm_counts(served.url, served.version)  # the load's warm-up call counts too
    for i in range(3):  # the endpoint answers 500
        status, answer = ask(served.url, f"where is my order number {i}?", f"outage-500-{i}")
        assert status == 200 and answer["tool"] == "escalate_to_human" and answer["escalated"] is True
    after_500 = llm_counts(served.url, served.version)
    assert after_500["calls"] - before["calls"] == 3
    assert after_500["server_error"] - before["server_error"] == 3
    assert all(after_500[r] == before[r] for r in FAILURE_REASONS if r != "server_error")

    served.fake.close()  # the endpoint is down: its port is closed
    for i in range(2):
        status, answer = ask(served.url, f"cancel my order number {i}", f"outage-down-{i}")
        assert status == 200 and answer["tool"] == "escalate_to_human"
    down = llm_counts(served.url, served.version)
    assert down["unreachable"] - after_500["unreachable"] == 2 and down["calls"] - after_500["calls"] == 2

    _, _, text = request(served.url, "GET", "/metrics")
    assert KEY not in text.decode() and served.fake.base_url.split("//")[1] not in text.decode()
    assert KEY not in served.server.log()  # nor in the serving process's log


@pytest.mark.slow
def test_a_hanging_endpoint_holds_its_own_threads_not_the_admins(tmp_path):
    """LLM predictions wait on their own pool: with more requests hanging on the endpoint than
    the event loop's default pool has threads, an admin call still answers at once."""
    import mlflow

    from agentops_pipelines.agent.system_of_record import SystemOfRecord

    fake = FakeEndpoint("ok")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
                mp.setenv(name, uri)
            versions = register_versions(uri, 1, wrap=lambda _: llm_router(Endpoint(fake.base_url, "m")))
        sor = SystemOfRecord(f"sqlite:///{tmp_path}/system_of_record.db").ensure()
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "AGENTOPS_SOR_URL": sor.url}
        server = Server(tmp_path / "server", f"models:/{AGENT}/{versions[0]}", versions[0], *fake.flags,
                        env=env)
        try:
            fake.mode = "hang"
            default_pool = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
            hanging = [threading.Thread(target=ask, args=(server.url, f"where is parcel {i}", f"hang-{i}"))
                       for i in range(default_pool + 2)]
            for t in hanging:
                t.start()
            deadline = time.monotonic() + 10
            while fake.requests < default_pool + 1 and time.monotonic() < deadline:  # + the warm-up's
                time.sleep(0.05)
            assert fake.requests >= default_pool + 1, "the requests did not reach the endpoint"
            started = time.perf_counter()
            status, _, _ = request(server.url, "POST", "/admin/shadow", b'{"action": "status"}', JSON, AUTH)
            waited = time.perf_counter() - started
            assert status == 200 and waited < 1.0, f"the admin call waited {waited:.2f} s behind LLM calls"
            for t in hanging:
                t.join(30)
        finally:
            server.stop()
            sor.dispose()
            mlflow.set_tracking_uri(None)
    finally:
        fake.close()


def test_failure_reasons_are_classes_never_the_url_or_the_answer():
    fake = FakeEndpoint("500")
    endpoint = Endpoint(fake.base_url, "m", timeout_s=5.0)
    try:
        with pytest.raises(EndpointError) as caught:
            endpoint.complete([{"role": "user", "content": "hi"}], {"type": "object"})
        assert caught.value.reason == "server_error"
        fake.mode, fake.hang_s = "hang", 2.0
        with pytest.raises(EndpointError) as caught:
            Endpoint(fake.base_url, "m", timeout_s=0.5).complete([{"role": "user", "content": "hi"}], {})
        assert caught.value.reason == "timeout"
    finally:
        fake.close()
    with pytest.raises(EndpointError) as caught:
        endpoint.complete([{"role": "user", "content": "hi"}], {})
    assert caught.value.reason == "unreachable"

    class APIStatusError(Exception):  # as the openai package raises them
        status_code = 429

    class APITimeoutError(Exception):
        pass

    assert [failure_reason(e) for e in (APIStatusError(), APITimeoutError(), ConnectionRefusedError(),
                                        ValueError("boom"), EndpointError("x", "auth"))] == [
        "rate_limited", "timeout", "unreachable", "agent_error", "auth"]
    router = llm_router(endpoint)
    assert router.decide("where is my order?")[:2] == ("escalate_to_human", 0.0)
    assert router.llm_call_counts() == (1, {"unreachable": 1}) and router.failures == 1
    import pickle

    copy = pickle.loads(pickle.dumps(router))  # the counts are this process's, never pickled
    assert copy.llm_call_counts() == (0, {}) and copy.last_error is None


@pytest.mark.slow
def test_a_canary_whose_llm_calls_fail_is_unhealthy_though_every_request_succeeds(tmp_path, monkeypatch):
    """The canary's calls fail (its endpoint answers 500), each is answered with a hand-over: no
    server error, so the error rate alone would promote it. Its stats carry the failed calls and
    canary health refuses it; the stable version beside it, whose calls succeed, stays healthy."""
    from agentops_pipelines.agent.system_of_record import SystemOfRecord
    from agentops_pipelines.rollout import RolloutPolicy, health_problem

    good, bad = FakeEndpoint("ok"), FakeEndpoint("500")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, uri)
    stable, = register_versions(uri, 1, wrap=lambda _: llm_router(Endpoint(good.base_url, "m", timeout_s=30.0)))
    canary, = register_versions(uri, 1, wrap=lambda _: llm_router(Endpoint(bad.base_url, "m", timeout_s=30.0)))
    sor = SystemOfRecord(f"sqlite:///{tmp_path}/system_of_record.db").ensure()
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "AGENTOPS_SOR_URL": sor.url,
           "AGENTOPS_ONLINE_EVAL_SAMPLE_RATE": "0", EnvVar.LLM_API_KEY.value: KEY}
    server = Server(tmp_path / "server", f"models:/{AGENT}/{stable}", stable, *good.flags, *bad.flags, env=env)
    try:
        load = json.dumps({"model_uri": f"models:/{AGENT}/{canary}", "role": "canary", "canary_share": 0.5})
        status, _, answer = request(server.url, "POST", "/admin/load", load.encode(), JSON, AUTH)
        assert status == 200, answer
        served_by = set()
        for i in range(60):  # a share sticky per customer: many customers reach both versions
            body = json.dumps({"dataframe_records": [{"text": f"where is my order {i}?", "customer_id": f"C{i:05d}"}]})
            status, headers, _ = request(server.url, "POST", "/invocations", body.encode(), JSON,
                                         {"X-Request-Id": f"canary-llm-{i}"})
            assert status == 200
            served_by.add(headers["X-Model-Version"])
        assert served_by == {stable, canary}
        status, _, stats = request(server.url, "GET", "/admin/stats?window=300", None, None, AUTH)
        assert status == 200, stats
    finally:
        server.stop()
        good.close()
        bad.close()
        sor.dispose()

    policy = RolloutPolicy(min_requests=10)
    on_canary, on_stable = stats["canary"], stats["stable"]
    assert on_canary["errors"] == 0 and on_canary["served"] >= 10  # every request answered
    assert on_canary["llm_failures"] >= on_canary["served"] and on_canary["llm_failure_reasons"].keys() == {"server_error"}
    problem = health_problem(on_canary, policy)
    assert problem and "LLM calls failing" in problem and "server_error" in problem, problem
    assert on_stable["llm_calls"] >= 10 and on_stable["llm_failures"] == 0
    assert health_problem(on_stable, policy) is None
