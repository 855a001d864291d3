"""Model state and routing through the endpoint functions (no socket): what is served, swaps
under load, metrics, probes."""

from __future__ import annotations

import json
import threading
import time

import pandas as pd

from agentops_pipelines.serving.admin import handle_admin_load
from agentops_pipelines.serving.handlers import (
    handle_health,
    handle_invocations,
    handle_livez,
    handle_readyz,
)
from agentops_pipelines.serving.metrics import ServingMetrics
from agentops_pipelines.serving.state import ServingState
from tests.serving.support import (
    JSON,
    TOKEN,
    fake,
    header_of,
    loader,
    metric_samples,
    metric_value,
    records,
)

BEARER = f"Bearer {TOKEN}"


def test_metrics_count_outcomes_tools_errors_and_models():
    def predict(df):
        if (df["text"] == "boom").any():
            raise ValueError("boom")
        tools = ["escalate_to_human" if "human" in t else "track_order" for t in df["text"]]
        return pd.DataFrame({"tool": tools, "escalated": [t == "escalate_to_human" for t in tools]})

    models = {
        "models:/fake/1": fake("1", predict, agent="support_agent"),
        "models:/fake/2": fake("2", predict, agent="support_agent"),
    }
    state = ServingState("prod", loader=loader(models))
    assert handle_invocations(state, records({"text": "a"}), JSON).status == 503
    state.load("models:/fake/1", "1")
    for body, content_type in [
        (records({"text": "order?"}, {"text": "a human please"}), JSON),
        (records({"text": "order?"}), JSON),
        (records({"text": "boom"}), JSON),
        (b"{nope", JSON),
        (b"text=1", "text/plain"),
        (records({"customer_id": "C1"}), JSON),
    ]:
        handle_invocations(state, body, content_type)
    m = metric_samples(state)
    labels = {"agent": "support_agent", "environment": "prod", "version": "1"}
    assert metric_value(m, "agentops_requests_total", outcome="ok", **labels) == 2
    assert metric_value(m, "agentops_requests_total", outcome="server_error", **labels) == 1
    assert metric_value(m, "agentops_requests_total", outcome="client_error", **labels) == 3
    assert metric_value(m, "agentops_requests_total", outcome="server_error", version="none") == 1
    assert metric_value(m, "agentops_request_latency_seconds_count", **labels) == 6
    assert metric_value(m, "agentops_tool_calls_total", tool="track_order", **labels) == 2
    assert metric_value(m, "agentops_tool_calls_total", tool="escalate_to_human", **labels) == 1
    assert metric_value(m, "agentops_escalations_total", **labels) == 1
    assert metric_value(m, "agentops_predicted_rows_total", **labels) == 3
    for code, n in [("INTERNAL_ERROR", 1), ("MALFORMED_REQUEST", 1), ("UNSUPPORTED_MEDIA_TYPE", 1),
                    ("BAD_REQUEST", 1)]:  # fmt: skip
        assert metric_value(m, "agentops_errors_total", error_code=code, **labels) == n
    assert metric_value(m, "agentops_model_info", role="stable", **labels) == 1
    assert metric_value(m, "agentops_canary_share", environment="prod") == 0

    state.load("models:/fake/2", "2", role="canary", canary_share=0.25)
    m = metric_samples(state)
    assert metric_value(m, "agentops_model_info", role="canary", version="2") == 1
    assert metric_value(m, "agentops_model_info", role="stable", version="1") == 1
    assert metric_value(m, "agentops_canary_share", agent="support_agent") == 0.25
    # a version that serves is exported at 0 before its first request: rate() sees the first one
    assert ("agentops_requests_total", tuple(sorted({**labels, "version": "2", "outcome": "ok"}.items()))) in m  # fmt: skip
    state.promote()
    m = metric_samples(state)
    assert metric_value(m, "agentops_model_info", role="stable", version="2") == 1
    assert metric_value(m, "agentops_model_info", version="1") == 0
    assert metric_value(m, "agentops_canary_share", agent="support_agent") == 0
    assert ServingMetrics("x").render()[1].startswith("text/plain")


def test_endpoints_without_socket():
    state = ServingState("dev", loader=loader({"models:/fake/1": fake("1")}), admin_token=TOKEN,
                         agent="fake")
    assert handle_health(state).status == 503
    assert handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON).status == 503

    r = handle_admin_load(state, b'{"model_uri": "models:/fake/1", "version": "1"}', JSON, BEARER)
    assert r.status == 200 and json.loads(r.body)["swapped"] is True
    health = handle_health(state)
    assert health.status == 200
    assert json.loads(health.body) | {"loaded_at": None, "pid": None} == {
        "status": "ok",
        "model_uri": "models:/fake/1",
        "version": "1",
        "agent": "agent",
        "environment": "dev",
        "loaded_at": None,
        "canary_model_uri": None,
        "canary_version": None,
        "canary_share": 0.0,
        "canary_loaded_at": None,
        "pod_role": "stable",
        "pid": None,
        "isolation": "unconfined",  # a state made in a test process: nothing confined it
    }

    r = handle_invocations(
        state, b'{"inputs": [{"text": "a"}, {"text": "b"}]}', JSON, request_id="abc-1"
    )
    assert r.status == 200
    assert {("X-Model-Version", "1"), ("X-Request-Id", "abc-1")} <= set(r.headers)
    assert "X-Model-Role" not in dict(r.headers)  # the role is the admin's business
    assert json.loads(r.body) == {"predictions": [{"tool": "x", "answer": "1"}] * 2}
    assert json.loads(handle_invocations(state, b'{"dataframe_records": []}', JSON).body)[
        "error_code"
    ]
    empty = b'{"dataframe_split": {"columns": ["text"], "data": []}}'
    assert json.loads(handle_invocations(state, empty, JSON).body) == {"predictions": []}
    odd_id = handle_invocations(state, records({"text": "a"}), JSON, request_id="bad id\n")
    assert len(header_of(odd_id, "X-Request-Id")) == 32  # replaced by a fresh one

    # a failed load answers with the reason and keeps the old model
    r = handle_admin_load(state, b'{"model_uri": "models:/fake/9", "version": "9"}', JSON, BEARER)
    assert r.status == 500
    assert "no model at models:/fake/9" in json.loads(r.body)["message"]
    assert state.current.version == "1"
    for body, status in [
        (b"nope", 400),
        (b'{"version": "2"}', 400),
        (b'{"model_uri": "models:/fake/1", "version": "2"}', 400),  # the URI names version 1
        (b'{"model_uri": "models:/fake@champion"}', 400),  # an alias pins nothing
        (b'{"model_uri": "models:/fake/1", "version": "1", "role": "blue"}', 400),
        (b'{"model_uri": "models:/fake/1", "version": "1", "canary_share": 0.5}', 400),
        (b'{"model_uri": "m", "version": "1", "role": "canary", "canary_share": 1.5}', 400),
        (b'{"model_uri": "m", "version": "1", "role": "canary", "canary_share": true}', 400),
        (b'{"model_uri": "m", "version": "1", "force": "yes"}', 400),
    ]:
        assert handle_admin_load(state, body, JSON, BEARER).status == status, body
    assert handle_admin_load(state, b"{}", "text/plain", BEARER).status == 415
    # the probes
    assert handle_livez(state).status == 200 and handle_readyz(state).status == 200
    state.draining = True
    assert handle_readyz(state).status == 503 and handle_livez(state).status == 200
    empty = ServingState("dev")
    assert handle_readyz(empty).status == 503 and handle_livez(empty).status == 200


def test_predict_exception_is_500():
    def boom(df):
        raise ValueError("model exploded")

    state = ServingState("dev")
    state.swap(fake("1", predict=boom))
    r = handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON)
    assert r.status == 500
    body = json.loads(r.body)
    assert body == {
        "error_code": "INTERNAL_ERROR",
        "message": "prediction failed: ValueError: model exploded",
    }
    assert handle_health(state).status == 200  # still serving


def test_switching_versions_under_load_loses_no_request():
    def slow(version):
        def predict(df):
            time.sleep(0.002)
            return pd.DataFrame({"answer": [version] * len(df)})

        return predict

    models = {f"models:/fake/{v}": fake(v, slow(v)) for v in ("1", "2", "3")}
    state = ServingState("prod", loader=loader(models))
    state.load("models:/fake/1", "1")
    results: list[tuple[int, str | None, str]] = []
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            r = handle_invocations(state, records({"text": "x", "customer_id": f"C{k}-{i}"}), JSON)
            answer = json.loads(r.body)["predictions"][0]["answer"] if r.status == 200 else None
            results.append((r.status, header_of(r, "X-Model-Version"), answer))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            for step in (
                lambda: state.load("models:/fake/2", "2", role="canary", canary_share=0.5),
                state.promote,
                lambda: state.load("models:/fake/3", "3", role="canary", canary_share=0.5),
                state.abort,
                lambda: state.load("models:/fake/1", "1"),
            ):
                step()
                time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert len(results) > 100
    assert {status for status, _, _ in results} == {200}
    assert all(version == answer for _, version, answer in results)  # header and model agree
    assert {version for _, version, _ in results} == {"1", "2", "3"}


def test_swap_lets_in_flight_requests_finish_on_the_old_model():
    started, release = threading.Event(), threading.Event()

    def slow(df):
        started.set()
        release.wait(5)
        return pd.DataFrame({"answer": ["old"] * len(df)})

    swaps = []
    state = ServingState("dev", loader=loader({"models:/fake/2": fake("2")}))
    state.swap(fake("1", predict=slow))
    state.on_swap(lambda m: swaps.append(m.version))
    result = {}
    t = threading.Thread(
        target=lambda: result.update(
            r=handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON)
        )
    )
    t.start()
    assert started.wait(5)
    assert state.load("models:/fake/2", "2") == (state.current, True)  # swaps while predict runs
    assert state.load("models:/fake/2", "2")[1] is False  # same version: no reload
    new = handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON)
    release.set()
    t.join(5)
    assert json.loads(result["r"].body) == {"predictions": [{"answer": "old"}]}
    assert ("X-Model-Version", "1") in result["r"].headers
    assert ("X-Model-Version", "2") in new.headers
    assert swaps == ["2"]
