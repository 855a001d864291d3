"""The serving process and the local deployer.

Unit tests of the request functions, the traffic split, the batcher, metrics and tracing run
without a socket (tracing against a real SQLite MLflow store). The integration tests log a tiny
pyfunc router (two registered versions that answer differently, and fail on 'boom') to a temporary
SQLite MLflow store, start the real server through ``LocalProcessDeployer`` on an ephemeral port
and talk HTTP to it: formats, bad input, hot swap, canary, metrics, inference log, traces.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pandas as pd
import pytest

from agentops_pipelines.resources.deployers import (
    Deployer,
    Deployment,
    DeploymentError,
    LocalProcessDeployer,
)
from agentops_pipelines.serving.app import (
    LoadedModel,
    RequestError,
    ServingState,
    _signature_columns,
    handle_admin_abort,
    handle_admin_load,
    handle_admin_promote,
    handle_admin_stats,
    handle_health,
    handle_invocations,
    handle_metrics,
    parse_args,
    parse_request,
    predictions_json,
    prepare_frame,
    stats_payload,
    validate_frame,
)
from agentops_pipelines.serving.batching import Batcher, Overloaded
from agentops_pipelines.serving.inference_log import InferenceLogWriter, read_inference_log
from agentops_pipelines.serving.metrics import ServingMetrics
from agentops_pipelines.serving.traffic import OutcomeRing, bucket, goes_to_canary

JSON = "application/json"
ROWS = [
    {"text": "Where is my order?", "customer_id": "C1"},
    {"text": "My password does not work", "customer_id": "C2"},
]
BODIES = {
    "dataframe_split": (
        JSON,
        json.dumps(
            {
                "dataframe_split": {
                    "columns": ["text", "customer_id"],
                    "data": [list(r.values()) for r in ROWS],
                }
            }
        ),
    ),
    "dataframe_records": (JSON, json.dumps({"dataframe_records": ROWS})),
    "instances": (JSON, json.dumps({"instances": ROWS})),
    "inputs": (JSON, json.dumps({"inputs": {k: [r[k] for r in ROWS] for k in ROWS[0]}})),
    "csv": ("text/csv", pd.DataFrame(ROWS).to_csv(index=False)),
}


# --------------------------------------------------------------------------------------------
# Unit tests: parsing and the endpoint functions, no socket, no mlflow


@pytest.mark.parametrize("fmt", sorted(BODIES))
def test_parse_request_formats(fmt):
    content_type, body = BODIES[fmt]
    df = parse_request(body.encode(), content_type)
    assert list(df["text"]) == [r["text"] for r in ROWS]
    assert list(df["customer_id"]) == ["C1", "C2"]


def test_parse_request_variants():
    one = parse_request(b'{"inputs": {"text": "hi", "customer_id": "C1"}}', JSON)
    assert one.to_dict("records") == [{"text": "hi", "customer_id": "C1"}]
    assert (
        len(
            parse_request(b'{"instances": {"text": ["a", "b"]}}', "application/json; charset=UTF-8")
        )
        == 2
    )
    # CSV keeps ids as strings, as a signature with string columns would
    df = parse_request(b"text,customer_id\nhello,00123\n", "text/csv")
    assert df["customer_id"].iloc[0] == "00123"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"{not json", JSON, 400, "not valid JSON"),
        (b"", JSON, 400, "empty"),
        (b"\xff\xfe\x00", JSON, 400, "not valid JSON"),
        (b"[1, 2]", JSON, 400, "JSON object"),
        (b'{"records": []}', JSON, 400, "exactly one of"),
        (b'{"inputs": [], "instances": []}', JSON, 400, "exactly one of"),
        (b'{"inputs": [{"text": "a"}], "params": {"t": 1}}', JSON, 400, "params are not supported"),
        (b'{"dataframe_records": {"text": "a"}}', JSON, 400, "list of objects"),
        (b'{"dataframe_split": {"columns": ["text"]}}', JSON, 400, "'data'"),
        (
            b'{"dataframe_split": {"columns": ["text"], "data": [["a", "b"]]}}',
            JSON,
            400,
            "not a valid table",
        ),
        (b'{"instances": [1, 2]}', JSON, 400, "list of objects"),
        (b"text\n\xff\n", "text/csv", 400, "UTF-8"),
        (b"text=hi", "application/x-www-form-urlencoded", 415, "Content-Type"),
        (b'{"inputs": []}', None, 415, "Content-Type"),
        (b'{"inputs": []}', "application/json; charset=latin-1", 415, "UTF-8"),
    ],
)
def test_parse_request_rejects(body, content_type, status, needle):
    with pytest.raises(RequestError) as info:
        parse_request(body, content_type)
    assert info.value.status == status
    assert needle in info.value.message


def test_validate_frame():
    assert validate_frame(pd.DataFrame({"text": ["a"]})).shape == (1, 1)
    with pytest.raises(RequestError, match=r"missing required column\(s\) \['text'\]"):
        validate_frame(pd.DataFrame({"customer_id": ["C1"]}))
    with pytest.raises(RequestError, match="null"):
        validate_frame(pd.DataFrame({"text": ["a", None]}))
    with pytest.raises(RequestError, match="customer_id"):
        validate_frame(pd.DataFrame({"text": ["a"]}), required=("text", "customer_id"))


def test_predictions_json():
    df = pd.DataFrame({"tool": ["a"], "confidence": [0.5], "n": [float("nan")]})
    assert json.loads(predictions_json(df)) == {
        "predictions": [{"tool": "a", "confidence": 0.5, "n": None}]
    }
    assert json.loads(predictions_json([{"x": 1}])) == {"predictions": [{"x": 1}]}
    assert json.loads(predictions_json(pd.Series([1, 2]))) == {"predictions": [1, 2]}


def test_signature_columns():
    from mlflow.types import ColSpec, Schema

    schema = Schema(
        [
            ColSpec("string", "customer_id"),
            ColSpec("string", "channel", required=False),
            ColSpec("long", "n"),
        ]
    )
    pyfunc = SimpleNamespace(metadata=SimpleNamespace(get_input_schema=lambda: schema))
    assert _signature_columns(pyfunc) == (
        ("text", "customer_id", "n"),
        ("text", "customer_id", "channel"),
    )


def _fake(version: str, predict=None, **kwargs) -> LoadedModel:
    def default(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"tool": ["x"] * len(df), "answer": [version] * len(df)})

    return LoadedModel(
        model_uri=f"models:/fake/{version}", version=version, predict=predict or default, **kwargs
    )


def _loader(models: dict[str, LoadedModel]):
    def load(uri: str, version: str) -> LoadedModel:
        if uri not in models:
            raise FileNotFoundError(f"no model at {uri}")
        return models[uri]

    return load


def _body(*rows: dict) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()


def _header(response, name: str) -> str | None:
    return dict(response.headers).get(name)


def test_prepare_frame():
    model = _fake(
        "1",
        input_columns=("text", "customer_id", "orders_30d"),
        numeric_columns=("orders_30d",),
    )
    df = pd.DataFrame({"text": ["a"], "customer_id": [123], "orders_30d": ["4"], "extra": [1]})
    out = prepare_frame(df, model)
    assert list(out.columns) == ["text", "customer_id", "orders_30d"]  # unknown column dropped
    assert out["customer_id"].tolist() == ["123"] and out["orders_30d"].tolist() == [4]
    # without a signature, columns pass through
    assert "extra" in prepare_frame(df, _fake("1")).columns
    for bad, needle in [
        (pd.DataFrame({"text": [{"nested": 1}]}), "must hold strings"),
        (pd.DataFrame({"text": ["a"], "orders_30d": ["many"]}), "must be numeric"),
        (pd.DataFrame({"customer_id": ["C1"]}), "missing required column"),
    ]:
        with pytest.raises(RequestError, match=needle) as info:
            prepare_frame(bad, model)
        assert info.value.status == 400
    with pytest.raises(RequestError, match="1001 rows exceed the limit of 1000") as info:
        prepare_frame(pd.DataFrame({"text": ["a"] * 1001}), model)
    assert (info.value.status, info.value.error_code) == (413, "TOO_MANY_ROWS")


def test_traffic_split_is_sticky_uniform_and_monotonic():
    customers = [f"C{i:05d}" for i in range(20_000)]
    assert bucket("C00001") == bucket("C00001") and 0 <= bucket("C00001") < 1
    on_10 = {c for c in customers if goes_to_canary(0.10, c, "any")}
    on_30 = {c for c in customers if goes_to_canary(0.30, c, "other")}
    assert abs(len(on_10) / len(customers) - 0.10) < 0.01
    assert abs(len(on_30) / len(customers) - 0.30) < 0.015
    assert on_10 <= on_30  # raising the share only moves customers to the canary
    # the request id does not matter when there is a customer id
    assert all(
        goes_to_canary(0.1, c, "r1") == goes_to_canary(0.1, c, "r2") for c in customers[:500]
    )
    # without one, the request id decides
    requests = [f"req-{i}" for i in range(10_000)]
    share = sum(goes_to_canary(0.25, None, r) for r in requests) / len(requests)
    assert abs(share - 0.25) < 0.015
    assert {goes_to_canary(0.25, float("nan"), r) for r in requests[:50]} == {
        goes_to_canary(0.25, "", r) for r in requests[:50]
    }
    assert not any(goes_to_canary(0.0, c, "r") for c in customers[:100])
    assert all(goes_to_canary(1.0, c, "r") for c in customers[:100])


def test_outcome_ring_stats_per_role_and_window():
    now = [1000.0]
    ring = OutcomeRing(capacity=5, clock=lambda: now[0])
    for status, latency in [(200, 5.0), (500, 7.0), (400, 1.0)]:
        ring.add("stable", "1", status, latency)
    ring.add("stable", "0", 200, 99.0)  # a version no longer stable: not counted
    ring.add("canary", "2", 200, 3.0)
    stats = ring.stats(60, {"stable": "1", "canary": "2"})
    assert stats["stable"] == {
        "version": "1",
        "requests": 3,
        "errors": 1,
        "client_errors": 1,
        "error_rate": pytest.approx(1 / 3, abs=1e-6),
        "p50_ms": 5.0,
        "p99_ms": pytest.approx(6.96),
    }
    assert stats["canary"]["requests"] == 1 and stats["canary"]["p99_ms"] == 3.0
    assert ring.stats(60, {"stable": "1", "canary": None})["canary"] is None
    now[0] += 30
    ring.add("stable", "1", 200, 2.0)  # capacity 5: the oldest outcome falls out
    assert ring.stats(10, {"stable": "1", "canary": None})["stable"]["requests"] == 1
    assert ring.stats(60, {"stable": "1", "canary": None})["stable"]["requests"] == 3
    assert ring.stats(60, {"stable": "9", "canary": None})["stable"] == {
        "version": "9",
        "requests": 0,
        "errors": 0,
        "client_errors": 0,
        "error_rate": 0.0,
        "p50_ms": None,
        "p99_ms": None,
    }


def _samples(state: ServingState) -> dict[tuple, float]:
    """{(name, sorted label items): value} from the /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(handle_metrics(state).body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name: str, **labels) -> float:
    matches = [
        v
        for (n, items), v in samples.items()
        if n == name and labels.items() <= dict(items).items()
    ]
    return sum(matches)


def test_metrics_count_outcomes_tools_errors_and_models():
    def predict(df):
        if (df["text"] == "boom").any():
            raise ValueError("boom")
        tools = ["escalate_to_human" if "human" in t else "track_order" for t in df["text"]]
        return pd.DataFrame({"tool": tools, "escalated": [t == "escalate_to_human" for t in tools]})

    models = {
        "models:/fake/1": _fake("1", predict, agent="support_agent"),
        "models:/fake/2": _fake("2", predict, agent="support_agent"),
    }
    state = ServingState("prod", loader=_loader(models))
    assert handle_invocations(state, _body({"text": "a"}), JSON).status == 503
    state.load("models:/fake/1", "1")
    for body, content_type in [
        (_body({"text": "order?"}, {"text": "a human please"}), JSON),
        (_body({"text": "order?"}), JSON),
        (_body({"text": "boom"}), JSON),
        (b"{nope", JSON),
        (b"text=1", "text/plain"),
        (_body({"customer_id": "C1"}), JSON),
    ]:
        handle_invocations(state, body, content_type)
    m = _samples(state)
    labels = {"agent": "support_agent", "environment": "prod", "version": "1"}
    assert _value(m, "agentops_requests_total", outcome="ok", **labels) == 2
    assert _value(m, "agentops_requests_total", outcome="server_error", **labels) == 1
    assert _value(m, "agentops_requests_total", outcome="client_error", **labels) == 3
    assert _value(m, "agentops_requests_total", outcome="server_error", version="none") == 1
    assert _value(m, "agentops_request_latency_seconds_count", **labels) == 6
    assert _value(m, "agentops_tool_calls_total", tool="track_order", **labels) == 2
    assert _value(m, "agentops_tool_calls_total", tool="escalate_to_human", **labels) == 1
    assert _value(m, "agentops_escalations_total", **labels) == 1
    assert _value(m, "agentops_predicted_rows_total", **labels) == 3
    for code, n in [("INTERNAL_ERROR", 1), ("MALFORMED_REQUEST", 1), ("UNSUPPORTED_MEDIA_TYPE", 1),
                    ("BAD_REQUEST", 1)]:  # fmt: skip
        assert _value(m, "agentops_errors_total", error_code=code, **labels) == n
    assert _value(m, "agentops_model_info", role="stable", **labels) == 1
    assert _value(m, "agentops_canary_share", environment="prod") == 0

    state.load("models:/fake/2", "2", role="canary", canary_share=0.25)
    m = _samples(state)
    assert _value(m, "agentops_model_info", role="canary", version="2") == 1
    assert _value(m, "agentops_model_info", role="stable", version="1") == 1
    assert _value(m, "agentops_canary_share", agent="support_agent") == 0.25
    # a version that serves is exported at 0 before its first request: rate() sees the first one
    assert ("agentops_requests_total", tuple(sorted({**labels, "version": "2", "outcome": "ok"}.items()))) in m  # fmt: skip
    state.promote()
    m = _samples(state)
    assert _value(m, "agentops_model_info", role="stable", version="2") == 1
    assert _value(m, "agentops_model_info", version="1") == 0
    assert _value(m, "agentops_canary_share", agent="support_agent") == 0
    assert ServingMetrics("x").render()[1].startswith("text/plain")


def test_endpoints_without_socket():
    state = ServingState("dev", loader=_loader({"models:/fake/1": _fake("1")}))
    assert handle_health(state).status == 503
    assert handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON).status == 503

    r = handle_admin_load(state, b'{"model_uri": "models:/fake/1", "version": "1"}', JSON)
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
    }

    r = handle_invocations(
        state, b'{"inputs": [{"text": "a"}, {"text": "b"}]}', JSON, request_id="abc-1"
    )
    assert r.status == 200
    assert {("X-Model-Version", "1"), ("X-Model-Role", "stable"), ("X-Request-Id", "abc-1")} <= set(
        r.headers
    )
    assert json.loads(r.body) == {"predictions": [{"tool": "x", "answer": "1"}] * 2}
    assert json.loads(handle_invocations(state, b'{"dataframe_records": []}', JSON).body)[
        "error_code"
    ]
    empty = b'{"dataframe_split": {"columns": ["text"], "data": []}}'
    assert json.loads(handle_invocations(state, empty, JSON).body) == {"predictions": []}
    odd_id = handle_invocations(state, _body({"text": "a"}), JSON, request_id="bad id\n")
    assert len(_header(odd_id, "X-Request-Id")) == 32  # replaced by a fresh one

    # a failed load answers with the reason and keeps the old model
    r = handle_admin_load(state, b'{"model_uri": "models:/fake/9", "version": "9"}', JSON)
    assert r.status == 500
    assert "no model at models:/fake/9" in json.loads(r.body)["message"]
    assert state.current.version == "1"
    for body, status in [
        (b"nope", 400),
        (b'{"version": "2"}', 400),
        (b'{"model_uri": "models:/fake/1"}', 400),
        (b'{"model_uri": "models:/fake/1", "version": "1", "role": "blue"}', 400),
        (b'{"model_uri": "models:/fake/1", "version": "1", "canary_share": 0.5}', 400),
        (b'{"model_uri": "m", "version": "1", "role": "canary", "canary_share": 1.5}', 400),
        (b'{"model_uri": "m", "version": "1", "role": "canary", "canary_share": true}', 400),
        (b'{"model_uri": "m", "version": "1", "force": "yes"}', 400),
    ]:
        assert handle_admin_load(state, body, JSON).status == status, body
    assert handle_admin_load(state, b"{}", "text/plain").status == 415


def test_predict_exception_is_500():
    def boom(df):
        raise ValueError("model exploded")

    state = ServingState("dev")
    state.swap(_fake("1", predict=boom))
    r = handle_invocations(state, b'{"inputs": [{"text": "a"}]}', JSON)
    assert r.status == 500
    body = json.loads(r.body)
    assert body == {
        "error_code": "INTERNAL_ERROR",
        "message": "prediction failed: ValueError: model exploded",
    }
    assert handle_health(state).status == 200  # still serving


def test_admin_token():
    state = ServingState(
        "dev",
        loader=_loader({"models:/fake/1": _fake("1"), "models:/fake/2": _fake("2")}),
        admin_token="s3cret",
    )
    body = b'{"model_uri": "models:/fake/1", "version": "1"}'
    assert handle_admin_load(state, body, JSON).status == 401
    assert handle_admin_load(state, body, JSON, "Bearer wrong").status == 401
    assert handle_admin_load(state, body, JSON, "Bearer s3cret").status == 200
    canary = b'{"model_uri": "models:/fake/2", "version": "2", "role": "canary"}'
    assert handle_admin_load(state, canary, JSON, "Bearer s3cret").status == 200
    for call in (
        lambda auth: handle_admin_promote(state, b"", None, auth),
        lambda auth: handle_admin_abort(state, b"", None, auth),
        lambda auth: handle_admin_stats(state, "window=5", auth),
    ):
        assert call(None).status == 401 and call("Bearer nope").status == 401
    assert handle_admin_stats(state, "window=5", "Bearer s3cret").status == 200
    assert state.canary.version == "2"  # nothing was changed by the refused calls


def test_canary_split_promote_and_abort():
    models = {f"models:/fake/{v}": _fake(v) for v in ("1", "2", "3")}
    state = ServingState("staging", loader=_loader(models))

    def load(payload: dict):
        return handle_admin_load(state, json.dumps(payload).encode(), JSON)

    def serve(customer: str | None, request_id: str | None = None) -> tuple[str, str]:
        row = {"text": "hi"} | ({"customer_id": customer} if customer else {})
        r = handle_invocations(state, _body(row), JSON, request_id=request_id)
        assert r.status == 200
        assert json.loads(r.body)["predictions"][0]["answer"] == _header(r, "X-Model-Version")
        return _header(r, "X-Model-Version"), _header(r, "X-Model-Role")

    r = load({"model_uri": "models:/fake/2", "version": "2", "role": "canary"})
    assert (r.status, json.loads(r.body)["error_code"]) == (409, "NO_STABLE_VERSION")
    assert handle_admin_promote(state).status == 409
    assert load({"model_uri": "models:/fake/1", "version": "1"}).status == 200
    r = load({"model_uri": "models:/fake/1", "version": "1", "role": "canary"})
    assert (r.status, json.loads(r.body)["error_code"]) == (409, "CONFLICT")

    r = load({"model_uri": "models:/fake/2", "version": "2", "role": "canary", "canary_share": 0.3})
    payload = json.loads(r.body)
    assert r.status == 200 and payload["swapped"] is True
    assert (payload["version"], payload["canary_version"], payload["canary_share"]) == (
        "1",
        "2",
        0.3,
    )

    customers = [f"C{i:04d}" for i in range(600)]
    first = {c: serve(c) for c in customers}
    assert {first[c] for c in customers} == {("1", "stable"), ("2", "canary")}
    share = sum(role == "canary" for _, role in first.values()) / len(customers)
    assert 0.24 < share < 0.36
    assert all(serve(c) == first[c] for c in customers[:200])  # sticky
    no_customer = Counter(serve(None)[1] for _ in range(400))
    assert 0.2 < no_customer["canary"] / 400 < 0.4
    assert serve(None, "fixed-id") == serve(None, "fixed-id")

    # the same canary again: the share changes, the model is not reloaded
    loaded_at = state.canary.loaded_at
    r = load({"model_uri": "models:/fake/2", "version": "2", "role": "canary", "canary_share": 1.0})
    assert r.status == 200 and json.loads(r.body)["swapped"] is False
    assert state.canary.loaded_at == loaded_at
    assert {serve(c) for c in customers[:50]} == {("2", "canary")}
    stats = json.loads(handle_admin_stats(state, "window=60").body)
    assert stats["stable"]["version"] == "1" and stats["canary"]["version"] == "2"
    assert stats["canary"]["requests"] > 0 and stats["canary_share"] == 1.0
    assert handle_admin_stats(state, "window=0").status == 400
    assert handle_admin_stats(state, "window=abc").status == 400

    r = handle_admin_promote(state)
    assert r.status == 200
    payload = json.loads(r.body)
    assert (payload["version"], payload["canary_version"], payload["previous_version"]) == (
        "2",
        None,
        "1",
    )
    assert {serve(c) for c in customers[:50]} == {("2", "stable")}

    assert (
        load(
            {"model_uri": "models:/fake/3", "version": "3", "role": "canary", "canary_share": 1}
        ).status
        == 200
    )
    r = handle_admin_abort(state)
    assert r.status == 200 and json.loads(r.body)["aborted_version"] == "3"
    assert {serve(c) for c in customers[:50]} == {("2", "stable")}
    assert json.loads(handle_admin_abort(state).body)["aborted_version"] is None  # idempotent

    # a new stable version drops the canary, unless asked to keep it
    load({"model_uri": "models:/fake/3", "version": "3", "role": "canary", "canary_share": 0.5})
    load({"model_uri": "models:/fake/1", "version": "1", "keep_canary": True})
    assert (state.current.version, state.canary.version) == ("1", "3")
    r = load({"model_uri": "models:/fake/1", "version": "1"})
    assert json.loads(r.body)["swapped"] is False and state.canary is None


def test_switching_versions_under_load_loses_no_request():
    def slow(version):
        def predict(df):
            time.sleep(0.002)
            return pd.DataFrame({"answer": [version] * len(df)})

        return predict

    models = {f"models:/fake/{v}": _fake(v, slow(v)) for v in ("1", "2", "3")}
    state = ServingState("prod", loader=_loader(models))
    state.load("models:/fake/1", "1")
    results: list[tuple[int, str | None, str]] = []
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            r = handle_invocations(state, _body({"text": "x", "customer_id": f"C{k}-{i}"}), JSON)
            answer = json.loads(r.body)["predictions"][0]["answer"] if r.status == 200 else None
            results.append((r.status, _header(r, "X-Model-Version"), answer))
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
    state = ServingState("dev", loader=_loader({"models:/fake/2": _fake("2")}))
    state.swap(_fake("1", predict=slow))
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


# --------------------------------------------------------------------------------------------
# The batcher


def _gate_infer(calls: list, gate: threading.Event | None = None):
    def infer(frame: pd.DataFrame):
        calls.append(len(frame))
        if gate is not None:
            gate.wait(5)
        if (frame["text"] == "boom").any():
            raise ValueError("boom")
        out = pd.DataFrame({"echo": frame["text"].tolist()})
        return out, frame

    return infer


def _submit_all(batcher: Batcher, texts: list[str], columns: dict | None = None) -> dict:
    results: dict[str, object] = {}

    def one(text: str) -> None:
        try:
            frame = pd.DataFrame({"text": [text], **(columns or {})})
            results[text] = batcher.predict(frame)[0]["echo"].tolist()
        except Exception as e:
            results[text] = e

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    return results, threads


def test_batcher_merges_waiting_requests_and_isolates_failures():
    calls: list[int] = []
    gate = threading.Event()
    batcher = Batcher(_gate_infer(calls, gate), max_rows=64)
    first, first_threads = _submit_all(batcher, ["first"])
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    results, threads = _submit_all(batcher, [f"t{i}" for i in range(10)] + ["boom"])
    while batcher._queued_rows < 11 and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for t in first_threads + threads:
        t.join(5)
    assert first["first"] == ["first"]
    assert all(results[f"t{i}"] == [f"t{i}"] for i in range(10))  # each gets its own rows back
    assert isinstance(results["boom"], ValueError)
    assert calls[:2] == [1, 11]  # the 11 waiting requests went in one call
    assert sorted(calls[2:]) == [1] * 11  # that call failed: retried one by one
    batcher.retire()


def test_batcher_keeps_column_sets_apart_and_limits_rows():
    calls: list[int] = []
    gate = threading.Event()
    batcher = Batcher(_gate_infer(calls, gate), max_rows=4)
    blocker, blocker_threads = _submit_all(batcher, ["blocker"])
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    plain, t1 = _submit_all(batcher, [f"p{i}" for i in range(6)])
    with_feature, t2 = _submit_all(batcher, [f"f{i}" for i in range(3)], {"orders_30d": [3]})
    while batcher._queued_rows < 9 and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for t in blocker_threads + t1 + t2:
        t.join(5)
    assert all(plain[f"p{i}"] == [f"p{i}"] for i in range(6))
    assert all(with_feature[f"f{i}"] == [f"f{i}"] for i in range(3))
    assert max(calls) <= 4 and sum(calls) == 10


def _wait(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


def test_batcher_splits_unbatchable_output_by_request():
    calls: list[int] = []
    busy, release = threading.Event(), threading.Event()

    def infer(frame):
        calls.append(len(frame))
        if not busy.is_set():
            busy.set()
            release.wait(5)
        return {"n": len(frame)}, None  # not one row per input row: cannot be split

    batcher = Batcher(infer)
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(batcher.predict(pd.DataFrame({"text": ["x"]}))[0]))
        for _ in range(3)
    ]  # fmt: skip
    threads[0].start()
    assert busy.wait(5)
    for t in threads[1:]:
        t.start()
    _wait(lambda: batcher._queued_rows == 2)
    release.set()
    for t in threads:
        t.join(5)
    assert results == [{"n": 1}] * 3
    assert calls == [1, 2, 1, 1] and batcher.batchable is False
    batcher.retire()


def test_batcher_retire_and_overload():
    batcher = Batcher(lambda f: (pd.DataFrame({"n": [len(f)] * len(f)}), None))
    assert batcher.predict(pd.DataFrame({"text": ["a"]}))[0]["n"].tolist() == [1]
    batcher.retire()
    _wait(lambda: not batcher.alive)
    assert batcher.predict(pd.DataFrame({"text": ["late"]}))[0]["n"].tolist() == [1]  # inline

    gate = threading.Event()
    small = Batcher(lambda f: (gate.wait(5), (pd.DataFrame({"n": [1] * len(f)}), None))[1],
                    max_queue_rows=2)  # fmt: skip
    first = threading.Thread(target=lambda: small.predict(pd.DataFrame({"text": ["a"]})))
    first.start()
    _wait(lambda: small.batches == 1)  # the first request is being predicted
    waiting = threading.Thread(target=lambda: small.predict(pd.DataFrame({"text": ["b", "c"]})))
    waiting.start()
    _wait(lambda: small._queued_rows == 2)
    with pytest.raises(Overloaded, match="2 rows are waiting"):
        small.predict(pd.DataFrame({"text": ["d"]}))
    gate.set()
    first.join(5)
    waiting.join(5)
    small.retire()


def test_inference_log_through_the_endpoint(tmp_path):
    def with_features(df):
        if (df["text"] == "boom").any():
            raise ValueError("boom")
        features = pd.DataFrame({"orders_30d": [7] * len(df), "plan_tier": ["pro"] * len(df)})
        tools = pd.DataFrame({"tool": ["track_order"] * len(df), "confidence": [0.9] * len(df),
                              "escalated": [False] * len(df)})  # fmt: skip
        return tools, features

    model = _fake("4", agent="support_agent", predict_with_features=with_features)
    writer = InferenceLogWriter(tmp_path, "staging", flush_seconds=3600).start()
    state = ServingState("staging", inference_log=writer)
    state.swap(model)
    assert handle_invocations(state, _body({"text": "order?", "customer_id": "C7"}, {"text": "again"}), JSON, "r-1").status == 200  # fmt: skip
    assert handle_invocations(state, _body({"text": "boom", "customer_id": "C8"}), JSON, "r-2").status == 500  # fmt: skip
    assert handle_invocations(state, b"{bad", JSON, "r-3").status == 400  # no rows to log
    writer.close()
    today = pd.Timestamp.now(tz="UTC").date()
    df = read_inference_log(tmp_path, today, today)
    assert df["request_id"].tolist() == ["r-1", "r-1", "r-2"]
    assert df["row"].tolist() == [0, 1, 0]
    assert df["customer_id"].tolist()[:2] == ["C7", None]
    assert df["status"].tolist() == [200, 200, 500]
    assert df["tool"].tolist()[:2] == ["track_order"] * 2 and pd.isna(df["tool"].iloc[2])
    assert df["orders_30d"].tolist()[:2] == [7, 7] and df["plan_tier"].tolist()[:2] == ["pro"] * 2
    assert set(df["environment"]) == {"staging"} and set(df["model_version"]) == {"4"}
    assert set(df["role"]) == {"stable"} and (df["latency_ms"] > 0).all()


def test_a_canary_pod_reports_its_model_as_the_canary(tmp_path):
    """On Kubernetes the canary is a Deployment of its own (AGENTOPS_SERVING_ROLE=canary): the
    pod's one model is loaded as stable but reported as the canary everywhere it is counted."""
    writer = InferenceLogWriter(tmp_path, "prod", flush_seconds=3600).start()
    state = ServingState("prod", inference_log=writer, pod_role="canary")
    state.swap(_fake("5", agent="support_agent"))
    r = handle_invocations(state, _body({"text": "order?"}), JSON, "c-1")
    assert r.status == 200 and _header(r, "X-Model-Role") == "canary"
    assert _value(_samples(state), "agentops_model_info", role="canary", version="5") == 1
    stats = stats_payload(state, 60)
    assert stats["stable"] is None and stats["canary"]["requests"] == 1
    assert stats["canary"]["version"] == "5"
    assert json.loads(handle_health(state).body)["pod_role"] == "canary"
    writer.close()
    today = pd.Timestamp.now(tz="UTC").date()
    assert read_inference_log(tmp_path, today, today)["role"].tolist() == ["canary"]
    with pytest.raises(ValueError, match="pod_role"):
        ServingState("prod", pod_role="blue")
    assert parse_args(["--model-uri", "m", "--version", "1", "--environment", "e"]).pod_role == "stable"


def test_deployer_is_a_resource():
    assert issubclass(LocalProcessDeployer, Deployer)
    with pytest.raises(TypeError):
        Deployer()  # abstract
    d = LocalProcessDeployer(state_dir="/tmp/x", ports={"prod": 8080})
    assert d.ports == {"prod": 8080} and d.host == "127.0.0.1" and d.health_timeout_s == 120
    assert d.inference_log_dir == "" and d.trace_sample_rate == 0.01
    assert d.inference_log_path("prod", "models:/support_agent/3") is None
    with pytest.raises(ValueError, match="invalid environment"):
        d.status("../etc")
    logged = LocalProcessDeployer(state_dir="/tmp/x", inference_log_dir="/var/log/agentops")
    assert logged.inference_log_path("prod", "models:/support_agent/3") == Path(
        "/var/log/agentops/support_agent/prod"
    )
    assert logged.inference_log_path("dev", "models:/support_agent@champion").name == "dev"
    assert logged.inference_log_path("dev", "runs:/abc/model").parent.name == "agent"
    with pytest.raises(DeploymentError, match="no server is running"):
        d.deploy_canary("nothing-here", "models:/x/1", "1", 0.1)
    with pytest.raises(ValueError, match="share"):
        d.deploy_canary("dev", "models:/x/1", "1", 1.5)


# --------------------------------------------------------------------------------------------
# Tracing against a real MLflow store (SQLite)


class KeywordRouter:
    """A router for AgentModel: 'order' -> track_order, 'human' -> escalate; raises on 'boom'."""

    def predict(self, requests: pd.DataFrame) -> pd.DataFrame:
        texts = [str(t) for t in requests["text"]]
        if "boom" in texts:
            raise ValueError("the router cannot route 'boom'")
        tools = ["escalate_to_human" if "human" in t else "track_order" for t in texts]
        return pd.DataFrame({"tool": tools, "confidence": [0.8] * len(texts)})


def test_tracing_errors_and_samples_with_the_full_path(registry):
    import mlflow

    from agentops_pipelines.agent.model import AgentModel
    from agentops_pipelines.serving.tracing import Tracer

    agent = AgentModel("tracing_agent", KeywordRouter(), ("orders_30d",), {}, "escalate_to_human",
                       "Started {{tool}}.", "prompts:/answer/1")  # fmt: skip
    model = _fake(
        "7",
        lambda df: agent.predict(None, df),
        agent="tracing_agent",
        predict_with_features=agent.predict_with_features,
        predict_traced=agent.predict_traced,
    )
    predictions, features = agent.predict_with_features(pd.DataFrame({"text": ["human please"]}))
    assert predictions["escalated"].tolist() == [True] and features.to_dict("list") == {
        "orders_30d": [0]
    }

    results: list[tuple[str, str]] = []
    tracer = Tracer("staging", sample_rate=0.0, experiment="serving-test",
                    on_result=lambda reason, result: results.append((reason, result)))  # fmt: skip
    state = ServingState("staging", tracer=tracer.start())
    state.swap(model)
    ok = handle_invocations(state, _body({"text": "where is my order", "customer_id": "C1"}), JSON, "t-ok")  # fmt: skip
    tracer.sample_rate = 1.0
    sampled = handle_invocations(state, _body({"text": "a human please", "customer_id": "C2"}), JSON, "t-sampled")  # fmt: skip
    failed = handle_invocations(state, _body({"text": "boom", "customer_id": "C3"}), JSON, "t-error")  # fmt: skip
    assert (ok.status, sampled.status, failed.status) == (200, 200, 500)
    tracer.close(timeout=60)
    assert sorted(results) == [("error", "logged"), ("sampled", "logged")]

    experiment = mlflow.get_experiment_by_name("serving-test").experiment_id
    traces = mlflow.search_traces(
        locations=[experiment],
        filter_string="tags.`agentops.environment` = 'staging'",
        return_type="list",
        flush=True,
    )
    by_request = {t.info.tags["agentops.request_id"]: t for t in traces}
    assert set(by_request) == {"t-sampled", "t-error"}  # un-sampled successes are not traced
    good, bad = by_request["t-sampled"], by_request["t-error"]
    assert {
        k: good.info.tags[k]
        for k in ("agentops.model_version", "agentops.role", "agentops.trace_reason")
    } == {  # fmt: skip
        "agentops.model_version": "7",
        "agentops.role": "stable",
        "agentops.trace_reason": "sampled",
    }
    assert good.info.client_request_id == "t-sampled"
    names = [s.name for s in good.data.spans]
    assert names[0] == "invocations"
    assert {"tracing_agent", "feature_lookup", "route", "tool:escalate_to_human"} <= set(names)
    assert bad.info.tags["agentops.trace_reason"] == "error"
    assert str(bad.info.state).endswith("ERROR")
    failed_spans = {s.name: s for s in bad.data.spans}
    assert str(failed_spans["route"].status.status_code).endswith("ERROR")
    assert "cannot route 'boom'" in failed_spans["invocations"].status.description


# --------------------------------------------------------------------------------------------
# Integration: a real MLflow store, a real server process

MODEL_CODE = """
import mlflow
import pandas as pd


class Router(mlflow.pyfunc.PythonModel):
    agent_name = "test_agent"

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = [str(t) for t in model_input["text"]]
        if "boom" in texts:
            raise ValueError("the model cannot route 'boom'")
        tool = [{tool_rule} for t in texts]
        return pd.DataFrame({{"tool": tool, "confidence": [0.9] * len(texts), "answer": ["{answer}"] * len(texts)}})


mlflow.models.set_model(Router())
"""
MODEL_NAME = "support-agent-test"
RULES = {
    "1": "'track_order' if 'order' in t.lower() else 'other'",
    "2": "'track_order' if 'order' in t.lower() else 'reset_password' if 'password' in t.lower() else 'other'",
}


def log_test_models(folder: Path, name: str = MODEL_NAME) -> dict[str, str]:
    """Register the tiny router (versions "1" and "2", failing on the text 'boom') in the MLflow
    store the tracking URI points at; returns {version: model URI}."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    experiment = mlflow.create_experiment(
        "serving-test", artifact_location=str(folder / "artifacts")
    )
    signature = ModelSignature(
        inputs=Schema(
            [ColSpec("string", "text"), ColSpec("string", "customer_id", required=False)]
        ),
        outputs=Schema(
            [
                ColSpec("string", "tool"),
                ColSpec("double", "confidence"),
                ColSpec("string", "answer"),
            ]
        ),
    )
    for version, rule in RULES.items():
        code = folder / f"router_v{version}.py"
        code.write_text(MODEL_CODE.format(tool_rule=rule, answer=f"v{version}"))
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                signature=signature,
                pip_requirements=["pandas"],
                registered_model_name=name,
            )
    return {v: f"models:/{name}/{v}" for v in RULES}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    import mlflow

    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # servers inherit them
            mp.setenv(name, uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)  # another test may have left its own
        yield log_test_models(tmp)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri("")


@pytest.fixture(scope="module")
def deployer(registry, tmp_path_factory):
    d = LocalProcessDeployer(
        state_dir=str(tmp_path_factory.mktemp("serving")),
        health_timeout_s=60,
        stop_timeout_s=10,
        inference_log_dir=str(tmp_path_factory.mktemp("inference_log")),
        trace_sample_rate=0.0,
    )
    yield d
    for environment in ("test", "second", "broken", "canary"):
        d.stop(environment)


@pytest.fixture(scope="module")
def deployment(deployer, registry) -> Deployment:
    return deployer.deploy("test", registry["1"], "1")


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers=(headers or {}) | ({"Content-Type": content_type} if content_type else {}),
        )
        response = conn.getresponse()
        raw = response.read()
        decoded = json.loads(raw) if "json" in (response.getheader("Content-Type") or "") else raw
        return response.status, dict(response.getheaders()), decoded
    finally:
        conn.close()


def scrape(url: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, raw = request(url, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(raw.decode())
        for s in family.samples
    }


@pytest.mark.slow
def test_deploy_writes_state_and_serves_health(deployer, deployment, registry):
    assert deployment.version == "1" and deployment.model_uri == registry["1"]
    assert (deployment.canary_version, deployment.canary_share) == (None, 0.0)
    state = json.loads((Path(deployer.state_dir) / MODEL_NAME / "test.json").read_text())
    assert state["pid"] == deployment.pid and state["port"] > 0
    assert state["url"] == deployment.url == f"http://127.0.0.1:{state['port']}"
    assert {k: state[k] for k in ("host", "model_uri", "version", "environment", "started_at")} == {
        "host": "127.0.0.1",
        "model_uri": registry["1"],
        "version": "1",
        "environment": "test",
        "started_at": deployment.started_at,
    }
    assert state["inference_log_dir"] == str(
        Path(deployer.inference_log_dir).resolve() / MODEL_NAME / "test"
    )
    assert deployer.status("test") == deployment
    for path in ("/health", "/ping"):
        status, _, body = request(deployment.url, "GET", path)
        assert status == 200
        assert {k: body[k] for k in ("status", "model_uri", "version", "environment", "agent")} == {
            "status": "ok",
            "model_uri": registry["1"],
            "version": "1",
            "environment": "test",
            "agent": "test_agent",
        }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(BODIES))
def test_invocations_formats(deployment, fmt):
    content_type, body = BODIES[fmt]
    status, headers, answer = request(
        deployment.url, "POST", "/invocations", body.encode(), content_type
    )
    assert status == 200, answer
    assert (headers["X-Model-Version"], headers["X-Model-Role"]) == ("1", "stable")
    assert answer == {
        "predictions": [
            {"tool": "track_order", "confidence": 0.9, "answer": "v1"},
            {"tool": "other", "confidence": 0.9, "answer": "v1"},
        ]
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status", "error_code"),
    [
        (
            "POST",
            "/invocations",
            b'{"dataframe_records": [{"text": "x"',
            JSON,
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "POST",
            "/invocations",
            b'{"dataframe_records": [{"customer_id": "C1"}]}',
            JSON,
            400,
            "BAD_REQUEST",
        ),
        ("POST", "/invocations", b"customer_id\nC1\n", "text/csv", 400, "BAD_REQUEST"),
        ("POST", "/invocations", b"text=hello", "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (
            "POST",
            "/invocations",
            b'{"inputs": [{"text": "' + b"x" * (1 << 20) + b'"}]}',
            JSON,
            413,
            "REQUEST_TOO_LARGE",
        ),
        (
            "POST",
            "/invocations",
            json.dumps({"inputs": {"text": ["hi"] * 1001}}).encode(),
            JSON,
            413,
            "TOO_MANY_ROWS",
        ),
        (
            "POST",
            "/invocations",
            b'{"inputs": [{"text": {"nested": "object"}}]}',
            JSON,
            400,
            "BAD_REQUEST",
        ),
        ("POST", "/invocations", b'{"inputs": [{"text": "boom"}]}', JSON, 500, "INTERNAL_ERROR"),
        ("GET", "/invocations", None, None, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/nope", None, None, 404, "ENDPOINT_NOT_FOUND"),
        ("POST", "/admin/load", b'{"model_uri": 1}', JSON, 400, "BAD_REQUEST"),
        ("POST", "/admin/promote", b"", None, 409, "NO_CANARY"),
        ("GET", "/admin/stats?window=-1", None, None, 400, "BAD_REQUEST"),
    ],
)
def test_bad_requests_get_clear_errors(
    deployment, method, path, body, content_type, status, error_code
):
    got, _, answer = request(deployment.url, method, path, body, content_type)
    assert (got, answer["error_code"]) == (status, error_code), answer
    assert answer["message"] and "Traceback" not in answer["message"]
    assert request(deployment.url, "GET", "/health")[0] == 200  # still serving


@pytest.mark.slow
def test_extra_columns_are_accepted_and_ignored(deployment):
    body = json.dumps({"dataframe_records": [{"text": "order?", "channel": "email", "n": 3}]})
    status, _, answer = request(deployment.url, "POST", "/invocations", body.encode(), JSON)
    assert status == 200 and answer["predictions"][0]["tool"] == "track_order"


@pytest.mark.slow
def test_keep_alive_connection(deployment):
    parts = urlsplit(deployment.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    body = json.dumps({"inputs": [{"text": "order?", "customer_id": "C1"}]})
    try:
        for _ in range(20):
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": JSON})
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Connection") != "close"
            assert json.loads(response.read())["predictions"][0]["tool"] == "track_order"
        local_port = conn.sock.getsockname()[1]
        conn.request("GET", "/health")
        conn.getresponse().read()
        assert conn.sock.getsockname()[1] == local_port  # the same connection throughout
    finally:
        conn.close()


@pytest.mark.slow
def test_metrics_endpoint_counts_requests(deployment):
    labels = {"agent": "test_agent", "environment": "test", "version": "1"}
    before = scrape(deployment.url)
    good = json.dumps({"inputs": [{"text": "where is my order"}]}).encode()
    for _ in range(3):
        assert request(deployment.url, "POST", "/invocations", good, JSON)[0] == 200
    request(deployment.url, "POST", "/invocations", b'{"inputs": [{"text": "boom"}]}', JSON)
    request(deployment.url, "POST", "/invocations", b"{bad", JSON)
    after = scrape(deployment.url)

    def delta(name, **extra):
        key = (name, tuple(sorted((labels | extra).items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("agentops_requests_total", outcome="ok") == 3
    assert delta("agentops_requests_total", outcome="server_error") == 1
    assert delta("agentops_requests_total", outcome="client_error") == 1
    assert delta("agentops_tool_calls_total", tool="track_order") == 3
    assert delta("agentops_errors_total", error_code="INTERNAL_ERROR") == 1
    assert delta("agentops_errors_total", error_code="MALFORMED_REQUEST") == 1
    assert delta("agentops_request_latency_seconds_count") == 5
    assert after[("agentops_model_info", tuple(sorted((labels | {"role": "stable", "model_uri": deployment.model_uri}).items())))] == 1  # fmt: skip
    assert any(name == "process_cpu_seconds_total" for name, _ in after)
    assert not any(name.endswith("_created") for name, _ in after)


@pytest.mark.slow
def test_hot_swap_and_failed_load(deployer, deployment, registry):
    password = json.dumps({"inputs": [{"text": "reset my password", "customer_id": "C2"}]}).encode()
    try:
        swapped = deployer.deploy("test", registry["2"], "2")
        assert (swapped.pid, swapped.url, swapped.version) == (deployment.pid, deployment.url, "2")
        status, headers, answer = request(deployment.url, "POST", "/invocations", password, JSON)
        assert headers["X-Model-Version"] == "2"
        assert answer["predictions"][0] | {"confidence": 0} == {
            "tool": "reset_password",
            "confidence": 0,
            "answer": "v2",
        }
        state = json.loads((Path(deployer.state_dir) / MODEL_NAME / "test.json").read_text())
        assert (state["pid"], state["version"], state["model_uri"]) == (
            deployment.pid,
            "2",
            registry["2"],
        )
        assert deployer.deploy("test", registry["2"], "2") == swapped  # idempotent

        with pytest.raises(DeploymentError, match="HTTP 404") as info:
            deployer.deploy("test", f"models:/{MODEL_NAME}/99", "99")
        assert "version=99) not found" in str(info.value)
        assert f"still serving {registry['2']} version 2" in str(info.value)
        assert deployer.status("test") == swapped
        assert (
            request(deployment.url, "POST", "/invocations", password, JSON)[1]["X-Model-Version"]
            == "2"
        )
    finally:
        assert deployer.deploy("test", registry["1"], "1").version == "1"


@pytest.mark.slow
def test_canary_through_the_deployer(deployer, registry):
    stable = deployer.deploy("canary", registry["1"], "1")
    canary = deployer.deploy_canary("canary", registry["2"], "2", 0.5)
    assert (canary.pid, canary.version, canary.canary_version, canary.canary_share) == (
        stable.pid, "1", "2", 0.5,
    )  # fmt: skip
    assert canary.canary_model_uri == registry["2"]
    assert deployer.status("canary") == canary
    state = json.loads((Path(deployer.state_dir) / MODEL_NAME / "canary.json").read_text())
    assert (state["canary_version"], state["canary_share"]) == ("2", 0.5)

    def serve(customer: str) -> tuple[str, str, str]:
        body = json.dumps({"inputs": [{"text": "my password", "customer_id": customer}]}).encode()
        status, headers, answer = request(stable.url, "POST", "/invocations", body, JSON)
        assert status == 200
        return (
            headers["X-Model-Version"],
            headers["X-Model-Role"],
            answer["predictions"][0]["answer"],
        )

    seen = {c: serve(c) for c in (f"C{i:03d}" for i in range(40))}
    assert set(seen.values()) == {("1", "stable", "v1"), ("2", "canary", "v2")}
    assert all(serve(c) == seen[c] for c in list(seen)[:10])  # sticky per customer

    stats = deployer.stats("canary", window_s=60)
    assert stats["environment"] == "canary" and stats["canary_share"] == 0.5
    served = Counter(role for _, role, _ in seen.values())
    assert stats["stable"]["requests"] >= served["stable"] and stats["stable"]["version"] == "1"
    assert stats["canary"]["requests"] >= served["canary"] and stats["canary"]["errors"] == 0
    assert stats["canary"]["p99_ms"] > 0

    promoted = deployer.promote_canary("canary")
    assert (promoted.version, promoted.canary_version, promoted.canary_share) == ("2", None, 0.0)
    assert {serve(c)[:2] for c in list(seen)[:10]} == {("2", "stable")}
    with pytest.raises(DeploymentError, match="HTTP 409"):
        deployer.promote_canary("canary")

    deployer.deploy_canary("canary", registry["1"], "1", 1.0)
    aborted = deployer.abort_canary("canary")
    assert (aborted.version, aborted.canary_version) == ("2", None)
    assert deployer.abort_canary("canary") == aborted  # nothing to abort: a no-op

    deployer.deploy_canary("canary", registry["1"], "1", 0.2)
    rolled_out = deployer.deploy("canary", registry["1"], "1")  # a full rollout drops the canary
    assert (rolled_out.pid, rolled_out.version, rolled_out.canary_version) == (
        stable.pid,
        "1",
        None,
    )


@pytest.mark.slow
def test_inference_log_is_flushed_on_stop_and_errors_are_traced(deployer, registry):
    import mlflow

    second = deployer.deploy("second", registry["2"], "2")
    for i in range(5):
        body = json.dumps({"inputs": [{"text": f"order {i}", "customer_id": f"C{i}"}]}).encode()
        assert request(second.url, "POST", "/invocations", body, JSON, {"X-Request-Id": f"log-{i}"})[0] == 200  # fmt: skip
    body = b'{"inputs": [{"text": "boom", "customer_id": "C9"}]}'
    assert request(second.url, "POST", "/invocations", body, JSON, {"X-Request-Id": "log-boom"})[0] == 500  # fmt: skip

    # the failed request is traced (sampling is off: errors always are), tagged and findable
    experiment = mlflow.get_experiment_by_name("serving-test").experiment_id
    deadline, traces = time.monotonic() + 30, []
    while not traces and time.monotonic() < deadline:
        traces = mlflow.search_traces(
            locations=[experiment],
            filter_string="tags.`agentops.request_id` = 'log-boom'",
            return_type="list",
        )
        time.sleep(0.2)
    assert traces, "the failed request was not traced"
    tags = traces[0].info.tags
    assert (tags["agentops.environment"], tags["agentops.model_version"], tags["agentops.role"]) == (
        "second", "2", "stable",
    )  # fmt: skip
    assert str(traces[0].info.state).endswith("ERROR")
    assert {s.name for s in traces[0].data.spans} == {"invocations", "test_agent"}

    folder = deployer.inference_log_path("second", registry["2"])
    assert not list(folder.rglob("*.parquet"))  # flushed once a minute: nothing yet
    deployer.stop("second")  # SIGTERM: the server drains and writes what it holds
    today = pd.Timestamp.now(tz="UTC").date()
    df = read_inference_log(folder, today, today)
    assert sorted(df["request_id"]) == ["log-0", "log-1", "log-2", "log-3", "log-4", "log-boom"]
    row = df.set_index("request_id").loc["log-3"]
    assert (row["customer_id"], row["text"], row["tool"], row["model_version"], row["role"]) == (
        "C3", "order 3", "track_order", "2", "stable",
    )  # fmt: skip
    assert row["confidence"] == 0.9 and row["status"] == 200 and row["environment"] == "second"
    assert df.set_index("request_id").loc["log-boom", "status"] == 500
    log = (Path(deployer.state_dir) / MODEL_NAME / "second.log").read_text()
    assert "inference log: 1 files written" in log and "stopped (exit code 0)" in log


@pytest.mark.slow
def test_failed_start_reports_the_log(deployer, registry):
    with pytest.raises(DeploymentError, match="exited with code 1") as info:
        deployer.deploy("broken", f"models:/{MODEL_NAME}/99", "99")
    assert "could not load" in str(info.value)  # the tail of the server's log
    assert deployer.status("broken") is None
    assert not (Path(deployer.state_dir) / MODEL_NAME / "broken.json").exists()


@pytest.mark.slow
def test_second_environment_and_stop(deployer, deployment, registry):
    second = deployer.deploy("second", registry["2"], "2")
    assert second.pid != deployment.pid and second.url != deployment.url
    assert deployer.status("test").version == "1"  # environments are independent
    state_file = Path(deployer.state_dir) / MODEL_NAME / "second.json"
    assert state_file.exists()

    deployer.stop("second")
    assert not state_file.exists()  # removed by the server's clean shutdown
    with pytest.raises(ProcessLookupError):
        os.kill(second.pid, 0)
    assert deployer.status("second") is None
    log = (Path(deployer.state_dir) / MODEL_NAME / "second.log").read_text()
    assert "stopped (exit code 0)" in log
    deployer.stop("second")  # a no-op now
    with pytest.raises(OSError):
        request(second.url, "GET", "/health")
